"""sagecore.sdpa over plain K/V arrays (the FlashAttention path for fp16/fp32 K/V)."""
import numpy as np
import pytest

import sagecore
from sagecore.errors import ArgumentTypeError, InvalidArgumentError, NoBackendError
from sagecore.reference import quality, sdpa_reference


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("D", [64, 80, 128, 256])
@pytest.mark.parametrize("M,N,causal", [(1, 4097, True), (3, 33, True), (64, 64, True), (17, 300, False), (8, 5, True)])
def test_matches_reference(dtype, D, M, N, causal, rng):
    q = rng.standard_normal((2, 8, M, D)).astype(dtype)
    k = rng.standard_normal((2, 2, N, D)).astype(dtype)
    v = rng.standard_normal((2, 2, N, D)).astype(dtype)
    lens = [N, max(0, N - 9)]
    got, lse = sagecore.sdpa(q, k, v, is_causal=causal, kv_lens=lens, return_lse=True)
    ref, rlse = sdpa_reference(q, k, v, is_causal=causal, kv_lens=lens, return_lse=True)
    assert quality(got, ref)["rel_l1"] < 2e-5
    live = np.isfinite(rlse)
    np.testing.assert_allclose(lse[live], rlse[live], rtol=1e-5, atol=1e-4)
    assert np.all(got[~live] == 0)


def test_bnhd_and_strided_views_are_read_in_place(rng):
    q = rng.standard_normal((1, 8, 4, 128)).astype(np.float32)
    big_k = rng.standard_normal((1, 500, 6, 128)).astype(np.float32)  # BNHD with 6 heads; use 2 of them
    big_v = rng.standard_normal((1, 500, 6, 128)).astype(np.float32)
    k, v = big_k[:, :, 1:3], big_v[:, :, 1:3]
    got = sagecore.sdpa(np.ascontiguousarray(q.transpose(0, 2, 1, 3)), k, v, layout="BNHD", is_causal=True)
    ref = sdpa_reference(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), is_causal=True)
    assert quality(got.transpose(0, 2, 1, 3), ref)["rel_l1"] < 2e-5


def test_split_k_and_out(rng):
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 5000, 64)).astype(np.float16)
    v = rng.standard_normal((1, 1, 5000, 64)).astype(np.float16)
    out = np.empty((1, 4, 1, 64), np.float16)
    res = sagecore.sdpa(q, k, v, split_k=7, out=out)
    assert res is out
    np.testing.assert_allclose(out.astype(np.float32), sagecore.sdpa(q, k, v, split_k=1), atol=2e-3)


def test_reference_backend_only_when_asked(rng):
    q = rng.standard_normal((1, 2, 3, 48)).astype(np.float32)
    k = rng.standard_normal((1, 1, 10, 48)).astype(np.float32)
    with pytest.raises(NoBackendError) as ei:
        sagecore.sdpa(q, k, k)
    assert set(ei.value.reasons) == {"cpu", "metal", "reference"} and "48" in ei.value.reasons["cpu"]
    got = sagecore.sdpa(q, k, k, backend="reference")
    np.testing.assert_allclose(got, sdpa_reference(q, k, k), rtol=1e-6)


def test_bad_arguments(rng):
    q = np.zeros((1, 4, 1, 64), np.float32)
    k = np.zeros((1, 2, 5, 64), np.float32)
    with pytest.raises(InvalidArgumentError, match="backend"):
        sagecore.sdpa(q, k, k, backend="gpu")
    with pytest.raises(InvalidArgumentError, match="multiple"):
        sagecore.sdpa(np.zeros((1, 3, 1, 64), np.float32), k, k)
    with pytest.raises(InvalidArgumentError, match="differs"):
        sagecore.sdpa(q, k, np.zeros((1, 2, 6, 64), np.float32))
    with pytest.raises(ArgumentTypeError, match="float16 or float32"):
        sagecore.sdpa(q.astype(np.float64), k, k)
    with pytest.raises(InvalidArgumentError, match="layout"):
        sagecore.sdpa(q, k, k, layout="HBND")


def test_empty_keys_or_queries():
    """No keys: zero output and lse -inf (numpy gives empty arrays zero strides,
    which must not trip the layout checks); no queries: an empty output."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 8, 40, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 0, 64)).astype(np.float16)
    out, lse = sagecore.sdpa(q, k, k, return_lse=True)
    assert out.shape == q.shape and not out.any() and np.isneginf(lse).all()
    assert not sagecore.sdpa(q, k, k, backend="reference").any()
    assert sagecore.sdpa(q[:, :, :0], k, k).shape == (1, 8, 0, 64)
    kk = rng.standard_normal((1, 2, 5, 64)).astype(np.float16)
    assert sagecore.sdpa(q[:, :, :0], kk, kk).shape == (1, 8, 0, 64)
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=8)
    assert c.attend(q[:, :, :0]).shape == (1, 8, 0, 64)
