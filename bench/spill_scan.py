"""Which functions of the built CPU extension keep accumulators of the
integer products on the stack: every VPDPWSSD / VPDPBUSD / VDPBF16PS with a
store of a zmm register to the stack within two instructions of it.

    python bench/spill_scan.py [path/to/_cpu*.so]

GCC kept pass O's 16 accumulators of the int4 PV on the stack (a load and a
store around every product) until session 13; moving the flush out of the
pass fixed it (1.12x cold). Needs objdump (binutils). x86-64 builds only.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

PRODUCT = re.compile(r"\bv(pdpwssd|pdpbusd|dpbf16ps)\b")
STACK_STORE = re.compile(r"vmovdq[au]\S*\s+%zmm\d+,\S*\((%rsp|%rbp)\)")
FUNC = re.compile(r"^[0-9a-f]+ <(.+)>:")


def scan(path):
    """{function: (products, products next to a zmm stack store)}"""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    stats, func = {}, None
    for i, line in enumerate(out):
        m = FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        if func and PRODUCT.search(line):
            n, s = stats.get(func, (0, 0))
            near = any(STACK_STORE.search(w) for w in out[max(0, i - 2):i + 3])
            stats[func] = (n + 1, s + near)
    return stats


def main(argv):
    if shutil.which("objdump") is None:
        raise SystemExit("objdump not found (binutils)")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sagecore")
    paths = argv or glob.glob(os.path.join(root, "_cpu*.so"))
    if not paths:
        raise SystemExit("no sagecore/_cpu*.so: build it first (python setup.py build_ext --inplace)")
    for path in paths:
        print(path)
        for func, (n, s) in sorted(scan(path).items()):
            print(f"  {func:32s} products {n:5d}   next to a zmm stack store {s:4d}")


if __name__ == "__main__":
    main(sys.argv[1:])
