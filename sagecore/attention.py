"""`sagecore.sdpa`: scaled-dot-product attention over plain K/V arrays.

K and V are read in place (numpy arrays or DLPack tensors, float16 or
float32, BHND or BNHD, any strides with a contiguous head_dim): no copy and
no dequantization pass. Quantized K/V live in a QuantKVCache
(:meth:`QuantKVCache.attend`).

Backends: ``"cpu"`` (the C kernels), ``"reference"`` (materialized float64
SDPA, only when asked for) and ``"auto"``. The full selector with device
profiles, the pipeline graph and the Metal backend come with the
graph/selector milestone; here ``"auto"`` picks the CPU kernels when they
accept the request and otherwise raises NoBackendError with every backend's
reason. There is no silent fallback.
"""

from __future__ import annotations

import numpy as np

from sagecore import _cpu
from sagecore._arrays import as_kv_input, prepare_out
from sagecore.errors import InvalidArgumentError, NoBackendError

__all__ = ["sdpa"]


def _cpu_declines(D):
    from sagecore.backends import ATTENTION_HEAD_DIMS
    if D not in ATTENTION_HEAD_DIMS:
        return f"kernels are built for head_dim {list(ATTENTION_HEAD_DIMS)}, not {D}"
    return None


def sdpa(q, k, v, *, scale=None, is_causal=False, layout="BHND", backend="auto", out=None, kv_lens=None,
         split_k=0, return_lse=False):
    """Attention of ``q`` over ``k``/``v``.

    Args:
        q: ``[B, Hq, M, D]`` (BHND) or ``[B, M, Hq, D]`` (BNHD).
        k, v: ``[B, Hkv, N, D]`` or ``[B, N, Hkv, D]``; ``Hq % Hkv == 0`` (GQA).
        scale: softmax scale, default ``1/sqrt(D)``.
        is_causal: right-aligned causal mask (row i of M sees keys ``j <= N - M + i``).
        layout: ``"BHND"`` or ``"BNHD"`` for q, k, v and the output.
        backend: ``"auto"``, ``"cpu"`` or ``"reference"``.
        out: optional float32/float16 array shaped like q (in ``layout``).
        kv_lens: optional per-batch valid key counts.
        split_k: 0 automatic, 1 off, n splits (CPU backend).
        return_lse: also return the natural-log log-sum-exp ``[B, Hq, M]``.

    Returns:
        The output (float32 numpy array unless ``out`` is given), and the lse if asked.

    Raises:
        ArgumentTypeError, InvalidArgumentError: bad types, shapes or layout.
        NoBackendError: no backend accepts the request (lists each one's reason).
    """
    if backend not in ("auto", "cpu", "reference"):
        raise InvalidArgumentError("backend", f"expected 'auto', 'cpu' or 'reference', got {backend!r}")
    qa = as_kv_input(q, "q", layout)
    ka = as_kv_input(k, "k", layout)
    va = as_kv_input(v, "v", layout)
    B, Hq, M, D = qa.shape
    if ka.shape != va.shape:
        raise InvalidArgumentError("v", f"shape {tuple(va.shape)} differs from k's {tuple(ka.shape)} (BHND)")
    if ka.shape[0] != B or ka.shape[3] != D:
        raise InvalidArgumentError("k", f"expected batch {B} and head_dim {D}, got {tuple(ka.shape)} (BHND)")
    if Hq % ka.shape[1]:
        raise InvalidArgumentError("q", f"query heads {Hq} must be a multiple of kv heads {ka.shape[1]}")
    scale = float(1.0 / np.sqrt(D) if scale is None else scale)
    if backend == "reference":
        from sagecore.reference import sdpa_reference
        o, lse = sdpa_reference(qa, ka, va, scale=scale, is_causal=is_causal, kv_lens=kv_lens, return_lse=True)
        o, lse = o.astype(np.float32), lse.astype(np.float32)
        res = o if layout == "BHND" else o.transpose(0, 2, 1, 3)
        if out is not None:
            np.copyto(out, res.astype(np.asarray(out).dtype, copy=False))
            res = out
        return (res, lse) if return_lse else res
    why = _cpu_declines(D)
    if why:
        raise NoBackendError("no backend can run this sdpa call",
                             {"cpu": why, "metal": "not built yet",
                              "reference": "only used when asked for with backend='reference'"})
    out_arr, ret = prepare_out(out, qa.shape, layout)
    lse = np.empty((B, Hq, M), np.float32) if return_lse else None
    _cpu.attention_tensors(qa, ka, va, out_arr, kv_lens, scale, bool(is_causal), int(split_k), lse)
    return (ret, lse) if return_lse else ret
