"""The C core without Python: build libsagecore_core.a and the C decode test
with csrc/Makefile and run it (embedding path, csrc/include/sagecore.h)."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_c_decode_program(tmp_path):
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.fail("the C API test needs make and a C compiler (both are build requirements)")
    r = subprocess.run(["make", "-C", str(ROOT / "csrc"), "test", f"BUILD={tmp_path}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "decode N=1000 split_k=4" in r.stdout and "\nok (rejected bad kv_heads" in r.stdout
    assert "agrees with the portable path" in r.stdout and "self-check: a deliberate mismatch" in r.stdout
    for isa in ("portable", "avx2", "avx512_vnni"):  # the default run above takes the best (amx here)
        env = dict(os.environ, SAGECORE_ISA=isa)
        r2 = subprocess.run([str(tmp_path / "test_decode")], capture_output=True, text=True, env=env, timeout=120)
        assert r2.returncode == 0, r2.stderr


def test_golden_data_is_current(tmp_path):
    """tests/c/data/golden.bin is exactly what tools/make_golden.py produces now."""
    out = tmp_path / "golden.bin"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "make_golden.py"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == (ROOT / "tests" / "c" / "data" / "golden.bin").read_bytes()
