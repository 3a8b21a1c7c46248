"""The selector: which backend and path serve an attention request, and why.

Paths (DESIGN section 6):
- ``FlashAttention``: plain fp16/fp32 K/V (``sdpa``) or an fp16 cache;
- ``QuantAttention``: a cache with quantized K or V;
- ``SdpaReference``: the materialized float64 reference, only when asked
  for with ``backend="reference"``.

Inputs: the request (shapes, formats), each backend's capabilities
(:mod:`sagecore.backends`), the device profile's thresholds
(:mod:`sagecore.profile`: decode/prefill variant, split-K factor) and
overrides. Overrides, strongest first: the call's arguments, then the
environment -- ``SAGECORE_BACKEND`` (cpu, metal, reference: replaces
``backend="auto"``), ``SAGECORE_SPLIT_K`` (an integer, replaces
``split_k=0``) and ``SAGECORE_DEBUG=1`` (log every decision with its reasons
to the ``sagecore.selector`` logger, on stderr if logging is unconfigured).
The environment is read when the selector is first used and again after
:func:`reset`.

There is no implicit fallback: when no backend can serve a request,
:func:`select` raises NoBackendError listing every backend's reason.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

from sagecore.errors import InvalidArgumentError, NoBackendError
from sagecore.graph import AttentionRequest, Decision

__all__ = ["select", "reset", "overrides", "BACKEND_CHOICES"]

BACKEND_CHOICES = ("auto", "cpu", "metal", "reference")
#: the order "auto" tries backends in
AUTO_ORDER = ("metal", "cpu")

log = logging.getLogger("sagecore.selector")

_env = None


class _Overrides:
    __slots__ = ("backend", "split_k", "debug")

    def __init__(self, environ):
        b = environ.get("SAGECORE_BACKEND", "").strip().lower() or None
        if b is not None and b not in BACKEND_CHOICES:
            raise InvalidArgumentError("SAGECORE_BACKEND", f"expected one of {list(BACKEND_CHOICES)}, got {b!r}")
        self.backend = None if b == "auto" else b
        s = environ.get("SAGECORE_SPLIT_K", "").strip()
        if s:
            try:
                self.split_k = int(s)
            except ValueError:
                raise InvalidArgumentError("SAGECORE_SPLIT_K", f"expected an integer >= 0, got {s!r}") from None
            if self.split_k < 0:
                raise InvalidArgumentError("SAGECORE_SPLIT_K", f"expected an integer >= 0, got {s!r}")
        else:
            self.split_k = 0
        self.debug = environ.get("SAGECORE_DEBUG", "").strip() not in ("", "0", "false", "no")
        from sagecore.cpu import check_isa_env
        check_isa_env(environ)


def overrides() -> _Overrides:
    """The environment overrides (read once; :func:`reset` re-reads)."""
    global _env
    if _env is None:
        _env = _Overrides(os.environ)
        if _env.debug and not log.handlers and not logging.getLogger().handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("sagecore: %(message)s"))
            log.addHandler(h)
            log.setLevel(logging.DEBUG)
    return _env


#: bumped by :func:`reset`: fast paths remembered before it (QuantKVCache.attend's) are dropped
generation = [0]


def reset() -> None:
    """Re-read the environment and drop cached plans and fast paths."""
    global _env
    _env = None
    generation[0] += 1
    _routes.clear()
    _decisions.clear()
    from sagecore import attention
    from sagecore.graph import plan_cache
    from sagecore.profile import load_profile
    plan_cache.clear()
    attention._FAST.clear()
    load_profile("cpu", refresh=True)


@functools.lru_cache(maxsize=64)
def _fmt(format_id):
    from sagecore.formats import KVFormat
    return KVFormat.parse(format_id)


def _why_not(backend: str, r: AttentionRequest, auto: bool = False) -> str | None:
    """None if ``backend`` can serve ``r``, else the reason."""
    from sagecore.backends import capabilities
    caps = capabilities(backend)
    if not caps.available:
        return caps.unavailable_reason
    if backend == "reference":
        return None
    if backend == "metal":
        if auto and caps.emulated:
            return ("the Metal device is the host emulation (a correctness tool, slow): used only when asked "
                    "for with backend='metal'")
        if r.return_lse:
            return "the Metal kernels do not return the log-sum-exp yet"
        if caps.max_group and r.group > caps.max_group:
            return f"the Metal kernels hold at most {caps.max_group} query heads per kv head, not {r.group}"
    for which, fid in (("K", r.k_format), ("V", r.v_format)):
        why = caps.why_not_format(_fmt(fid), r.head_dim)
        if why:
            return f"{which} format {fid}: {why}"
    if r.kv_dtype not in ("float16", "float32") and r.kv_source == "tensor":
        return f"K/V dtype {r.kv_dtype} (expected float16 or float32)"
    return None


_routes: dict = {}
_decisions: dict = {}


def select(r: AttentionRequest, profile=None, kv_len=None) -> Decision:
    """Route request ``r``. Raises NoBackendError (with every backend's reason)
    or InvalidArgumentError for a bad override.

    Routing (backend, path, variant) is memoized per request key; the split
    count is recomputed from ``r.kv_len`` (or ``kv_len``, which overrides it:
    a request kept across calls on a growing cache) on every call (cheap
    arithmetic), so a growing cache gets the profile's split decision at each
    length."""
    env = overrides()
    n = r.kv_len if kv_len is None else kv_len
    key = r.key()
    route = _routes.get(key) if profile is None else None
    if route is None:
        route = _route(r, env, profile)
        if profile is None:
            if len(_routes) > 1024:
                _routes.clear()
            _routes[key] = route
    chosen, path, variant, reasons, declined, prof = route
    if chosen == "reference":
        split, why = 1, None
    elif r.split_k:
        split, why = r.split_k, f"split_k={r.split_k} requested"
    elif env.split_k:
        split, why = env.split_k, f"SAGECORE_SPLIT_K={env.split_k}"
    else:
        from sagecore import _cpu
        from sagecore.graph import row_blocking
        _, nrb = row_blocking(r.group, r.q_len, r.head_dim)
        if chosen == "metal":
            from sagecore.backends import METAL_PARALLEL_GROUPS
            from sagecore.metal.attention import row_blocks as metal_row_blocks
            _, nrb = metal_row_blocks(r.group, r.q_len, variant)
            split, why = prof.split_k(r.batch * r.kv_heads * nrb, n, METAL_PARALLEL_GROUPS)
        else:
            split, why = prof.split_k(r.batch * r.kv_heads * nrb, n, _cpu.get_num_threads())
        why = f"split-K: {why} (profile {prof.source})"
        # the reason text names kv_len: memoize decisions per split count only
        dkey = (key, split)
        d = _decisions.get(dkey) if profile is None else None
        if d is not None and not env.debug:
            return d
        d = Decision(chosen, path, variant, split, reasons + (why,), declined)
        if profile is None:
            if len(_decisions) > 4096:
                _decisions.clear()
            _decisions[dkey] = d
        _log(r, d, env)
        return d
    d = Decision(chosen, path, variant, split, reasons + ((why,) if why else ()), declined)
    _log(r, d, env)
    return d


def _route(r, env, profile):
    reasons = []
    requested = r.backend
    if requested not in BACKEND_CHOICES:
        raise InvalidArgumentError("backend", f"expected one of {list(BACKEND_CHOICES)}, got {requested!r}")
    if requested == "auto" and env.backend:
        requested = env.backend
        reasons.append(f"SAGECORE_BACKEND={env.backend}")
    path = "QuantAttention" if r.quantized else "FlashAttention"
    variant_ref = "decode" if r.q_len == 1 else "prefill"
    if requested == "reference":
        reasons.append("backend='reference' asked for the materialized float64 reference")
        return "reference", "SdpaReference", variant_ref, tuple(reasons), (), None
    candidates = AUTO_ORDER if requested == "auto" else (requested,)
    declined = []
    chosen = None
    for b in candidates:
        why = _why_not(b, r, auto=requested == "auto")
        if why is None:
            chosen = b
            break
        declined.append((b, why))
    if chosen is None:
        d = dict(declined)
        d.setdefault("reference", "only used when asked for with backend='reference'")
        if requested != "auto":
            for b in AUTO_ORDER:
                d.setdefault(b, f"not requested (backend={requested!r})")
        raise NoBackendError(f"no backend can run this attention request ({path}, head_dim {r.head_dim}, "
                             f"K {r.k_format}, V {r.v_format})", d)
    if requested == "auto":
        reasons.append(f"{chosen} is the first available backend in {list(AUTO_ORDER)}")
    else:
        reasons.append(f"backend={chosen!r} requested")
    reasons.append(f"K/V formats {r.k_format} / {r.v_format}: {path}"
                   + (" (K/V tiles dequantized on the fly, never a full copy)" if r.quantized else ""))
    if profile is None:
        from sagecore.profile import load_profile
        profile = load_profile("cpu")
    variant = "decode" if r.q_len <= profile.decode_max_q_len else "prefill"
    reasons.append(f"q_len {r.q_len} {'<=' if variant == 'decode' else '>'} decode_max_q_len "
                   f"{profile.decode_max_q_len}: {variant} variant")
    if chosen == "metal":
        from sagecore import backends
        if variant == "decode" and r.group > backends.METAL_DECODE_MAX_ROWS:
            variant = "prefill"
            reasons.append(f"{r.group} query heads per kv head exceed the decode kernel's "
                           f"{backends.METAL_DECODE_MAX_ROWS} rows: the simdgroup-matrix kernel")
        if variant == "prefill" and r.quantized and r.kv_source == "store" \
                and r.q_len >= backends.METAL_DEQUANT_MIN_Q_LEN:
            variant = "prefill-dequant"
            reasons.append(f"q_len {r.q_len} >= METAL_DEQUANT_MIN_Q_LEN {backends.METAL_DEQUANT_MIN_Q_LEN}: "
                           "dequantize K/V to fp16 in a pre-pass, then the fp16 kernel")
    return chosen, path, variant, tuple(reasons), tuple(declined), profile


def _log(r, d, env):
    if env.debug:
        log.debug("B=%d Hq=%d Hkv=%d M=%d N=%d D=%d -> %s", r.batch, r.q_heads, r.kv_heads, r.q_len, r.kv_len,
                  r.head_dim, d.explain())
