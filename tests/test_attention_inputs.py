"""Two input contracts of attention that used to give silently wrong results.

Non-finite inputs raise NonFiniteError naming q, k or v. Before, a NaN score
lost every comparison of the softmax's running max and a -inf score read as
a masked key, so a NaN/Inf in q or K gave rows of zeros or rows that silently
ignored a key (CPU and Metal), and the reference took rows whose max was not
finite for rows without keys. Now, on every backend: a NaN/Inf in q, or in
K/V at a token some query sees (below kv_lens), or scores/outputs beyond the
output's range, raise; values past kv_lens are never read and may be anything.

An ``out`` overlapping the inputs (other than being q itself) is an
InvalidArgumentError; before, one work item overwrote what another still read.
"""
import numpy as np
import pytest

from sagecore import QuantKVCache, _cpu, sdpa, sdpa_reference
from sagecore.errors import InvalidArgumentError, NonFiniteError

BACKENDS = ["cpu", "metal", "reference"]  # metal: the host emulation on Linux


def _inputs(rng, M, N, dtype=np.float32, Hq=4, Hkv=2, D=64):
    q = rng.standard_normal((1, Hq, M, D)).astype(dtype)
    k = rng.standard_normal((1, Hkv, N, D)).astype(dtype)
    v = rng.standard_normal((1, Hkv, N, D)).astype(dtype)
    return q, k, v


def _poke(a, h, t, c, x):
    a = a.copy()
    a[0, h, t, c] = x
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,split_k", [(1, 300, 1), (1, 3000, 4), (64, 300, 1), (64, 3000, 3)])
@pytest.mark.parametrize("which,value", [("q", np.nan), ("k", np.inf), ("k", -np.inf), ("k", np.nan), ("v", np.nan),
                                         ("v", -np.inf)])
def test_nonfinite_input_raises_naming_it(rng, backend, M, N, split_k, which, value):
    q, k, v = _inputs(rng, M, N)
    h, t, c = 1, (M - 1 if which == "q" else N // 2), 7
    args = {"q": q, "k": k, "v": v}
    args[which] = _poke(args[which], h, t, c, value)
    kw = {} if backend == "reference" else {"split_k": split_k}
    # bf16: other CPU paths (AVX512-BF16 / AMX prefill items, VNNI decode), bf16 operands
    for precision in ("fp32", "bf16"):
        with pytest.raises(NonFiniteError) as ei:
            sdpa(args["q"], args["k"], args["v"], is_causal=True, backend=backend, precision=precision, **kw)
        assert ei.value.argument == which
        assert f"[batch 0, head {h}, token {t}, channel {c}]" in str(ei.value)


def test_every_isa_path_reports_nonfinite_keys_and_queries(rng, isa):
    for M in (1, 40):
        for dt in (np.float32, np.float16):
            q, k, v = _inputs(rng, M, 500, dt)
            for which, arr in (("q", _poke(q, 0, 0, 3, np.nan)), ("k", _poke(k, 1, 499, 63, np.inf))):
                a = {"q": q, "k": k, "v": v}
                a[which] = arr
                with pytest.raises(NonFiniteError) as ei:
                    sdpa(a["q"], a["k"], a["v"], backend="cpu")
                assert ei.value.argument == which, isa


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_past_kv_lens_are_not_read(rng, backend):
    """Garbage (NaN, Inf) past each batch item's length is the common case of
    a padded batch: it must neither raise nor leak into the result."""
    q = rng.standard_normal((2, 4, 1, 64)).astype(np.float32)
    k = rng.standard_normal((2, 2, 100, 64)).astype(np.float32)
    v = rng.standard_normal((2, 2, 100, 64)).astype(np.float32)
    lens = [60, 100]
    kg, vg = k.copy(), v.copy()
    kg[0, :, 60:] = np.nan
    vg[0, :, 60:] = np.inf
    out = sdpa(q, kg, vg, kv_lens=lens, backend=backend)
    ref = sdpa_reference(q, k, v, kv_lens=lens)
    assert np.abs(out - ref).max() < 1e-5
    kg[0, :, 59, 0] = np.nan  # the last valid key: now it is read
    with pytest.raises(NonFiniteError, match=r"token 59, channel 0"):
        sdpa(q, kg, vg, kv_lens=lens, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_and_output_overflow_raise(rng, backend):
    q, k, v = _inputs(rng, 1, 50)
    big_q, big_k = q * np.float32(1e19), k * np.float32(1e19)  # finite, but q.k ~ 1e39
    if backend == "reference":  # float64 holds these scores: a valid result
        assert np.isfinite(sdpa(big_q, big_k, v, scale=1.0, backend=backend)).all()
    else:
        with pytest.raises(NonFiniteError) as ei:  # scores beyond float32
            sdpa(big_q, big_k, v, scale=1.0, backend=backend)
        # Metal sees a NaN output only, and no tensor holds a NaN: it names v
        assert ei.value.argument == ("v" if backend == "metal" else "k")
    out16 = np.empty(q.shape, np.float16)
    with pytest.raises(NonFiniteError) as ei:  # every output 1e5, beyond float16, for a float16 out
        sdpa(q, k, np.full_like(v, 1e5), out=out16, backend=backend)
    assert ei.value.argument == "v"
    sdpa(q, k, np.full_like(v, 6e4), out=out16, backend=backend)  # within float16: fine
    np.testing.assert_allclose(out16.astype(np.float32), 6e4, rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("policy", ["int8", "int4", "fp16"])
def test_cache_attend_rejects_nonfinite_queries(rng, policy, precision):
    c = QuantKVCache(policy, batch=1, kv_heads=2, head_dim=64, capacity=300)
    c.append(rng.standard_normal((1, 2, 200, 64)).astype(np.float16),
             rng.standard_normal((1, 2, 200, 64)).astype(np.float16))
    for M in (1, 40):  # decode items (codes read in place), prefill items (decoded tiles)
        q = rng.standard_normal((1, 8, M, 64)).astype(np.float32)
        good = c.attend(q, precision=precision)
        with pytest.raises(NonFiniteError, match=rf"head 5, token {M - 1}, channel 9") as ei:
            c.attend(_poke(q, 5, M - 1, 9, np.inf), precision=precision)
        assert ei.value.argument == "q"
        np.testing.assert_array_equal(c.attend(q, precision=precision), good)  # the fast path is unharmed


def test_c_core_reports_the_first_offending_element(rng):
    """The message comes from sc_attention itself (the C ABI), not Python."""
    q, k, v = _inputs(rng, 1, 64)
    out = np.empty_like(q)
    with pytest.raises(NonFiniteError, match=r"^v: element \[batch 0, head 1, token 3, channel 2\] = nan"):
        _cpu.attention_tensors(q, k, _poke(v, 1, 3, 2, np.nan), out, None, 0.125, False, 1, None, 0)


# ------------------------------------------------------------ out overlaps
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,split_k", [(1, 3000, 4), (200, 300, 1), (64, 3000, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_may_be_q_itself(rng, backend, M, N, split_k, dtype):
    """Each query row is read before its output row is written, by the same
    work item (split-K: the reduce pass writes after every part ran)."""
    q, k, v = _inputs(rng, M, N, dtype)
    kw = {} if backend == "reference" else {"split_k": split_k}
    want = sdpa(q, k, v, is_causal=True, backend=backend, out=np.empty_like(q), **kw)
    qq = q.copy()
    got = sdpa(qq, k, v, is_causal=True, backend=backend, out=qq, **kw)
    assert got is qq
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_overlapping_an_input_is_an_error(rng, backend):
    """Before, such calls ran and returned a silently wrong result."""
    buf = rng.standard_normal((1, 4, 40, 64)).astype(np.float32)
    q = buf[:, :, :3]                                  # [1, 4, 3, 64]
    k, v = buf[:, :2, 10:27], buf[:, 2:, 10:27]        # [1, 2, 17, 64] each
    with pytest.raises(InvalidArgumentError, match="out: overlaps q's memory without being q"):
        sdpa(q, k, v, out=buf[:, :, 1:4], backend=backend)
    with pytest.raises(InvalidArgumentError, match="out: overlaps k's memory"):
        sdpa(q.copy(), k, v, out=buf[:, :, 12:15], backend=backend)
    with pytest.raises(InvalidArgumentError, match="out: overlaps v's memory"):
        sdpa(q.copy(), k.copy(), v, out=buf[:, :, 12:15], backend=backend)
    want = sdpa(q, k, v, backend=backend)
    got = sdpa(q, k, v, out=buf[:, :, 30:33], backend=backend)  # interleaved but disjoint views: fine
    np.testing.assert_array_equal(got, want)


def test_cache_attend_out_overlapping_q_is_an_error(rng):
    c = QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=300)
    c.append(rng.standard_normal((1, 2, 200, 64)).astype(np.float16),
             rng.standard_normal((1, 2, 200, 64)).astype(np.float16))
    buf = rng.standard_normal((1, 8, 3, 64)).astype(np.float32)
    q = buf[:, :, :2]
    want = c.attend(q)
    for _ in range(2):  # the full path, then the fast path
        with pytest.raises(InvalidArgumentError, match="out: overlaps q"):
            c.attend(q, out=buf[:, :, 1:3])
    qq = q.copy()
    np.testing.assert_array_equal(c.attend(qq, out=qq), want)
