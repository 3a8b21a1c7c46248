"""Materialized scaled-dot-product attention: the oracle.

Computes the full score matrix in float64 (or float32) with numpy. Every test
judges the kernels against it; the selector never picks it unless a caller
asks for ``backend="reference"``.

Semantics shared by every path in sagecore:

* layouts ``"BHND"`` (q ``[B, Hq, M, D]``, k/v ``[B, Hkv, N, D]``) and ``"BNHD"``
  (tokens before heads), output in the layout of q;
* GQA/MQA: ``Hq % Hkv == 0``; query head h reads KV head ``h // (Hq // Hkv)``;
* causal masking is right-aligned: query row i of M sees keys
  ``j <= N - M + i`` (decode and chunked prefill against a cache);
* ``kv_lens`` (one length per batch item) masks keys ``j >= kv_lens[b]``; the
  causal diagonal then aligns to ``kv_lens[b]``;
* rows with no visible key produce zeros (and a log-sum-exp of ``-inf``).
"""

from __future__ import annotations

import numpy as np

from sagecore._arrays import as_array, as_flag, as_lengths, raise_nonfinite
from sagecore.errors import ArgumentTypeError, InvalidArgumentError, NonFiniteError

__all__ = ["sdpa_reference", "quality"]


def _to_bhnd(x, name, layout):
    x = as_array(x, name)
    if x.ndim != 4:
        raise InvalidArgumentError(name, f"expected a 4-d array in layout {layout}, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise ArgumentTypeError(name, f"expected a floating dtype, got {x.dtype}")
    return x if layout == "BHND" else x.transpose(0, 2, 1, 3)


def sdpa_reference(q, k, v, *, scale=None, is_causal=False, layout="BHND", kv_lens=None,
                   dtype=np.float64, return_lse=False):
    """Materialized attention in ``dtype`` (float64 by default).

    Args:
        q, k, v: arrays in ``layout`` (see module docstring).
        scale: softmax scale; default ``1/sqrt(D)``.
        is_causal: right-aligned causal mask.
        layout: ``"BHND"`` or ``"BNHD"``.
        kv_lens: optional ``[B]`` valid key counts.
        dtype: accumulation/output dtype, ``np.float64`` or ``np.float32``.
        return_lse: also return the natural-log log-sum-exp of the scaled
            scores per row, ``[B, Hq, M]``.

    Returns:
        The output ``[B, Hq, M, Dv]`` (or BNHD), in ``dtype``; with
        ``return_lse`` a tuple ``(out, lse)``.

    Raises:
        NonFiniteError: a NaN/Inf in ``q``, or in ``k``/``v`` at a key some
            query sees (tokens below ``kv_lens``), or scores/outputs beyond
            ``dtype``'s range; ``argument`` names q, k or v.
    """
    if layout not in ("BHND", "BNHD"):
        raise InvalidArgumentError("layout", f"expected 'BHND' or 'BNHD', got {layout!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float64, np.float32):
        raise InvalidArgumentError("dtype", f"expected float64 or float32, got {dtype}")
    q = _to_bhnd(q, "q", layout)
    k = _to_bhnd(k, "k", layout)
    v = _to_bhnd(v, "v", layout)
    B, Hq, M, D = q.shape
    Bk, Hkv, N, Dk = k.shape
    if Bk != B or v.shape[0] != B:
        raise InvalidArgumentError("k", f"batch {Bk} (v: {v.shape[0]}) must equal q's batch {B}")
    if Dk != D:
        raise InvalidArgumentError("k", f"head_dim {Dk} must equal q's head_dim {D}")
    if v.shape[1] != Hkv or v.shape[2] != N:
        raise InvalidArgumentError("v", f"heads/tokens {v.shape[1:3]} must equal k's {(Hkv, N)}")
    if Hkv == 0 or Hq % Hkv:
        raise InvalidArgumentError("q", f"query heads {Hq} must be a multiple of kv heads {Hkv}")
    is_causal, return_lse = as_flag(is_causal, "is_causal"), as_flag(return_lse, "return_lse")
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    if kv_lens is None:
        lens = np.full(B, N, dtype=np.int64)
    else:
        lens = as_lengths(kv_lens, B, N)
    # Non-finite inputs raise (as on the CPU and Metal backends) rather than
    # give NaN rows or, where a NaN score loses every comparison, rows that
    # silently ignore a key: q entirely, K/V where a query can see them.
    raise_nonfinite("q", q)
    raise_nonfinite("k", k, lens)
    raise_nonfinite("v", v, lens)
    group = Hq // Hkv
    Dv = v.shape[3]
    out = np.zeros((B, Hq, M, Dv), dtype=dtype)
    lse = np.full((B, Hq, M), -np.inf, dtype=dtype)
    ii = np.arange(M)
    for b in range(B):
        n_b = int(lens[b])  # tokens past n_b are never read (they may hold anything)
        jj = np.arange(n_b)
        mask = np.ones((M, n_b), bool)
        if is_causal:
            mask = jj[None, :] <= (n_b - M + ii)[:, None]
        if not mask.any():
            continue
        for hk in range(Hkv):
            kb = k[b, hk, :n_b].astype(dtype)
            vb = v[b, hk, :n_b].astype(dtype)
            qb = q[b, hk * group:(hk + 1) * group].astype(dtype)  # [group, M, D]
            s = (qb @ kb.T) * dtype.type(scale)  # [group, M, N]
            s = np.where(mask[None], s, -np.inf)
            mx = s.max(axis=-1, keepdims=True)
            live = np.broadcast_to(mask.any(axis=-1)[None, :, None], mx.shape)  # rows that see a key
            mx = np.where(live, mx, 0)
            p = np.exp(s - mx)
            l = p.sum(axis=-1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                o = np.where(live, (p @ vb) / np.where(l > 0, l, 1), 0)
                lse[b, hk * group:(hk + 1) * group] = np.where(live[..., 0], (mx + np.log(l))[..., 0], -np.inf)
            out[b, hk * group:(hk + 1) * group] = o
    scores_bad = bool((np.isnan(lse) | np.isposinf(lse)).any())
    if scores_bad or not np.isfinite(out).all():
        # finite inputs, yet scores or sums beyond the dtype's range
        name = "k" if scores_bad else "v"
        raise NonFiniteError(name, f"the attention {'output' if name == 'v' else 'scores'} overflow {dtype} "
                                   f"(inputs are finite)")
    if layout == "BNHD":
        out = out.transpose(0, 2, 1, 3)
        lse = lse.transpose(0, 2, 1)
    return (out, lse) if return_lse else out


def quality(out, ref) -> dict:
    """Error metrics of ``out`` against ``ref`` (both cast to float64).

    Returns ``cosine`` (over the whole tensor, DESIGN section 7),
    ``min_head_cosine`` (worst (batch, head) output of a BHND tensor taken as
    one vector), ``min_cosine`` (worst single query row), ``rel_l1`` =
    sum|o-r|/sum|r|, and ``rmse``.
    """
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.shape != r.shape:
        raise InvalidArgumentError("out", f"shape {o.shape} differs from the reference {r.shape}")
    num = float((o * r).sum())
    den = float(np.sqrt((o * o).sum() * (r * r).sum()))
    rows_o = o.reshape(-1, o.shape[-1])
    rows_r = r.reshape(-1, r.shape[-1])
    rn = np.sqrt((rows_o ** 2).sum(-1) * (rows_r ** 2).sum(-1))
    live = rn > 0
    row_cos = (rows_o * rows_r).sum(-1)[live] / rn[live]
    # per (batch, head): the output of one head as one vector (BHND input)
    if o.ndim == 4:
        ho = o.reshape(o.shape[0] * o.shape[1], -1)
        hr = r.reshape(r.shape[0] * r.shape[1], -1)
        hn = np.sqrt((ho ** 2).sum(-1) * (hr ** 2).sum(-1))
        hl = hn > 0
        head_cos = float(((ho * hr).sum(-1)[hl] / hn[hl]).min()) if hl.any() else 1.0
    else:
        head_cos = float("nan")
    l1 = float(np.abs(r).sum())
    return {
        "min_head_cosine": head_cos,
        "cosine": num / den if den > 0 else 1.0,
        "min_cosine": float(row_cos.min()) if row_cos.size else 1.0,
        "rel_l1": float(np.abs(o - r).sum()) / l1 if l1 > 0 else float(np.abs(o).sum()),
        "rmse": float(np.sqrt(((o - r) ** 2).mean())) if o.size else 0.0,
    }
