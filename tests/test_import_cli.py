import json
import subprocess
import sys

import pytest


def run(*code):
    return subprocess.run([sys.executable, *code], capture_output=True, text=True, timeout=300)


def test_import_is_lazy():
    r = run("-c", "import sys, sagecore; print(json.dumps(sorted(m for m in sys.modules if m.startswith('sagecore'))))"
            .replace("import sys,", "import sys, json,"))
    assert r.returncode == 0, r.stderr
    mods = json.loads(r.stdout)
    assert "sagecore._cpu" not in mods and "sagecore.cache" not in mods
    r = run("-c", "import sys, sagecore; print('numpy' in sys.modules)")
    assert r.stdout.strip() == "False"


def test_info():
    r = run("-m", "sagecore", "info")
    assert r.returncode == 0, r.stderr
    assert "isa: best" in r.stdout and "int8" in r.stdout and "metal" in r.stdout


def test_demo_small():
    r = run("-m", "sagecore", "demo", "--tokens", "512")
    assert r.returncode == 0, r.stderr
    assert "int4" in r.stdout and "vs fp16" in r.stdout
    assert "selector, for the int8 cache" in r.stdout and "QuantAttention on cpu" in r.stdout


def test_bad_command():
    r = run("-m", "sagecore", "frobnicate")
    assert r.returncode != 0 and "invalid choice" in r.stderr


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_isa_env_override(isa):
    from sagecore import _cpu
    if isa not in _cpu.supported_isas():
        pytest.skip(f"this CPU has no {isa}")
    r = subprocess.run([sys.executable, "-c", "from sagecore import _cpu; print(_cpu.cpu_info()['active_isa'])"],
                       capture_output=True, text=True, env={**__import__("os").environ, "SAGECORE_ISA": isa})
    assert r.stdout.strip() == isa


def test_bench_smoke(tmp_path):
    out = tmp_path / "b.json"
    r = run("-m", "sagecore", "bench", "--quick", "--no-cold", "--no-torch", "--reps", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {(x["workload"], x["path"]) for x in rows} >= {("decode N=4096 warm", "int8"), ("chunk 512 x 8192", "fp16")}
    assert all(x["ms"] > 0 and (x["kv_gbs"] > 0 or x["workload"] == "small call N=16") for x in rows)
    assert {x["path"] for x in rows if x["workload"] == "small call N=16"} >= {"sdpa", "C kernel"}
    assert "vs fp16" in r.stdout


def test_bench_prefill_ab_smoke(capsys):
    from sagecore import bench
    assert bench._prefill_ab(None, rounds=1) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("prefill 2048 causal") and "best of 1" in lines[0]
    assert [ln.split()[0] for ln in lines[1:]] == ["int8", "int8-bf16", "int4-int8"]
    assert all(float(ln.split()[1]) > 0 for ln in lines[1:])


def test_bench_decode_ab_smoke(capsys):
    from sagecore import _cpu, bench
    assert bench._decode_ab(None, n=64, rounds=1, cold_factor=0.0, probe_bytes=1 << 24) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("decode N=64 cold") and "over 1 rounds" in lines[0]
    assert float(lines[0].split("every round) ")[1].split("-")[0]) > 0  # GB/s
    scal = lines[0].split("(compute_scaling, every round) ")[1].split("x one thread")[0].split("-")
    assert all(0 < float(x) <= 2 * _cpu.get_num_threads() for x in scal), lines[0]
    paths, rest = lines[1:7], lines[7:]
    fracs = [float(ln.split("KV/read bw: best ")[1].split()[0]) for ln in paths]
    assert all(f > 0 for f in fracs), fracs
    assert [ln.split()[0] for ln in paths] == ["fp16", "int8", "int8-bf16", "int4", "int4-bf16", "int4-int8"]
    assert all(float(ln.split()[2]) > 0 and float(ln.split()[5]) > 0 for ln in paths)
    assert all("fp16 / this" in ln for ln in paths[1:])
    assert "int8 / this" in paths[3] and "int8-bf16 / this" in paths[4] and "int8-bf16 / this" in paths[5]
    if _cpu.get_num_threads() > 1:  # the rounds in which the threads had their vector units, and the targets in them
        n_full = int(rest[0].split(": ")[1].split(" of ")[0])
        assert rest[0].endswith("of 1") and len(rest) == 1 + 2 * n_full, rest
    else:
        assert rest == []


def test_compute_probe_runs_on_every_thread():
    """sc_compute_probe: every thread does the same chains, so the checksum
    is the thread count times one thread's; bad sizes raise, naming n."""
    from sagecore import _cpu, bench, errors
    th = _cpu.get_num_threads()
    try:
        _cpu.set_num_threads(1)
        t1, c1 = _cpu.compute_probe(12000)
        _cpu.set_num_threads(2)
        t2, c2 = _cpu.compute_probe(12000)
    finally:
        _cpu.set_num_threads(th)
    assert t1 > 0 and t2 > 0 and c1 > 0
    assert c2 == 2 * c1
    with pytest.raises(errors.InvalidArgumentError, match="n"):
        _cpu.compute_probe(5)
    try:
        _cpu.set_num_threads(1)
        assert bench.compute_scaling(12000) == 1.0
    finally:
        _cpu.set_num_threads(th)


def test_bench_backend_metal_refuses_the_emulation():
    from sagecore import metal
    if not metal.emulated():
        pytest.skip("on a Mac, bench --backend metal measures the GPU")
    r = run("-m", "sagecore", "bench", "--backend", "metal", "--quick")
    assert r.returncode == 2 and "host emulation" in r.stderr and "Mac" in r.stderr


def test_tune_writes_a_profile_the_selector_uses(tmp_path):
    import os
    env = {**os.environ, "SAGECORE_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "sagecore", "tune", "--quick", "--no-plot"], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    files = list(tmp_path.glob("profile-cpu-*.json"))
    assert len(files) == 1
    d = json.loads(files[0].read_text())
    assert d["version"] == 1 and d["source"].startswith("tune")
    assert "int8/fp16" in r.stdout and "split_k.min_kv_len" in r.stdout
    code = ("from sagecore.profile import load_profile; p = load_profile('cpu'); print(p.path, p.source)")
    r2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r2.stdout.split()[0] == str(files[0]) and "tune" in r2.stdout


def test_bench_targets_summary(capsys):
    from sagecore import bench
    wl = "decode N=32768 cold"
    rows = [dict(workload=wl, path="int8", ms=5.0, frac_bw=0.5), dict(workload=wl, path="int8-bf16", ms=4.0, frac_bw=0.85),
            dict(workload=wl, path="fp16", ms=10.0, frac_bw=0.6), dict(workload=wl, path="int4", ms=2.5, frac_bw=0.5),
            dict(workload=wl, path="torch-bfloat16", ms=20.0, frac_bw=0.1)]
    bench._print_targets(rows)
    out = capsys.readouterr().out.splitlines()
    got = {ln.split("  target")[0].strip(): ln.rsplit(": ", 1)[1] for ln in out if "target >=" in ln}
    assert got == {
        "int8 decode 32k cold: KV bytes/s / read bandwidth                   0.50": "NOT met",
        "int8-bf16 decode 32k cold: KV bytes/s / read bandwidth (bf16)       0.85": "met",
        "int8 decode 32k cold vs torch bf16                                  4.00x": "NOT met",
        "int8-bf16 decode 32k cold vs torch bf16 (bf16)                      5.00x": "NOT met",
        "int4 decode 32k cold vs int8                                        2.00x": "met",
        "int8 decode 32k cold vs fp16 cache                                  2.00x": "met",
        "int8-bf16 decode 32k cold vs fp16 cache (bf16)                      2.50x": "met",
    }
    bench._print_targets([])  # nothing measured: nothing printed
    assert capsys.readouterr().out == ""
