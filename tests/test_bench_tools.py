"""The A/B tools still run: bench/build_ab.py loads the extension of each
given tree into one process and times them round-robin (here the same tree
twice, a tiny cache, so that it stays cheap); bench/policy_ab.py does the
same for policies, bench/head_dim_ab.py for the built-in policies per head
dim, bench/packing_report.py for formats per head dim, bench/pack_ab.py for
the packing of builds; bench/clip_search.py simulates the int4 formats with
a clipping search; bench/stream_balance.c is a synthetic of int4 decode's
memory and compute, and bench/stream_balance_ab.py times it beside the
kernels."""
import os
import pathlib
import platform
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOL = ROOT / "bench" / "build_ab.py"


def run(*args, tool=TOOL):
    return subprocess.run([sys.executable, str(tool), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_build_ab_times_each_build():
    r = run(str(ROOT), str(ROOT), "--n", "64", "--rounds", "2", "--precision", "bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "vs first, paired by round" in line]
    assert len(rows) == 2, r.stdout
    assert "precision bf16" in r.stdout and "N 64" in r.stdout


def test_alternate_rotates_the_order_and_pairs_rounds():
    """Each round times every fn once, starting one later each round; the
    paired ratio compares times of the same round, so a drift of the whole
    machine between rounds (x10 here) does not move it."""
    from sagecore.bench import alternate, paired_ratio
    calls, clock = [], [1.0]

    def fn(i, cost):
        def f():
            calls.append(i)
            return cost * clock[0]
        return f
    fns = [fn(0, 2.0), fn(1, 1.0), fn(2, 4.0)]

    def drifting(i):  # the machine gets 10x slower after every round
        def f():
            t = fns[i]()
            clock[0] *= 10 if len(calls) % 3 == 0 else 1
            return t
        return f
    times = alternate([drifting(i) for i in range(3)], 3)
    assert calls == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [len(t) for t in times] == [3, 3, 3]
    assert paired_ratio(times[0], times[1]) == pytest.approx(2.0)
    assert paired_ratio(times[0], times[2]) == pytest.approx(0.5)
    assert paired_ratio(times[0], times[0]) == 1.0
    # not the ratio of the medians (100 / 50 = 2): rounds are compared one by one
    assert paired_ratio([1.0, 100.0, 100.0], [2.0, 50.0, 300.0]) == pytest.approx(0.5)


def test_build_ab_takes_a_head_dim():
    r = run(str(ROOT), "--n", "64", "--rounds", "1", "--precision", "int8", "--policy", "int4", "--head-dim", "80")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len([line for line in r.stdout.splitlines() if "vs first, paired by round" in line]) == 1, r.stdout


def test_build_ab_times_prefill_rows():
    r = run(str(ROOT), "--n", "96", "--m", "40", "--causal", "--rounds", "1", "--precision", "bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "M 40 causal, N 96" in r.stdout and "per query row and key" in r.stdout, r.stdout
    assert len([line for line in r.stdout.splitlines() if "vs first, paired by round" in line]) == 1, r.stdout


def test_head_dim_ab_times_each_policy_per_dim():
    r = run("80", "128", "--n", "64", "--rounds", "2", tool=ROOT / "bench" / "head_dim_ab.py")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line.split() for line in r.stdout.splitlines() if "int8/int4" in line]
    assert [row[0] for row in rows] == ["d80", "d128"], r.stdout
    for row in rows:  # ns per key of int4, int8, fp16: positive numbers
        assert all(float(row[i]) > 0 for i in (2, 4, 6)), row


def test_packing_report_takes_head_dims_and_formats():
    r = run("--head-dim", "80", "96", "--formats", "int8.t1.gD.s16+rot", "int8.t1.g32.s16", "--reps", "1",
            tool=ROOT / "bench" / "packing_report.py")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "x d80" in r.stdout and "x d96" in r.stdout, r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith("int8.")]
    # d80: the rotated format's GB/s per ISA; the 32-channel groups do not divide 80
    assert rows[0][0] == "int8.t1.gD.s16+rot" and float(rows[0][1]) > 0, r.stdout
    assert "does not divide d80" in " ".join(rows[1]), r.stdout
    assert [row[0] for row in rows[2:]] == ["int8.t1.gD.s16+rot", "int8.t1.g32.s16"], r.stdout


def test_pack_ab_times_each_build_and_compares_bytes():
    r = run(str(ROOT), str(ROOT), "--head-dim", "80", "--formats", "int4.t1.gD.s16+rot", "int8.t1.g32.s16",
            "--rounds", "2", "--reps", "1", tool=ROOT / "bench" / "pack_ab.py")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("d80 ")]
    assert len(rows) == 3, r.stdout  # two builds of one format, and the group that does not divide 80
    assert "does not divide d80" in rows[2] and "DIFFERENT BYTES" not in r.stdout, r.stdout
    assert all(float(row.split()[3]) > 0 for row in rows[:2]), r.stdout


def test_build_ab_rejects_a_tree_without_a_build(tmp_path):
    r = run(str(ROOT), str(tmp_path), "--n", "64", "--rounds", "1")
    assert r.returncode != 0
    assert "expected one sagecore/_cpu" in r.stderr


def test_policy_ab_times_each_policy():
    r = run("int8.t32.g1.s16+smooth:int8.t1.g32.s16", "int8", "--n", "256", "--rounds", "2", "--threads", "1",
            tool=ROOT / "bench" / "policy_ab.py")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "first/this" in line]
    assert len(rows) == 2 and "(8.500 bits)" in rows[0] and "(8.188 bits)" in rows[1], r.stdout


def test_policy_ab_takes_a_precision_per_entry():
    tool = ROOT / "bench" / "policy_ab.py"
    r = run("int8@fp32", "int8@bf16", "--n", "256", "--rounds", "2", "--threads", "1", tool=tool)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "first/this" in line]
    assert [row.split()[0] for row in rows] == ["int8@fp32", "int8@bf16"], r.stdout
    bad = run("int8@int3", "--n", "256", "--rounds", "1", "--threads", "1", tool=tool)
    assert bad.returncode != 0 and "precision" in bad.stderr and "int3" in bad.stderr


def test_block_cycles_builds_and_runs(tmp_path):
    """bench/block_cycles.c includes the x86 kernels and calls their blocks:
    it must keep compiling as their signatures change."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("bench/block_cycles.c times the x86-64 kernels")
    cc = shutil.which(os.environ.get("CC", "cc"))
    assert cc, "a C compiler is a build requirement"
    exe = tmp_path / "block_cycles"
    b = subprocess.run([cc, "-O2", "-DREPS=20", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}",
                        str(ROOT / "bench" / "block_cycles.c"), "-o", str(exe), "-lm"],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    from sagecore import _cpu
    if "avx512vnni" in _cpu.cpu_info()["features"].split():
        assert r.returncode == 0, r.stderr
        assert len([line for line in r.stdout.splitlines() if "cycles per key" in line]) == 14, r.stdout
    else:
        assert r.returncode == 1 and "needs AVX512-VNNI" in r.stderr


def test_spill_scan_lists_the_integer_kernels():
    """bench/spill_scan.py disassembles the built extension and counts, per
    function, the integer products and those next to a zmm stack store."""
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None:
        pytest.skip("bench/spill_scan.py reads x86-64 code with objdump")
    r = run(tool=ROOT / "bench" / "spill_scan.py")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[1:]}
    for fn in ("qk8_vnni", "pv8_vnni", "pv4b_vnni"):
        assert fn in rows and int(rows[fn][2]) >= 16, r.stdout
        assert 0 <= int(rows[fn][-1]) <= int(rows[fn][2])


def test_build_ab_against_times_a_second_path_in_each_build():
    r = run(str(ROOT), "--n", "64", "--rounds", "2", "--policy", "int4", "--precision", "int8",
            "--against", "int8@bf16")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if "int8@bf16 / this, paired" in line]
    assert len(rows) == 1, r.stdout
    ratio = float(rows[0].split("paired")[-1].strip().rstrip("x"))
    assert 0.05 < ratio < 20


def test_build_ab_against_rejects_a_bad_path():
    r = run(str(ROOT), "--n", "64", "--rounds", "1", "--against", "int8@fast")
    assert r.returncode != 0
    assert "--against: expected POLICY@PRECISION" in r.stderr


def _clip_search():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import clip_search
    finally:
        sys.path.pop(0)
    return clip_search


def test_clip_search_simulates_the_builtin_int4():
    """Without a search, bench/clip_search.py's K and V are as far from the
    originals as the library's own int4 codes (its comparison is like with like)."""
    import numpy as np

    from sagecore import QuantKVCache, workloads
    cs = _clip_search()
    _q, k, v = workloads.llm_like(q_len=1, kv_len=256, seed=3, dtype=np.float32)
    c = QuantKVCache("int4", batch=1, kv_heads=k.shape[1], head_dim=k.shape[3], capacity=256)
    c.append(k, v)
    for lib, sim, x in zip(c.dequantize(), cs.int4_kv(k, v, [1.0], [1.0]), (k, v)):
        e_lib, e_sim = np.abs(lib - x).mean(), np.abs(sim - x).mean()
        assert abs(e_sim / e_lib - 1) < 0.02, (e_lib, e_sim)


def test_clip_search_never_raises_a_cells_error():
    import numpy as np
    cs = _clip_search()
    x = np.random.default_rng(0).standard_normal((3, 5, 64)) * np.array([1.0, 10.0, 0.1])[:, None, None]
    x[0, 0, 7] = 40.0  # an outlier: clipping it pays
    alphas = np.linspace(1.0, 0.6, 9)
    for quant in (cs.quant_asym, cs.quant_sym):
        plain, searched = quant(x, 2, [1.0]), quant(x, 2, alphas)
        e0, e1 = ((plain - x) ** 2).sum(axis=2), ((searched - x) ** 2).sum(axis=2)
        assert (e1 <= e0).all()
        assert (e1 < e0).any()


def test_clip_search_runs():
    r = run("--data", "real", "--steps", "2", tool=ROOT / "bench" / "clip_search.py")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("real")]
    assert len(rows) == 6, r.stdout
    assert run("--steps", "0", tool=ROOT / "bench" / "clip_search.py").returncode != 0


def test_stream_balance_builds_and_runs(tmp_path):
    """bench/stream_balance.c (the synthetic of docs/benchmarks.md, session
    20) still compiles and runs, and rejects bad arguments."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("bench/stream_balance.c is an x86-64 AVX512-VNNI synthetic")
    cc = shutil.which(os.environ.get("CC", "cc"))
    assert cc, "a C compiler is a build requirement"
    exe = tmp_path / "stream_balance"
    b = subprocess.run([cc, "-O2", "-fopenmp", str(ROOT / "bench" / "stream_balance.c"), "-o", str(exe)],
                       capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    r = subprocess.run([str(exe), "512", "2", "2", "2", "4"], capture_output=True, text=True, timeout=120)
    from sagecore import _cpu
    if "avx512vnni" in _cpu.cpu_info()["features"].split():
        assert r.returncode == 0, r.stderr
        assert "keys 512, caches 2, threads 2, extra 4" in r.stdout and "GB/s" in r.stdout, r.stdout
        bad = subprocess.run([str(exe), "300", "1", "1", "2"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "a multiple of 256" in bad.stderr
    else:
        assert r.returncode == 1 and "needs AVX512-VNNI" in r.stderr


def test_stream_balance_ab_alternates_kernels_and_synthetic():
    """bench/stream_balance_ab.py builds the synthetic as a library and times
    it call by call beside the int4 and int8 kernels."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("bench/stream_balance.c is an x86-64 AVX512-VNNI synthetic")
    tool = ROOT / "bench" / "stream_balance_ab.py"
    r = run("--n", "512", "--rounds", "2", "--caches", "1", "--threads", "1", tool=tool)
    from sagecore import _cpu
    if "avx512vnni" in _cpu.cpu_info()["features"].split():
        assert r.returncode == 0, r.stderr[-2000:]
        assert "N 512 cold (1 caches per path), 1 threads" in r.stdout, r.stdout
        assert "int4 / synthetic" in r.stdout and "int8 / int4" in r.stdout, r.stdout
    else:
        assert r.returncode == 1 and "needs AVX512-VNNI" in r.stderr
    assert run("--n", "300", tool=tool).returncode == 2
