"""Slow stress tests: run by CI as a separate step (python -m pytest -m slow)."""
import numpy as np
import pytest

from sagecore.cache import QuantKVCache
from sagecore.errors import NonFiniteError


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["int8", "int4"])
def test_128k_tokens_random_chunks(policy, tmp_path):
    rng = np.random.default_rng(7)
    N, H, D = 131072, 2, 128
    k = (rng.standard_normal((1, H, N, D)) * 3).astype(np.float16)
    v = rng.standard_normal((1, H, N, D)).astype(np.float16)
    one = QuantKVCache(policy, batch=1, kv_heads=H, head_dim=D, capacity=N)
    one.append(k, v)
    c = QuantKVCache(policy, batch=1, kv_heads=H, head_dim=D, capacity=1)
    pos = 0
    while pos < N:
        n = int(min(N - pos, rng.choice([1, 1, 3, 31, 33, 64, 4097])))
        c.append(k[:, :, pos:pos + n], v[:, :, pos:pos + n])
        pos += n
    assert len(c) == N and c.capacity >= N
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one._content(), c._content()))
    path = tmp_path / "big.sck"
    c.save(path)
    d = QuantKVCache.load(path)
    kd, vd = d.dequantize()
    assert np.isfinite(kd).all() and kd.shape == (1, H, N, D)
    tol = 0.1 if policy == "int8" else 1.5
    assert np.abs(kd - k.astype(np.float32)).max() < tol


@pytest.mark.slow
def test_extreme_values_every_format():
    # Rotation concentrates this alternating +-65504 pattern into one channel
    # (x 8 at d64): an fp16 int4 scale cannot hold it, and that is an error.
    x = np.full((1, 1, 32, 64), 65504.0, np.float32)
    x[..., ::2] = -65504.0
    c = QuantKVCache({"k": "int4.t1.g32.s16+rot", "v": "fp16"}, batch=1, kv_heads=1, head_dim=64)
    with pytest.raises(NonFiniteError, match="fp32"):
        c.append(x, x)
    assert len(c) == 0
    # a failing append leaves a partly filled group exactly as it was
    c = QuantKVCache({"k": "fp16", "v": "int4.t64.g1.s16+rot"}, batch=1, kv_heads=1, head_dim=64)
    ok = np.random.default_rng(0).standard_normal((1, 1, 10, 64)).astype(np.float32)
    c.append(ok, ok)
    before = [a.copy() for _, a in c._content()]
    with pytest.raises(NonFiniteError):
        c.append(ok[:, :, :1], x[:, :, :1])
    assert len(c) == 10
    assert all(np.array_equal(a, b) for a, (_, b) in zip(before, c._content()))
    for fid in ["int8.t1.g32.s16", "int8.t32.g1.s16+smooth", "int4.t64.g1.s16+zp+smooth", "int4.t1.g32.s32+rot",
                "int8.t4.g16.s16+out2"]:
        x = np.full((1, 1, 256, 64), 65504.0, np.float32)
        x[..., ::2] = -65504.0
        x[0, 0, 100:] = 0.0
        c = QuantKVCache({"k": fid, "v": fid, "smooth_window": 16}, batch=1, kv_heads=1, head_dim=64)
        c.append(x, x)
        kd, _ = c.dequantize()
        assert np.isfinite(kd).all()
        assert np.abs(kd[0, 0, 100:]).max() < 1e-3 * 65504 * (8 if "int4" in fid else 1)


def _kernel_vs_reference(cache, q, causal, split_k=0):
    from sagecore.reference import quality, sdpa_reference
    # fp32-level kernel against the reference over the stored content; the
    # policies' own default precisions are judged by quality (below, and in
    # tests/test_accuracy.py)
    got = cache.attend(q, is_causal=causal, split_k=split_k, precision="fp32")
    kd, vd = cache.dequantize()
    ref = sdpa_reference(q, kd, vd, is_causal=causal)
    assert np.isfinite(got).all()
    return quality(got, ref)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["fp16", "int8", "int4"])
def test_attention_decode_131072(policy):
    rng = np.random.default_rng(3)
    N, D = 131072, 128
    k = (rng.standard_normal((1, 2, N, D)) * 2).astype(np.float16)
    v = rng.standard_normal((1, 2, N, D)).astype(np.float16)
    c = QuantKVCache(policy, batch=1, kv_heads=2, head_dim=D, capacity=N)
    c.append(k, v)
    q = rng.standard_normal((1, 8, 1, D)).astype(np.float32)
    for sk in (1, 0, 13):
        assert _kernel_vs_reference(c, q, True, sk)["rel_l1"] < 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["int8", "int8k-int4v"])
def test_attention_prefill_512_against_4097(policy):
    rng = np.random.default_rng(4)
    D = 128
    k = rng.standard_normal((3, 2, 4097, D)).astype(np.float32)
    v = rng.standard_normal((3, 2, 4097, D)).astype(np.float32)
    c = QuantKVCache(policy, batch=3, kv_heads=2, head_dim=D, capacity=4097)
    c.append(k, v)
    q = rng.standard_normal((3, 16, 512, D)).astype(np.float32)
    for causal in (True, False):
        assert _kernel_vs_reference(c, q, causal)["rel_l1"] < 2e-5


@pytest.mark.slow
def test_attention_outlier_channels_100x():
    """K with 100x outlier channels: smoothing keeps the kernel on target."""
    from sagecore.reference import quality, sdpa_reference
    rng = np.random.default_rng(5)
    N, D = 4096, 128
    k = rng.standard_normal((1, 2, N, D)).astype(np.float32)
    k[..., [3, 77, 100]] += 100.0
    v = rng.standard_normal((1, 2, N, D)).astype(np.float32)
    q = rng.standard_normal((1, 8, 4, D)).astype(np.float32)
    c = QuantKVCache("int8", batch=1, kv_heads=2, head_dim=D, capacity=N)
    c.append(k, v)
    assert _kernel_vs_reference(c, q, True)["rel_l1"] < 2e-5
    for precision in (None, "fp32"):  # the policy's ("bf16") and fp32
        m = quality(c.attend(q, precision=precision), sdpa_reference(q, k, v, is_causal=True))
        assert m["cosine"] >= 0.9999, (precision, m)
