"""`sagecore.sdpa`: scaled-dot-product attention over plain K/V arrays.

K and V are read in place (numpy arrays or DLPack tensors, float16 or
float32, BHND or BNHD, any strides with a contiguous head_dim): no copy and
no dequantization pass. Quantized K/V live in a QuantKVCache
(:meth:`QuantKVCache.attend`).

Each call is a request to the selector (:mod:`sagecore.selector`), which
picks the backend and path; the plan for it comes from the plan cache
(:mod:`sagecore.graph`) and runs on its backend's executor
(:mod:`sagecore.executor`). ``backend="reference"`` (materialized float64)
is used only when asked for; there is no silent fallback.

Fast path: after the first call with a given signature (shapes, dtypes,
causal, scale, out's dtype) of plain numpy BHND inputs and default options,
later calls with the same signature go straight to the prepared plan's
runner; the kernel entry still validates every array.
"""

from __future__ import annotations

import numpy as np

from sagecore._arrays import DTYPE_NAMES, as_flag, as_kv_input, as_lengths, check_out_overlap, prepare_out
from sagecore.errors import InvalidArgumentError

__all__ = ["sdpa"]

#: signature -> runner for repeat calls (cleared by sagecore.selector.reset())
_FAST: dict = {}


def sdpa(q, k, v, *, scale=None, is_causal=False, layout="BHND", backend="auto", out=None, kv_lens=None,
         split_k=0, return_lse=False, copy=False, precision="fp32"):
    """Attention of ``q`` over ``k``/``v``.

    Args:
        q: ``[B, Hq, M, D]`` (BHND) or ``[B, M, Hq, D]`` (BNHD).
        k, v: ``[B, Hkv, N, D]`` or ``[B, N, Hkv, D]``; ``Hq % Hkv == 0`` (GQA).
        scale: softmax scale, default ``1/sqrt(D)``.
        is_causal: right-aligned causal mask (row i of M sees keys ``j <= N - M + i``).
        layout: ``"BHND"`` or ``"BNHD"`` for q, k, v and the output.
        backend: ``"auto"``, ``"cpu"``, ``"metal"`` or ``"reference"``.
        out: optional float32/float16 array shaped like q (in ``layout``); it
            may be ``q`` itself, otherwise it must not overlap q, k or v.
        kv_lens: optional per-batch valid key counts.
        split_k: 0 lets the selector decide, 1 disables, n forces n key splits.
        return_lse: also return the natural-log log-sum-exp ``[B, Hq, M]``.
        copy: allow a copy when an input is not usable in place (non-contiguous
            head_dim, float64, ...); by default that is an error.
        precision: ``"fp32"`` (default: fp32-level results on every path) or
            ``"bf16"``: QK^T and PV operands may be rounded to bf16 (fp32
            accumulation; the precision class of a bf16 SDPA), which the CPU's
            AMX path and (with AVX512-BF16) its avx512_vnni level use for
            items of many rows, and its AVX512-VNNI decode for QK^T and PV in
            integers on int8/int4 codes; or ``"int8"``: 8-bit operands as well
            (SageAttention's precision class: int8 q' per row and token group,
            u8 P' per row and tile), which AVX512-VNNI decode takes over int4
            codes (VPDPBUSD); int8 codes keep 16-bit operands there, because
            8-bit ones miss the int8 accuracy targets. A permission: other
            paths compute as for ``"bf16"`` / ``"fp32"``.

    Returns:
        The output (float32 numpy array unless ``out`` is given), and the lse if asked.

    Raises:
        ArgumentTypeError, InvalidArgumentError: bad types, shapes or layout.
        NoBackendError: no backend accepts the request (lists each one's reason).
        NonFiniteError: a NaN/Inf in ``q``, or in ``k``/``v`` at a token below
            ``kv_lens`` (tokens past it are never read), or scores/outputs
            beyond float32 (float16 for a float16 ``out``); ``argument`` is
            ``"q"``, ``"k"`` or ``"v"``, and the message names the element.
    """
    if _plain_call(q, k, v, out, split_k, copy, layout, backend, is_causal, return_lse):
        try:  # an unhashable scale or precision is not a key: the full path names the argument
            run = _FAST.get(_fast_key(q, k, v, out, is_causal, scale, precision, kv_lens, return_lse))
        except TypeError:
            run = None
        if run is not None:
            return run(q, k, v, out, kv_lens)
    return _sdpa(q, k, v, scale, is_causal, layout, backend, out, kv_lens, split_k, return_lse, copy, precision)


def _sdpa(q, k, v, scale, is_causal, layout, backend, out, kv_lens, split_k, return_lse, copy, precision):
    from sagecore.executor import plan_for
    from sagecore.graph import AttentionRequest, check_precision
    check_precision(precision)
    if not isinstance(backend, str):
        raise InvalidArgumentError("backend", f"expected a string, got {type(backend).__name__}")
    if type(split_k) is not int or split_k < 0:
        raise InvalidArgumentError("split_k", f"expected an integer >= 0, got {split_k!r}")
    is_causal, return_lse = as_flag(is_causal, "is_causal"), as_flag(return_lse, "return_lse")
    qa = as_kv_input(q, "q", layout, copy)
    ka = as_kv_input(k, "k", layout, copy)
    va = as_kv_input(v, "v", layout, copy)
    B, Hq, M, D = qa.shape
    if D == 0:
        raise InvalidArgumentError("q", "expected head_dim >= 1, got 0")
    if ka.shape != va.shape:
        raise InvalidArgumentError("v", f"shape {tuple(va.shape)} differs from k's {tuple(ka.shape)} (BHND)")
    if ka.shape[0] != B or ka.shape[3] != D:
        raise InvalidArgumentError("k", f"expected batch {B} and head_dim {D}, got {tuple(ka.shape)} (BHND)")
    if ka.shape[1] == 0 or Hq % ka.shape[1]:
        raise InvalidArgumentError("q", f"query heads {Hq} must be a multiple of kv heads {ka.shape[1]}")
    if ka.dtype != va.dtype:
        raise InvalidArgumentError("v", f"dtype {va.dtype} differs from k's {ka.dtype}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating))):
        raise InvalidArgumentError("scale", f"expected a number or None, got {type(scale).__name__}")
    sc = float(1.0 / np.sqrt(D) if scale is None else scale)
    if not np.isfinite(sc):
        raise InvalidArgumentError("scale", f"expected a finite number, got {scale!r}")
    out_arr, ret = prepare_out(out, qa.shape, layout)
    if out is not None:
        check_out_overlap(out_arr, qa, ("k", ka), ("v", va))
    if kv_lens is not None:
        kv_lens = as_lengths(kv_lens, B, ka.shape[2])
    req = AttentionRequest(B, Hq, ka.shape[1], M, ka.shape[2], D, kv_source="tensor", kv_dtype=DTYPE_NAMES[ka.dtype],
                           q_dtype=DTYPE_NAMES[qa.dtype], out_dtype=DTYPE_NAMES[out_arr.dtype], causal=is_causal,
                           backend=backend, split_k=split_k, return_lse=return_lse,
                           kv_lens=kv_lens is not None, precision=precision)
    plan = plan_for(req)
    lse = np.empty((B, Hq, M), np.float32) if return_lse else None
    plan.runner(qa, ka, va, out_arr, ka.shape[2], sc, kv_lens, lse)
    if plan.backend == "cpu" and _plain_call(q, k, v, out, split_k, copy, layout, backend, is_causal, return_lse):
        _remember(_fast_key(q, k, v, out, is_causal, scale, precision, kv_lens, return_lse), q, k, plan, sc,
                  return_lse)
    return (ret, lse) if return_lse else ret


def _plain_call(q, k, v, out, split_k, copy, layout, backend, is_causal, return_lse) -> bool:
    """A call sdpa's fast path may serve: numpy arrays in BHND, backend
    "auto", no split_k or copy, flags that are bools (others are validated by
    the full path: the keys compare by equality, and 1.0 == True)."""
    return (not split_k and not copy and layout == "BHND" and backend == "auto"
            and (is_causal is True or is_causal is False) and (return_lse is True or return_lse is False)
            and type(q) is np.ndarray and type(k) is np.ndarray and type(v) is np.ndarray
            and (out is None or type(out) is np.ndarray))


def _fast_key(q, k, v, out, is_causal, scale, precision, kv_lens, return_lse) -> tuple:
    """The key of sdpa's fast-path entries (TypeError if scale or precision is
    unhashable); kv_lens counts by presence only."""
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, is_causal, scale, precision,
            None if out is None else out.dtype, kv_lens is not None, return_lse)


def _remember(key, q, k, plan, sc, return_lse):
    from sagecore.selector import overrides
    if overrides().debug:
        return  # keep logging every decision
    if len(_FAST) > 256:
        _FAST.clear()
    run_plan = plan.runner
    shape = q.shape
    n = k.shape[2]
    empty = np.empty
    f32 = np.float32
    lse_shape = shape[:3]

    def run(q, k, v, out, kv_lens):
        # out has the remembered dtype; the kernel entry checks its strides
        # and writeability, as on the first call; kv_lens is given or not as
        # on the first call, its values are checked at every one
        if out is None:
            o = empty(shape, f32)
        elif out.shape != shape:
            raise InvalidArgumentError("out", f"expected shape {shape} (BHND), got {out.shape}")
        else:
            o = out
            check_out_overlap(o, q, ("k", k), ("v", v))
        if kv_lens is not None:
            kv_lens = as_lengths(kv_lens, shape[0], n)
        lse = empty(lse_shape, f32) if return_lse else None
        run_plan(q, k, v, o, n, sc, kv_lens, lse)
        return (o, lse) if return_lse else o
    _FAST[key] = run
