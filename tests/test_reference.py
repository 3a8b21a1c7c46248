import numpy as np
import pytest

from sagecore.errors import InvalidArgumentError
from sagecore.reference import quality, sdpa_reference


def naive(q, k, v, scale, causal, lens=None):
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    out = np.zeros((B, Hq, M, v.shape[3]))
    for b in range(B):
        n = N if lens is None else lens[b]
        for h in range(Hq):
            kh = h // (Hq // Hkv)
            for i in range(M):
                js = [j for j in range(n) if not causal or j <= n - M + i]
                if not js:
                    continue
                s = np.array([scale * float(np.dot(q[b, h, i].astype(np.float64), k[b, kh, j])) for j in js])
                p = np.exp(s - s.max())
                p /= p.sum()
                out[b, h, i] = sum(pj * v[b, kh, j].astype(np.float64) for pj, j in zip(p, js))
    return out


@pytest.mark.parametrize("M,N,causal", [(1, 7, False), (3, 7, True), (7, 7, True), (5, 3, True), (4, 9, False)])
def test_matches_naive(rng, M, N, causal):
    q = rng.standard_normal((2, 4, M, 16))
    k = rng.standard_normal((2, 2, N, 16))
    v = rng.standard_normal((2, 2, N, 8))
    got = sdpa_reference(q, k, v, is_causal=causal, scale=0.3)
    np.testing.assert_allclose(got, naive(q, k, v, 0.3, causal), rtol=1e-12, atol=1e-12)


def test_kv_lens_and_fully_masked_rows(rng):
    q = rng.standard_normal((2, 2, 4, 16))
    k = rng.standard_normal((2, 1, 6, 16))
    v = rng.standard_normal((2, 1, 6, 16))
    out, lse = sdpa_reference(q, k, v, is_causal=True, kv_lens=[6, 2], return_lse=True)
    np.testing.assert_allclose(out, naive(q, k, v, 0.25, True, [6, 2]), atol=1e-12)
    # batch 1 has 2 keys and 4 queries: rows 0 and 1 see no key
    assert np.all(out[1, :, :2] == 0) and np.all(np.isneginf(lse[1, :, :2]))
    assert np.isfinite(out).all()


def test_bnhd_layout_and_lse(rng):
    q = rng.standard_normal((1, 4, 3, 16))
    k = rng.standard_normal((1, 2, 5, 16))
    v = rng.standard_normal((1, 2, 5, 16))
    a, lse = sdpa_reference(q, k, v, return_lse=True)
    b = sdpa_reference(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), layout="BNHD")
    np.testing.assert_allclose(a, b.transpose(0, 2, 1, 3))
    s = np.einsum("hmd,hnd->hmn", q[0], np.repeat(k[0], 2, axis=0)) / 4.0
    np.testing.assert_allclose(lse[0], np.log(np.exp(s).sum(-1)))


def test_bad_inputs():
    q = np.zeros((1, 3, 2, 16))
    k = np.zeros((1, 2, 2, 16))
    with pytest.raises(InvalidArgumentError, match="multiple"):
        sdpa_reference(q, k, k)
    with pytest.raises(InvalidArgumentError, match="layout"):
        sdpa_reference(q, k, k, layout="XYZW")
    with pytest.raises(InvalidArgumentError, match="kv_lens"):
        sdpa_reference(np.zeros((1, 2, 2, 16)), k, k, kv_lens=[5])


def test_quality_metrics():
    r = np.ones((1, 1, 2, 4))
    m = quality(r * 2, r)
    assert m["cosine"] == pytest.approx(1.0) and m["rel_l1"] == pytest.approx(1.0)
    m = quality(-r, r)
    assert m["min_cosine"] == pytest.approx(-1.0)
