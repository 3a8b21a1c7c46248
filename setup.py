"""Build script: one Cython extension (sagecore._cpu) over the portable C core.

The core is compiled for the baseline ISA of the target (x86-64 or armv8-a);
SIMD paths carry target attributes and are picked at run time (csrc/cpu.c),
so the built wheel runs on any machine of its architecture. Never -march=native.
OpenMP is used when the compiler supports it (gcc; clang with libomp).
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

CORE_SOURCES = [
    "csrc/cpu.c",
    "csrc/pack/pack.c",
    "csrc/pack/pack_avx2.c",
    "csrc/pack/pack_avx512.c",
    "csrc/pack/pack_neon.c",
    "csrc/attn/attention.c",
    "csrc/attn/attention_x86.c",
    "csrc/attn/attention_arm64.c",
]

# -fno-wrapv: CPython's own CFLAGS (sysconfig, prepended by setuptools) carry
# -fwrapv, which made GCC keep the int8/int4 score kernel's index arithmetic
# in a form with 830 instead of 574 product instructions and 23 instead of 15
# next to zmm stack stores (bench/spill_scan.py); every A/B build and the C
# core's Makefile compile without it. The C sources rely on no signed wrap.
# docs/benchmarks.md, session 14.
BASE_FLAGS = ["-std=c11", "-O3", "-fno-wrapv", "-ffp-contract=off", "-fno-math-errno"]


def _compiler_accepts(cc, flags, code="int main(void){return 0;}\n"):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write(code)
        try:
            r = subprocess.run(cc + flags + [src, "-o", os.path.join(d, "t")],
                               capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return r.returncode == 0


class BuildExt(build_ext):
    def build_extensions(self):
        cc = list(self.compiler.compiler_so[:1]) if hasattr(self.compiler, "compiler_so") else ["cc"]
        omp = os.environ.get("SAGECORE_OPENMP", "auto")
        use_omp = False
        if omp != "0" and sys.platform != "win32":
            use_omp = _compiler_accepts(
                cc, ["-fopenmp"], "#include <omp.h>\nint main(void){return omp_get_max_threads()>0?0:1;}\n")
        for ext in self.extensions:
            if use_omp and ext.name == "sagecore._cpu":
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        if not use_omp:
            print("sagecore: building without OpenMP (single-threaded kernels)", file=sys.stderr)
        super().build_extensions()


ext = Extension(
    "sagecore._cpu",
    sources=["sagecore/_cpu.pyx"] + CORE_SOURCES,
    include_dirs=["csrc/include", "csrc", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=list(BASE_FLAGS),
    extra_link_args=[],
    # headers the C sources include: an edit to one rebuilds (setuptools does not scan them)
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),
)

class BuildPy(build_py):
    """Ship the Metal kernel sources and the host emulation's prelude inside the
    package (sagecore/metal/_sources/), for installs without the source tree:
    libraries are compiled from them at first use."""

    def run(self):
        super().run()
        import glob
        dst = os.path.join(self.build_lib, "sagecore", "metal", "_sources")
        for pattern, sub in (("metal/*.metal", "metal"), ("metal/*.h", "metal"),
                             ("objc_shim/host/*.h", "host"), ("objc_shim/host/include/*", "host/include")):
            os.makedirs(os.path.join(dst, sub), exist_ok=True)
            for f in glob.glob(pattern):
                shutil.copy2(f, os.path.join(dst, sub, os.path.basename(f)))
        if sys.platform == "darwin":
            _build_metallibs(os.path.join(dst, "metal"))


def _build_metallibs(metal_dir):
    """macOS with the Metal toolchain (Xcode): precompile each metal/<name>.metal
    to <name>.metallib next to it; sagecore.metal.library() loads those first.
    Without the toolchain (Command Line Tools only), libraries are compiled
    from source at first use instead. Not exercised in Linux CI."""
    import glob
    if not shutil.which("xcrun"):
        return
    for src in glob.glob(os.path.join(metal_dir, "*.metal")):
        base = os.path.splitext(src)[0]
        try:
            # -fno-fast-math: the CLI's default is fast math, which may fold the
            # kernels' NaN/Inf tests away; runtime compiles use MTLMathModeSafe
            subprocess.run(["xcrun", "-sdk", "macosx", "metal", "-c", "-fno-fast-math", "-I", metal_dir, src, "-o",
                            base + ".air"],
                           check=True, capture_output=True, timeout=600)
            subprocess.run(["xcrun", "-sdk", "macosx", "metallib", base + ".air", "-o", base + ".metallib"],
                           check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            print(f"sagecore: not precompiling {src} ({e}); it is compiled from source at first use",
                  file=sys.stderr)
            return
        finally:
            if os.path.exists(base + ".air"):
                os.remove(base + ".air")


# The Metal shim: Objective-C on macOS, the host emulation (C++) elsewhere.
if sys.platform == "darwin":
    metal_ext = Extension(
        "sagecore._metal",
        sources=["sagecore/_metal.pyx", "objc_shim/metal/shim_metal.m"],
        include_dirs=["objc_shim"],
        extra_compile_args=["-fobjc-arc"],
        extra_link_args=["-framework", "Metal", "-framework", "Foundation"],
    )
else:
    metal_ext = Extension(
        "sagecore._metal",
        sources=["sagecore/_metal.pyx", "objc_shim/host/shim_host.cpp", "objc_shim/host/emu_gen.cpp"],
        include_dirs=["objc_shim", "objc_shim/host"],
        language="c++",
        extra_compile_args=["-std=c++17", "-O2"],
        extra_link_args=["-ldl", "-lpthread"],
    )

setup(
    ext_modules=cythonize([ext, metal_ext], compiler_directives={"language_level": "3"}, quiet=True),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
