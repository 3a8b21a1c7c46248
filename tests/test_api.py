"""Public API contracts: DLPack zero-copy input, copy=, thread safety, typed errors."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import sagecore
from sagecore import errors

from helpers import DLPackOnly

RNG = np.random.default_rng(7)


def qkv(B=1, Hq=8, Hkv=2, M=1, N=96, D=64, dtype=np.float16):
    q = RNG.standard_normal((B, Hq, M, D)).astype(np.float32)
    k = RNG.standard_normal((B, Hkv, N, D)).astype(dtype)
    v = RNG.standard_normal((B, Hkv, N, D)).astype(dtype)
    return q, k, v


def test_dlpack_input_is_zero_copy():
    from sagecore._arrays import as_array
    q, k, v = qkv()
    view = as_array(DLPackOnly(k), "k")
    assert view.__array_interface__["data"][0] == k.__array_interface__["data"][0]
    out = sagecore.sdpa(DLPackOnly(q), DLPackOnly(k), DLPackOnly(v))
    np.testing.assert_array_equal(out, sagecore.sdpa(q, k, v))


def test_dlpack_torch_zero_copy():
    torch = pytest.importorskip("torch", reason="torch is an optional extra ([bench]); the DLPackOnly test "
                                               "covers the protocol without it")
    from sagecore._arrays import as_array
    q, k, v = qkv()
    tq, tk, tv = (torch.from_numpy(x.copy()) for x in (q, k, v))
    assert as_array(tk, "k").__array_interface__["data"][0] == tk.data_ptr()
    out = sagecore.sdpa(tq, tk, tv)
    np.testing.assert_allclose(out, sagecore.sdpa(q, k, v), rtol=0, atol=0)
    # BNHD views of torch tensors, read in place
    tkn = tk.transpose(1, 2)
    assert as_array(tkn, "k").__array_interface__["data"][0] == tk.data_ptr()
    out2 = sagecore.sdpa(tq.transpose(1, 2), tkn, tv.transpose(1, 2), layout="BNHD")
    np.testing.assert_array_equal(out2.transpose(0, 2, 1, 3), out)
    # a cache fed from torch
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=128)
    c.append(tk, tv)
    assert c.attend(tq).shape == q.shape
    # unsupported dtype: a typed error naming the argument
    with pytest.raises(errors.ArgumentTypeError, match="k"):
        sagecore.sdpa(tq, tk.to(torch.bfloat16), tv)


def test_copy_argument():
    q, k, v = qkv()
    kw = np.zeros(k.shape[:3] + (2 * k.shape[3],), k.dtype)
    kw[..., ::2] = k
    strided = kw[..., ::2]
    with pytest.raises(errors.InvalidArgumentError, match="copy=True"):
        sagecore.sdpa(q, strided, v)
    np.testing.assert_array_equal(sagecore.sdpa(q, strided, v, copy=True), sagecore.sdpa(q, k, v))
    with pytest.raises(errors.ArgumentTypeError, match="copy=True"):
        sagecore.sdpa(q.astype(np.float64), k, v)
    np.testing.assert_allclose(sagecore.sdpa(q.astype(np.float64), k, v, copy=True), sagecore.sdpa(q, k, v))


def test_concurrent_attends_on_distinct_caches_match_serial():
    caches, qs = [], []
    for i in range(6):
        q, k, v = qkv(N=700 + 37 * i)
        c = sagecore.QuantKVCache(["int8", "int4", "fp16"][i % 3], batch=1, kv_heads=2, head_dim=64, capacity=1024)
        c.append(k, v)
        caches.append(c)
        qs.append(q)
    serial = [c.attend(q) for c, q in zip(caches, qs)]
    with ThreadPoolExecutor(6) as ex:
        for _ in range(5):
            par = list(ex.map(lambda cq: cq[0].attend(cq[1]), zip(caches, qs)))
            for a, b in zip(serial, par):
                np.testing.assert_array_equal(a, b)


def test_concurrent_sdpa_same_signature_match_serial():
    inputs = [qkv(N=300) for _ in range(8)]
    serial = [sagecore.sdpa(*x) for x in inputs]
    with ThreadPoolExecutor(8) as ex:
        par = list(ex.map(lambda x: sagecore.sdpa(*x), inputs * 4))
    for i, p in enumerate(par):
        np.testing.assert_array_equal(p, serial[i % 8])


def test_concurrent_appends_to_one_cache_are_serialized():
    """Each thread appends chunks filled with its own marker; afterwards the
    cache holds every chunk whole (some order), none torn or lost."""
    D, chunk, per_thread, nthreads = 64, 5, 8, 4
    c = sagecore.QuantKVCache("fp16", batch=1, kv_heads=1, head_dim=D, capacity=16)
    start = threading.Barrier(nthreads)

    def work(t):
        start.wait()
        for j in range(per_thread):
            marker = np.float32(t * 100 + j)
            x = np.full((1, 1, chunk, D), marker, np.float32)
            c.append(x, -x)

    with ThreadPoolExecutor(nthreads) as ex:
        list(ex.map(work, range(nthreads)))
    assert len(c) == chunk * per_thread * nthreads
    k, v = c.dequantize()
    rows = k[0, 0]
    np.testing.assert_array_equal(v[0, 0], -rows)
    markers = rows[::chunk, 0]
    for i, m in enumerate(markers):
        np.testing.assert_array_equal(rows[i * chunk:(i + 1) * chunk], m)  # each chunk whole
    assert sorted(markers.tolist()) == sorted(float(t * 100 + j) for t in range(nthreads) for j in range(per_thread))
    for t in range(nthreads):  # each thread's chunks in its own order
        mine = [m for m in markers.tolist() if int(m) // 100 == t]
        assert mine == sorted(mine)


@pytest.mark.parametrize("call,exc,arg", [
    (lambda q, k, v: sagecore.sdpa(q, k, v, layout="NHBD"), errors.InvalidArgumentError, "layout"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, backend="gpu"), errors.InvalidArgumentError, "backend"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, backend=3), errors.InvalidArgumentError, "backend"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, split_k=-1), errors.InvalidArgumentError, "split_k"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, split_k=1.5), errors.InvalidArgumentError, "split_k"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, scale="x"), errors.InvalidArgumentError, "scale"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, scale=float("nan")), errors.InvalidArgumentError, "scale"),
    (lambda q, k, v: sagecore.sdpa(q[0], k, v), errors.InvalidArgumentError, "q"),
    (lambda q, k, v: sagecore.sdpa(q, k, v[:, :, :5]), errors.InvalidArgumentError, "v"),
    (lambda q, k, v: sagecore.sdpa(q, k, v.astype(np.float32)), errors.InvalidArgumentError, "v"),
    (lambda q, k, v: sagecore.sdpa(q[:, :3], k, v), errors.InvalidArgumentError, "q"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, out=np.empty((1, 8, 1, 63), np.float32)),
     errors.InvalidArgumentError, "out"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[1, 2]), errors.InvalidArgumentError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[97]), errors.InvalidArgumentError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[-1]), errors.InvalidArgumentError, "kv_lens"),
    # fractional, boolean, string or untyped lengths: errors, never truncated to an int
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[40.7]), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=np.array([40.0])), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[True]), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=np.array([True])), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=["40"]), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=40), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[2 ** 70]), errors.InvalidArgumentError, "kv_lens"),
    # yes/no arguments: a bool or 0/1, never the truthiness of a string or None
    (lambda q, k, v: sagecore.sdpa(q, k, v, is_causal="false"), errors.ArgumentTypeError, "is_causal"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, is_causal=None), errors.ArgumentTypeError, "is_causal"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, is_causal=2), errors.ArgumentTypeError, "is_causal"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, return_lse="no"), errors.ArgumentTypeError, "return_lse"),
    (lambda q, k, v: sagecore.sdpa(q[..., :0], k[..., :0], v[..., :0]), errors.InvalidArgumentError, "q"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=np.array([2 ** 63], np.uint64)), errors.InvalidArgumentError,
     "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=[[40]]), errors.ArgumentTypeError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa(q, k, v, kv_lens=np.array([[40]])), errors.InvalidArgumentError, "kv_lens"),
    (lambda q, k, v: sagecore.sdpa("q", k, v), errors.ArgumentTypeError, "q"),
    (lambda q, k, v: sagecore.sdpa(q.astype(np.int32), k, v), errors.ArgumentTypeError, "q"),
])
def test_bad_arguments_are_typed_and_named(call, exc, arg):
    q, k, v = qkv()
    with pytest.raises(exc) as ei:
        call(q, k, v)
    assert getattr(ei.value, "argument", None) == arg, str(ei.value)


def test_attend_bad_arguments():
    q, k, v = qkv()
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=128)
    c.append(k, v)
    for kw, arg in ((dict(split_k=-2), "split_k"), (dict(backend=None), "backend"), (dict(layout="X"), "layout")):
        with pytest.raises(errors.InvalidArgumentError) as ei:
            c.attend(q, **kw)
        assert ei.value.argument == arg
    with pytest.raises(errors.InvalidArgumentError) as ei:
        c.attend(q[:, :3])
    assert ei.value.argument == "q"
    c.attend(q, is_causal=True)  # remembered: the fast path must not take a non-bool flag either
    for kw in (dict(is_causal="false"), dict(is_causal=None), dict(is_causal=1.0), dict(return_lse="no")):
        with pytest.raises(errors.ArgumentTypeError) as ei:
            c.attend(q, **kw)
        assert ei.value.argument == next(iter(kw))
    np.testing.assert_array_equal(c.attend(q, is_causal=np.False_), c.attend(q, is_causal=False))
    np.testing.assert_array_equal(c.attend(q, is_causal=1), c.attend(q, is_causal=True))
    for lens, exc in (([40.7], errors.ArgumentTypeError), ([True], errors.ArgumentTypeError),
                      (np.array([40.5]), errors.ArgumentTypeError), ([97], errors.InvalidArgumentError)):
        with pytest.raises(exc) as ei:
            c.attend(q, kv_lens=lens)
        assert ei.value.argument == "kv_lens"


def test_integer_lengths_of_any_integer_type_are_the_same_lengths():
    """kv_lens as a list, int32 / uint64 / int64 arrays: one answer (the
    lengths are converted, not reinterpreted)."""
    q, k, v = qkv(B=2)
    ref = sagecore.sdpa(q, k, v, kv_lens=[40, 7])
    for lens in ((40, 7), np.array([40, 7], np.int32), np.array([40, 7], np.uint64), np.array([40, 7], np.int16)):
        np.testing.assert_array_equal(sagecore.sdpa(q, k, v, kv_lens=lens), ref)
    assert not np.array_equal(ref, sagecore.sdpa(q, k, v, kv_lens=[41, 7]))


def test_type_stubs_cover_the_compiled_module():
    """sagecore/_cpu.pyi declares exactly the compiled module's public names, and ships with py.typed."""
    import ast
    import pathlib

    from sagecore import _cpu
    pkg = pathlib.Path(sagecore.__file__).parent
    assert (pkg / "py.typed").exists()
    tree = ast.parse((pkg / "_cpu.pyi").read_text())
    stub = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stub |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    public = {n for n in dir(_cpu) if not n.startswith("_") and n not in ("np", "errors")}
    assert stub == public


def test_repeat_calls_with_out_take_the_fast_path_and_still_check_out():
    """The second call of a signature runs the remembered plan; out is filled
    in place and a wrong out is still a typed error naming it."""
    from sagecore.attention import _FAST
    from sagecore.reference import sdpa_reference
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 8, 1, 64)).astype(np.float16)
    k = rng.standard_normal((1, 2, 40, 64)).astype(np.float16)
    v = rng.standard_normal((1, 2, 40, 64)).astype(np.float16)
    ref = sdpa_reference(q, k, v)
    _FAST.clear()
    for dt in (np.float32, np.float16):
        outs = [np.full(q.shape, np.nan, dt) for _ in range(2)]
        for o in outs:
            assert sagecore.sdpa(q, k, v, out=o) is o
        assert any(key[9] == np.dtype(dt) for key in _FAST)  # the out dtype
        for o in outs:
            np.testing.assert_allclose(o.astype(np.float64), ref, atol=3e-3)
    with pytest.raises(errors.InvalidArgumentError, match="out"):
        sagecore.sdpa(q, k, v, out=np.empty((1, 8, 2, 64), np.float32))
    ro = np.empty(q.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(errors.InvalidArgumentError, match="writeable"):
        sagecore.sdpa(q, k, v, out=ro)


def test_bad_scale_and_precision_are_typed_errors_on_the_fast_paths():
    """After a call has remembered its fast path, a bad scale or precision
    (unhashable, non-numeric, non-finite, unknown) is still an error naming
    it, for sdpa and for QuantKVCache.attend; precision="bf16" calls are
    remembered too."""
    from sagecore.attention import _FAST
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 40, 64)).astype(np.float16)
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=256)
    c.append(*rng.standard_normal((2, 1, 2, 256, 64)).astype(np.float32))
    _FAST.clear()
    for _ in range(2):
        sagecore.sdpa(q, k, k, precision="bf16")
        c.attend(q, precision="bf16")
    assert any("bf16" in key for key in _FAST) and any("bf16" in key for key in c._fast)
    for call, none_ok in ((lambda **kw: sagecore.sdpa(q, k, k, **kw), False), (lambda **kw: c.attend(q, **kw), True)):
        for bad in ([0.1], "0.1", float("nan"), True):
            with pytest.raises(errors.InvalidArgumentError, match="scale"):
                call(scale=bad, precision="bf16")
        for bad in (["bf16"], "fp16", 0) + (() if none_ok else (None,)):  # attend: None = the policy's
            with pytest.raises(errors.InvalidArgumentError, match="precision"):
                call(precision=bad)


def test_attend_defaults_to_the_policy_precision():
    """A policy's ``precision`` is what attend uses when the call names none:
    the built-in int8 policy's "bf16" (bitwise the explicit call, and not the
    fp32 setting's result on a path that differs), a policy file's own value,
    and an explicit argument still wins."""
    rng = np.random.default_rng(7)
    q = rng.standard_normal((1, 8, 1, 128)).astype(np.float32)
    kv = rng.standard_normal((2, 1, 2, 512, 128)).astype(np.float32)
    assert sagecore.load_policy("int8").precision == "bf16"
    assert sagecore.load_policy("int4").precision == "int8"
    assert sagecore.load_policy("q8_0").precision == "fp32"
    for name, spec in (("int8", "int8"), ("int4", "int4"),
                       ("file", {"k": "int4.t64.g1.s16+smooth+zp+k16", "v": "int4.t1.g32.s16+rot", "precision": "bf16"})):
        c = sagecore.QuantKVCache(spec, batch=1, kv_heads=2, head_dim=128, capacity=512)
        c.append(*kv)
        prec = c.policy.precision
        got = c.attend(q)
        np.testing.assert_array_equal(got, c.attend(q, precision=prec))
        np.testing.assert_array_equal(c.attend(q), got)  # the remembered (fast-path) call too
        if sagecore._cpu.cpu_info()["active_isa"] in ("avx512_vnni", "amx"):  # integer decode: another result
            assert not np.array_equal(got, c.attend(q, precision="fp32")), name


def test_sdpa_fast_path_does_not_take_a_flag_that_only_equals_a_bool():
    """1.0 == True: after a remembered is_causal=True call, a float flag must
    still be rejected (the fast path keys on equality)."""
    q, k, v = qkv()
    sagecore.sdpa(q, k, v, is_causal=True)
    sagecore.sdpa(q, k, v, is_causal=True)
    with pytest.raises(errors.ArgumentTypeError) as ei:
        sagecore.sdpa(q, k, v, is_causal=1.0)
    assert ei.value.argument == "is_causal"


def test_set_num_threads_is_public_and_checked():
    try:
        sagecore.set_num_threads(1)
        assert sagecore.get_num_threads() == 1
        q, k, v = qkv()
        one = sagecore.sdpa(q, k, v)
        sagecore.set_num_threads(0)  # back to the default
        assert sagecore.get_num_threads() >= 1
        np.testing.assert_array_equal(sagecore.sdpa(q, k, v), one)
        for bad, exc in ((-1, errors.InvalidArgumentError), (10 ** 6, errors.InvalidArgumentError),
                         ("2", errors.ArgumentTypeError), (True, errors.ArgumentTypeError),
                         (2.0, errors.ArgumentTypeError)):
            with pytest.raises(exc) as ei:
                sagecore.set_num_threads(bad)
            assert ei.value.argument == "n"
    finally:
        sagecore.set_num_threads(0)  # the default, as the other tests run


@pytest.mark.parametrize("isa,ok", [("portable", True), ("sse9", False), ("avx-512", False),
                                    ("neon" if __import__("platform").machine() in ("x86_64", "AMD64") else "avx2",
                                     False)])
def test_sagecore_isa_env_names_a_level_this_cpu_runs(isa, ok):
    """SAGECORE_ISA with a typo or another architecture's level was ignored
    by the C core (the best level ran, silently); now the first call says so."""
    import os
    import subprocess
    import sys
    code = ("import numpy as np, sagecore\n"
            "q = np.ones((1, 2, 1, 64), np.float32)\n"
            "print(sagecore.sdpa(q, q, q).shape, sagecore._cpu.cpu_info()['active_isa'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "SAGECORE_ISA": isa})
    if ok:
        assert r.returncode == 0 and r.stdout.split()[-1] == isa, r.stderr
    else:
        assert r.returncode != 0 and "InvalidArgumentError: SAGECORE_ISA" in r.stderr, r.stderr[-500:]


def test_sdpa_fast_path_with_kv_lens_and_lse(monkeypatch):
    """Repeated sdpa calls with per-sequence kv_lens (new values each call)
    and return_lse take the fast path after the first and match the full path
    (copy=True) bit for bit; bad lengths are still typed errors there."""
    from sagecore import executor as ex
    rng = np.random.default_rng(6)
    q = rng.standard_normal((3, 8, 1, 64)).astype(np.float32)
    k = rng.standard_normal((3, 2, 90, 64)).astype(np.float16)
    v = rng.standard_normal((3, 2, 90, 64)).astype(np.float16)
    calls = []
    real = ex.plan_for
    monkeypatch.setattr(ex, "plan_for", lambda r, kv_len=None: calls.append(r) or real(r, kv_len))
    for step in range(5):
        lens = [90 - step, 60 + step, 7]
        got, lse = sagecore.sdpa(q, k, v, is_causal=True, kv_lens=lens, return_lse=True)
        full, full_lse = sagecore.sdpa(q, k, v, is_causal=True, kv_lens=lens, return_lse=True, copy=True)
        np.testing.assert_array_equal(got, full)
        np.testing.assert_array_equal(lse, full_lse)
        assert not np.array_equal(got, sagecore.sdpa(q, k, v, is_causal=True, copy=True))
    assert len(calls) == 1 + 5 * 2  # the fast-path calls built one request, the first
    for bad, exc in (([91, 1, 1], errors.InvalidArgumentError), ([1.5, 1, 1], errors.ArgumentTypeError),
                     ([1, 1], errors.InvalidArgumentError)):
        with pytest.raises(exc) as ei:
            sagecore.sdpa(q, k, v, is_causal=True, kv_lens=bad, return_lse=True)
        assert ei.value.argument == "kv_lens"
    out = sagecore.sdpa(q, k, v, is_causal=True, kv_lens=[5, 5, 5])  # lse not asked: another entry
    assert isinstance(out, np.ndarray)
