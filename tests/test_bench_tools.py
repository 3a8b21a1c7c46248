"""The A/B tool for builds of the C kernels (bench/build_ab.py) still runs:
it loads the extension of each given tree into one process and times them
round-robin. Here the same tree twice, a tiny cache, so that it stays cheap."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "bench" / "build_ab.py"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=300)


def test_build_ab_times_each_build():
    r = run(str(ROOT), str(ROOT), "--n", "64", "--rounds", "2", "--precision", "bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "median vs first" in line]
    assert len(rows) == 2, r.stdout
    assert "precision bf16" in r.stdout and "N 64" in r.stdout


def test_build_ab_rejects_a_tree_without_a_build(tmp_path):
    r = run(str(ROOT), str(tmp_path), "--n", "64", "--rounds", "1")
    assert r.returncode != 0
    assert "expected one sagecore/_cpu" in r.stderr
