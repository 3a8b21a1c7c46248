"""QuantKVCache: a quantized K/V cache driven by a policy.

Storage (what the kernels consume) is one :class:`TensorStore` per tensor and
per *segment*, a set of kv heads that share one (K format, V format) pair;
most policies give a single segment with every head. Each store holds the C
``sc_store`` arrays for ``[batch * heads, capacity]`` tokens (see
csrc/include/sagecore.h for the exact layout).

Appending and chunking. Values enter the cache's value space, IEEE float16.
A scale cell spans ``token_group`` tokens, so the newest group may be partial:
its raw fp16 values are kept in a small staging buffer and the group is
re-quantized from them when more tokens arrive. Every group is therefore
quantized from exactly the same values whatever the chunking, and appending in
any chunking gives bitwise the same store as one big append.

The fp16 phase. While the cache holds fewer than ``warmup`` tokens --
``max(min_kv_len, smooth_window if any format smooths)``, rounded up to the
token groups -- it keeps plain fp16 K/V and attention takes the fp16 path.
When it reaches ``warmup`` the smoothing means are fixed from the first
``smooth_window`` tokens (any fixed vector keeps softmax exact) and the
buffered tokens are quantized.
"""

from __future__ import annotations

import json
import math
import os
import struct
import threading
from binascii import crc32

import numpy as np

from sagecore import _cpu
from sagecore._arrays import DTYPE_NAMES, as_flag, as_kv_input, as_lengths, check_out_overlap, prepare_out
from sagecore.errors import ArgumentTypeError, CorruptFileError, FormatError, InvalidArgumentError, NonFiniteError
from sagecore.formats import HEADER_SIZE, KVFormat
from sagecore.policy import Policy, load_policy, policy_from_dict

__all__ = ["QuantKVCache", "TensorStore"]

_FILE_MAGIC = b"SCKVCACH"
_FILE_VERSION = 1
_FILE_HEAD = struct.Struct("<8sHHQI")  # magic, version, reserved, json_len, json_crc


def _env_backend():
    from sagecore.selector import overrides
    return overrides().backend


def _plain_call(q, out, split_k, copy, layout, backend, is_causal, return_lse) -> bool:
    """A call QuantKVCache.attend's fast path may serve: numpy q/out in BHND,
    backend "auto", no split_k or copy, flags that are bools (others are
    validated by the full path)."""
    return (type(split_k) is int and split_k == 0 and not copy and layout == "BHND" and backend == "auto"
            and type(q) is np.ndarray and (out is None or type(out) is np.ndarray)
            and (is_causal is True or is_causal is False) and (return_lse is True or return_lse is False))


def _fast_key(q, out, is_causal, scale, precision, kv_lens, return_lse) -> tuple:
    """The key of attend's fast-path entries (TypeError if scale or precision is
    unhashable). kv_lens counts by presence only: its values change every step."""
    return (q.shape, q.dtype, None if out is None else out.dtype, is_causal, scale, precision, kv_lens is not None,
            return_lse)


def _lcm(a, b):
    return a * b // math.gcd(a, b)


def _round_up(x, m):
    return -(-x // m) * m


class TensorStore:
    """Packed storage of one tensor (K or V) for one segment of heads.

    Attributes:
        fmt: the :class:`KVFormat`.
        arrays: the named numpy arrays (``data``, ``scales``, ``zeros``,
            ``out_idx``, ``out_val``, ``mean``, ``stage``), None where unused.
        packed: the :class:`sagecore._cpu.PackedStore` over them.
    """

    def __init__(self, fmt: KVFormat, batch: int, heads: int, head_dim: int, capacity: int, arrays=None):
        self.fmt = fmt
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.rows = batch * heads
        self.params = fmt.c_params(head_dim)
        self.T = fmt.token_group if fmt.is_quantized else 1
        self.G = fmt.resolved_channel_group(head_dim)
        self.row_bytes = _cpu.row_bytes(self.params)
        self.capacity = capacity
        if arrays is None:
            arrays = self._allocate(capacity)
        else:
            for name, spec in self._shapes(capacity).items():
                a = arrays.get(name)
                if (spec is None) != (a is None) or (a is not None and (a.shape != spec[0] or a.dtype != spec[1])):
                    raise ValueError(f"buffer {name!r} has the wrong shape or dtype for {fmt.format_id}")
        self.arrays = arrays
        self._rebuild()

    def _shapes(self, capacity):
        f, rows, D = self.fmt, self.rows, self.head_dim
        groups = capacity // self.T
        ncell = D // self.G
        sdt = np.float16 if f.scale_dtype == "fp16" else np.float32
        q = f.is_quantized
        return {
            "data": ((rows, capacity, self.row_bytes), np.uint8),
            "scales": ((rows, groups, ncell), sdt) if q else None,
            "zeros": ((rows, groups, ncell), sdt) if q and f.zero_point else None,
            "out_idx": ((rows, groups, ncell, f.outliers), np.uint16) if q and f.outliers else None,
            "out_val": ((rows, groups, ncell, f.outliers), np.uint16) if q and f.outliers else None,
            "mean": ((rows, D), np.float32) if f.smooth else None,
            "stage": ((self.batch, self.heads, self.T, D), np.float16) if self.T > 1 else None,
        }

    def _allocate(self, capacity):
        out = {}
        for name, spec in self._shapes(capacity).items():
            out[name] = None if spec is None else np.zeros(spec[0], dtype=spec[1])
        return out

    def _rebuild(self):
        a = self.arrays
        self.packed = _cpu.PackedStore(self.params, a["data"], a["scales"], a["zeros"], a["out_idx"],
                                       a["out_val"], a["mean"], self.rows, self.capacity)

    def grow(self, capacity: int, used: int):
        """Reallocate for ``capacity`` tokens, keeping the first ``used`` tokens."""
        new = self._allocate(capacity)
        groups = _round_up(used, self.T) // self.T
        for name, arr in self.arrays.items():
            if arr is None:
                continue
            if name == "data":  # whole token groups: a k16 block interleaves its tokens' bytes
                new[name][:, :groups * self.T] = arr[:, :groups * self.T]
            elif name in ("scales", "zeros", "out_idx", "out_val"):
                new[name][:, :groups] = arr[:, :groups]
            else:
                new[name][...] = arr
        self.arrays = new
        self.capacity = capacity
        self._rebuild()

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values() if a is not None)

    def set_mean(self, first_tokens: np.ndarray):
        """Fix the smoothing vector from fp16 tokens [B, H, n, D] (mean over n, in float64)."""
        m = first_tokens.astype(np.float64).mean(axis=2).astype(np.float32)
        self.arrays["mean"][...] = m.reshape(self.rows, self.head_dim)

    def append(self, x: np.ndarray, length: int):
        """Quantize x [B, H, n, D] as tokens [length, length + n). Raises
        NonFiniteError (store content past ``length`` unspecified) on bad values."""
        T, n = self.T, x.shape[2]
        r = length % T
        pos = 0
        if r:
            take = min(n, T - r)
            grp = np.empty((self.batch, self.heads, r + take, self.head_dim), np.float16)
            grp[:, :, :r] = self.arrays["stage"][:, :, :r]
            with np.errstate(over="ignore"):  # out-of-range values: NonFiniteError from quantize
                grp[:, :, r:] = x[:, :, :take]
            self.packed.quantize(grp, length - r)
            if r + take < T:
                self.arrays["stage"][:, :, r:r + take] = grp[:, :, r:]
            pos = take
        if pos < n:
            rest = x[:, :, pos:]
            self.packed.quantize(rest, length + pos)
            tail = (length + n) % T
            if tail:
                self.arrays["stage"][:, :, :tail] = rest[:, :, rest.shape[2] - tail:]

    def restore_open_group(self, length: int):
        """Re-quantize the partial group at ``length`` from its staged fp16 values."""
        r = length % self.T
        if r:
            self.packed.quantize(np.ascontiguousarray(self.arrays["stage"][:, :, :r]), length - r, True)

    def dequantize_into(self, out: np.ndarray, length: int):
        self.packed.dequantize(out[:, :, :length], 0)


def _as_path(path) -> str:
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise ArgumentTypeError("path", f"expected a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    return os.fsdecode(p)


class _Segment:
    __slots__ = ("heads", "head_slice", "k", "v")

    def __init__(self, heads, k, v):
        self.heads = tuple(heads)
        h0, h1 = self.heads[0], self.heads[-1] + 1
        self.head_slice = slice(h0, h1) if self.heads == tuple(range(h0, h1)) else None
        self.k, self.v = k, v

    def take(self, x):
        return x[:, self.head_slice] if self.head_slice is not None else x[:, list(self.heads)]


class QuantKVCache:
    """A K/V cache stored in the formats a policy prescribes.

    Args:
        policy: anything :func:`sagecore.load_policy` accepts.
        batch, kv_heads, head_dim: the cached tensors are ``[batch, kv_heads, n, head_dim]``.
        capacity: tokens to allocate up front; the cache grows past it.
        layer: model layer index, for per-layer policy overrides.

    Raises:
        InvalidArgumentError, PolicyError: bad sizes, or a policy whose formats
            cannot store ``head_dim``.
    """

    def __init__(self, policy, *, batch: int, kv_heads: int, head_dim: int, capacity: int = 1024,
                 layer: int = 0):
        for name, val, lo in (("batch", batch, 1), ("kv_heads", kv_heads, 1), ("head_dim", head_dim, 16),
                              ("capacity", capacity, 0), ("layer", layer, 0)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < lo:
                raise InvalidArgumentError(name, f"expected an integer >= {lo}, got {val!r}")
        self.policy: Policy = load_policy(policy)
        self.policy.check_head_dim(int(head_dim))
        self.batch, self.kv_heads, self.head_dim = int(batch), int(kv_heads), int(head_dim)
        self.layer = int(layer)
        self._lock = threading.RLock()
        self._len = 0
        self._fast: dict = {}  # attend's fast path: see _remember
        pairs = self.policy.head_formats(self.layer, self.kv_heads)
        groups: dict = {}
        for h, pair in enumerate(pairs):
            groups.setdefault(pair, []).append(h)
        self._unit = 1
        for kf, vf in groups:
            for f in (kf, vf):
                if f.is_quantized:
                    self._unit = _lcm(self._unit, f.token_group)
        smooths = any(f.smooth for pair in groups for f in pair)
        warm = max(self.policy.min_kv_len, self.policy.smooth_window if smooths else 0)
        self.warmup = _round_up(warm, self._unit) if warm else 0
        cap = _round_up(max(int(capacity), self.warmup, self._unit), self._unit)
        self._segments = [
            _Segment(heads, TensorStore(kf, self.batch, len(heads), self.head_dim, cap),
                     TensorStore(vf, self.batch, len(heads), self.head_dim, cap))
            for (kf, vf), heads in groups.items()
        ]
        self._capacity = cap
        shape = (self.batch, self.kv_heads, self.warmup, self.head_dim)
        self._fp16 = (np.zeros(shape, np.float16), np.zeros(shape, np.float16)) if self.warmup else None

    # ---------------------------------------------------------- properties
    def __len__(self) -> int:
        return self._len

    def __repr__(self):
        return (f"QuantKVCache(policy={self.policy.name!r}, batch={self.batch}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, len={self._len}, capacity={self._capacity}, "
                f"phase={'fp16' if self.in_fp16_phase else 'quantized'})")

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_fp16_phase(self) -> bool:
        """True while the cache is shorter than :attr:`warmup` and holds plain fp16."""
        return self._fp16 is not None

    @property
    def formats(self) -> list:
        """``[(heads, k_format, v_format)]`` per segment."""
        return [(s.heads, s.k.fmt, s.v.fmt) for s in self._segments]

    @property
    def nbytes(self) -> int:
        """Exact bytes of every buffer the cache holds (codes, scales, minimums,
        outlier tables, smoothing vectors, staging and fp16-phase buffers)."""
        n = sum(s.k.nbytes + s.v.nbytes for s in self._segments)
        if self._fp16 is not None:
            n += self._fp16[0].nbytes + self._fp16[1].nbytes
        return n

    def bits_per_element(self) -> float:
        """Average stored bits per K/V element in the steady state (side tables included)."""
        tot = 0.0
        for s in self._segments:
            tot += len(s.heads) * (s.k.fmt.bits_per_element(self.head_dim) + s.v.fmt.bits_per_element(self.head_dim))
        return tot / (2 * self.kv_heads)

    # -------------------------------------------------------------- append
    def append(self, k, v, *, layout: str = "BHND") -> None:
        """Append ``n`` tokens. ``k``, ``v``: ``[batch, kv_heads, n, head_dim]`` (or BNHD),
        float16 or float32, numpy or DLPack. All-or-nothing: on any error the
        cache is unchanged.

        Raises:
            ArgumentTypeError: wrong dtype or type.
            InvalidArgumentError: wrong rank, batch, head count, head_dim, or
                mismatched k/v token counts.
            NonFiniteError: NaN, infinity, or a value outside the float16 range.
        """
        k = as_kv_input(k, "k", layout)
        v = as_kv_input(v, "v", layout)
        want = (self.batch, self.kv_heads)
        for name, x in (("k", k), ("v", v)):
            if x.shape[:2] != want:
                raise InvalidArgumentError(name, f"expected batch {self.batch} and {self.kv_heads} kv heads "
                                                 f"([batch, kv_heads, n, head_dim] in BHND), got shape {x.shape}")
            if x.shape[3] != self.head_dim:
                raise InvalidArgumentError(name, f"expected head_dim {self.head_dim}, got {x.shape[3]}")
        if k.shape[2] != v.shape[2]:
            raise InvalidArgumentError("v", f"has {v.shape[2]} tokens but k has {k.shape[2]}")
        if k.shape[2] == 0:
            return
        with self._lock:
            if self._fp16 is not None:
                # fp16-phase tokens are copied, not quantized: validate up front
                _cpu.check_values(k, "k")
                _cpu.check_values(v, "v")
            self._append_locked(k, v)

    def _append_locked(self, k, v):
        n = k.shape[2]
        L = self._len
        if self._fp16 is not None:
            take = min(n, self.warmup - L)
            self._fp16[0][:, :, L:L + take] = k[:, :, :take]
            self._fp16[1][:, :, L:L + take] = v[:, :, :take]
            L += take
            if L == self.warmup:
                self._leave_fp16_phase()
            self._len = L
            if take == n:
                return
            k, v = k[:, :, take:], v[:, :, take:]
            n -= take
        need = L + n
        if need > self._capacity:
            self._grow(max(2 * self._capacity, _round_up(need, self._unit)))
        try:
            # the quantizer validates values in the same pass as it reads them
            for s in self._segments:
                s.k.append(s.take(k), L)
                s.v.append(s.take(v), L)
        except BaseException as e:
            # Tokens past L are invisible, but an open group may have been
            # re-quantized with the new tokens: restore it from its staging.
            for s in self._segments:
                s.k.restore_open_group(L)
                s.v.restore_open_group(L)
            if isinstance(e, NonFiniteError):
                # name the argument and the element (error path only)
                _cpu.check_values(k, "k")
                _cpu.check_values(v, "v")
            raise
        self._len = need

    def _leave_fp16_phase(self):
        fk, fv = self._fp16
        W = self.warmup
        sw = min(self.policy.smooth_window, W)
        for s in self._segments:
            for store, buf in ((s.k, fk), (s.v, fv)):
                part = s.take(buf)
                if store.fmt.smooth:
                    store.set_mean(part[:, :, :sw])
                store.append(part, 0)
        self._fp16 = None

    def _grow(self, capacity):
        for s in self._segments:
            s.k.grow(capacity, self._len)
            s.v.grow(capacity, self._len)
        self._capacity = capacity

    # ---------------------------------------------------------- read back
    def dequantize(self, dtype=np.float32):
        """``(k, v)`` as ``[batch, kv_heads, len, head_dim]`` arrays of ``dtype``
        (float32 or float16): what attention over this cache sees."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float16, np.float32):
            raise InvalidArgumentError("dtype", f"expected float16 or float32, got {dtype}")
        with self._lock:
            L = self._len
            if self._fp16 is not None:
                return self._fp16[0][:, :, :L].astype(dtype), self._fp16[1][:, :, :L].astype(dtype)
            shape = (self.batch, self.kv_heads, L, self.head_dim)
            ko, vo = np.empty(shape, dtype), np.empty(shape, dtype)
            for s in self._segments:
                for store, out in ((s.k, ko), (s.v, vo)):
                    if s.head_slice is not None:
                        store.dequantize_into(out[:, s.head_slice], L)
                    else:
                        tmp = np.empty((self.batch, len(s.heads), L, self.head_dim), dtype)
                        store.dequantize_into(tmp, L)
                        out[:, list(s.heads)] = tmp
            return ko, vo

    # ----------------------------------------------------------- attention
    def attend(self, q, *, scale=None, is_causal=True, layout="BHND", kv_lens=None, split_k=0,
               out=None, return_lse=False, backend="auto", copy=False, precision=None):
        """Attention of ``q`` over the cache.

        The selector (:mod:`sagecore.selector`) routes the call: FlashAttention
        while the cache is in its fp16 phase or holds fp16, QuantAttention over
        quantized formats, the float64 reference only with ``backend="reference"``.

        Args:
            q: ``[batch, q_heads, M, head_dim]`` (or BNHD), float16/float32,
                numpy or DLPack; ``q_heads`` a multiple of ``kv_heads``.
            scale: softmax scale, default ``1/sqrt(head_dim)``.
            is_causal: right-aligned causal mask (row i of M sees keys
                ``j <= len - M + i``), the decode / chunked-prefill convention.
            kv_lens: optional per-batch key counts (<= len(cache)).
            split_k: 0 lets the selector decide, 1 disables, n forces n key splits.
            out: optional float32/float16 array shaped like q (in ``layout``).
            return_lse: also return the natural-log log-sum-exp ``[B, Hq, M]``.
            backend: ``"auto"``, ``"cpu"``, ``"metal"`` or ``"reference"``.
            copy: allow copying a q that cannot be used in place.
            precision: ``None`` (default: the policy's ``precision``, the
                lowest at which its accuracy targets hold -- ``"bf16"`` for
                the built-in int8, ``"int8"`` for int4, ``"fp32"`` otherwise),
                ``"fp32"``, ``"bf16"`` (operands may be rounded to bf16 / 16-bit
                integers) or ``"int8"`` (8-bit operands where the cache's
                accuracy targets allow: int4 codes); see :func:`sagecore.sdpa`.

        Returns:
            ``out`` (float32 unless ``out`` is given), and the lse if asked.

        Raises:
            InvalidArgumentError, ArgumentTypeError: bad shapes or types.
            NoBackendError: no backend serves the cache's formats at this head_dim.
            NonFiniteError: a NaN/Inf in ``q`` (``argument`` "q"), or scores /
                outputs beyond float32 (float16 for a float16 ``out``).
        """
        if precision is None:
            precision = self.policy.precision
        plain = _plain_call(q, out, split_k, copy, layout, backend, is_causal, return_lse)
        if plain:
            try:  # an unhashable scale or precision is not a key: the full path names the argument
                ent = self._fast.get(_fast_key(q, out, is_causal, scale, precision, kv_lens, return_lse))
            except TypeError:
                ent = None
            if ent is not None:
                got = self._attend_fast(ent, q, out, kv_lens, return_lse)
                if got is not None:
                    return got
        from sagecore.executor import plan_for
        from sagecore.graph import AttentionRequest, check_precision
        check_precision(precision)
        is_causal, return_lse = as_flag(is_causal, "is_causal"), as_flag(return_lse, "return_lse")
        q = as_kv_input(q, "q", layout, copy)
        B, Hq, M, D = q.shape
        if B != self.batch or D != self.head_dim:
            raise InvalidArgumentError("q", f"expected batch {self.batch} and head_dim {self.head_dim}, got shape "
                                            f"{tuple(q.shape)} (BHND)")
        if Hq % self.kv_heads:
            raise InvalidArgumentError("q", f"query heads {Hq} must be a multiple of kv heads {self.kv_heads}")
        if type(split_k) is not int or split_k < 0:
            raise InvalidArgumentError("split_k", f"expected an integer >= 0, got {split_k!r}")
        if not isinstance(backend, str):
            raise InvalidArgumentError("backend", f"expected a string, got {type(backend).__name__}")
        out_arr, ret = prepare_out(out, q.shape, layout)
        if out is not None:
            check_out_overlap(out_arr, q)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating))):
            raise InvalidArgumentError("scale", f"expected a number or None, got {type(scale).__name__}")
        sc = float(1.0 / math.sqrt(D) if scale is None else scale)
        if not math.isfinite(sc):
            raise InvalidArgumentError("scale", f"expected a finite number, got {scale!r}")
        lse = np.empty((B, Hq, M), np.float32) if return_lse else None
        group = Hq // self.kv_heads
        fast = [] if plain else None
        with self._lock:
            L = self._len
            if kv_lens is not None:
                kv_lens = as_lengths(kv_lens, B, L)
            if backend == "reference" or (backend == "auto" and _env_backend() == "reference"):
                segs = None
            elif self._fp16 is not None:
                segs = [(tuple(range(self.kv_heads)), "fp16", "fp16", self._fp16_store(0), self._fp16_store(1))]
            else:
                segs = [(s.heads, s.k.fmt.format_id, s.v.fmt.format_id, s.k.packed, s.v.packed)
                        for s in self._segments]
            if segs is None:
                # the reference runs over the dequantized content, like every parity test
                kd, vd = self.dequantize(np.float32)
                segs = [(tuple(range(self.kv_heads)), "dequantized", "dequantized", kd, vd)]
                source = "tensor"
            else:
                source = "store"
            for heads, kfid, vfid, ks, vs in segs:
                qh = [h * group + g for h in heads for g in range(group)]
                contiguous = qh == list(range(qh[0], qh[-1] + 1))
                sl = slice(qh[0], qh[-1] + 1)
                qs = q[:, sl] if contiguous else np.ascontiguousarray(q[:, qh])
                os_ = out_arr[:, sl] if contiguous else np.empty((B, len(qh), M, D), out_arr.dtype)
                ls = np.empty((B, len(qh), M), np.float32) if lse is not None else None
                req = AttentionRequest(B, len(qh), len(heads), M, L, D, k_format=kfid, v_format=vfid,
                                       kv_source=source, kv_dtype="float32" if source == "tensor" else "packed",
                                       q_dtype=DTYPE_NAMES[q.dtype], out_dtype=DTYPE_NAMES[out_arr.dtype],
                                       causal=bool(is_causal), backend=backend, split_k=split_k,
                                       return_lse=lse is not None, kv_lens=kv_lens is not None, precision=precision)
                plan = plan_for(req)
                plan.runner(qs, ks, vs, os_, L, sc, kv_lens, ls)
                if (fast is not None and contiguous and source == "store" and self._fp16 is None
                        and plan.backend == "cpu"):
                    fast.append((sl, req, {plan.decision.split_k: plan.runner}))
                else:
                    fast = None
                if not contiguous:
                    out_arr[:, qh] = os_
                if lse is not None:
                    lse[:, qh] = ls
            if fast:
                self._remember(_fast_key(q, out, is_causal, scale, precision, kv_lens, return_lse), sc, fast)
        return (ret, lse) if return_lse else ret

    # Fast path of attend for repeated calls of one shape (a decode loop): the
    # selector's requests and the runners per split count are kept per
    # (q shape and dtype, out dtype, is_causal, scale, precision); a call then
    # costs the split decision at the current length and the kernel call, not
    # the request building, routing and plan lookup (~55 us of Python, as much
    # as the kernel of a short decode). Only for plain calls (numpy q/out in
    # BHND, backend "auto", no split_k / copy; kv_lens and lse allowed) over the
    # quantized segments on the CPU; anything else takes the full path.
    # (Remembered only once the fp16 phase is over, which never comes back.)
    def _remember(self, key, sc, segs):
        from sagecore.selector import generation, overrides
        if overrides().debug:
            return  # keep logging every decision
        if len(self._fast) > 64:
            self._fast.clear()
        self._fast[key] = (generation[0], sc, segs)

    def _attend_fast(self, ent, q, out, kv_lens, return_lse):
        """attend through a remembered entry; None after a selector reset."""
        from sagecore.selector import generation, select
        gen, sc, segs = ent
        if gen != generation[0]:
            return None
        if out is None:  # q's shape and dtype are the entry's key
            o = np.empty(q.shape, np.float32)
        elif out.shape != q.shape:
            raise InvalidArgumentError("out", f"expected shape {q.shape} (BHND), got {out.shape}")
        else:
            o = out  # the kernel entry checks its strides and writeability, as on the first call
            check_out_overlap(o, q)
        B, Hq, M, _ = q.shape
        lse = np.empty((B, Hq, M), np.float32) if return_lse else None
        with self._lock:
            L = self._len
            if kv_lens is not None:
                kv_lens = as_lengths(kv_lens, B, L)
            for (sl, req, runners), s in zip(segs, self._segments):
                split = select(req, kv_len=L).split_k
                run = runners.get(split)
                if run is None:
                    from sagecore.executor import plan_for
                    run = runners[split] = plan_for(req, kv_len=L).runner
                whole = sl.stop - sl.start == Hq  # the runner writes a C-contiguous lse of its own heads
                ls = lse if lse is None or whole else np.empty((B, sl.stop - sl.start, M), np.float32)
                run(q[:, sl], s.k.packed, s.v.packed, o[:, sl], L, sc, kv_lens, ls)
                if ls is not None and not whole:
                    lse[:, sl] = ls
        return (o, lse) if return_lse else o

    def _fp16_store(self, which):
        """The fp16-phase buffer of K (0) or V (1) viewed as an fp16 store."""
        buf = self._fp16[which]
        fmt = KVFormat("fp16")
        rows = self.batch * self.kv_heads
        data = buf.reshape(rows, self.warmup, self.head_dim).view(np.uint8)
        return _cpu.PackedStore(fmt.c_params(self.head_dim), data, None, None, None, None, None, rows, self.warmup)

    # ----------------------------------------------------------- save/load
    def _content(self):
        """(name, array) pairs of the stored content only (the first len tokens,
        capacity slack and stale staging excluded): equal for equal content."""
        L = self._len
        out = []
        if self._fp16 is not None:
            return [("fp16.k", self._fp16[0][:, :, :L]), ("fp16.v", self._fp16[1][:, :, :L])]
        for i, s in enumerate(self._segments):
            for t, store in (("k", s.k), ("v", s.v)):
                g = _round_up(L, store.T) // store.T
                for name, arr in store.arrays.items():
                    if arr is None:
                        continue
                    if name == "data":  # k16: whole 16-token blocks (their bytes interleave the tokens')
                        arr = arr[:, :_round_up(L, 16) if store.fmt.layout == "k16" else L]
                    elif name in ("scales", "zeros", "out_idx", "out_val"):
                        arr = arr[:, :g]
                    elif name == "stage":
                        arr = arr[:, :, :L % store.T]
                    out.append((f"seg{i}.{t}.{name}", arr))
        return out

    def save(self, path) -> None:
        """Write the cache to ``path``. The file starts with the K and V format
        descriptor headers of the first segment, then a checksummed JSON header,
        then the stored content (the first ``len`` tokens, no capacity slack) and
        a CRC-32 of it. Written to a temporary file and
        renamed, so a crash never leaves a half-written cache under ``path``."""
        with self._lock:
            seg0 = self._segments[0]
            state = self._content()
            meta = {
                "batch": self.batch, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                "layer": self.layer, "len": self._len,
                "policy": self.policy.to_dict(),
                "segments": [{"heads": list(s.heads), "k": s.k.fmt.to_bytes().hex(),
                              "v": s.v.fmt.to_bytes().hex()} for s in self._segments],
                "arrays": [[name, str(a.dtype), list(a.shape)] for name, a in state],
            }
            blob = json.dumps(meta, sort_keys=True).encode()
            path = _as_path(path)
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as f:
                    f.write(seg0.k.fmt.to_bytes())
                    f.write(seg0.v.fmt.to_bytes())
                    f.write(_FILE_HEAD.pack(_FILE_MAGIC, _FILE_VERSION, 0, len(blob), crc32(blob)))
                    f.write(blob)
                    crc = 0
                    for _, a in state:
                        if a.size == 0:
                            continue
                        mv = memoryview(np.ascontiguousarray(a)).cast("B")
                        crc = crc32(mv, crc)
                        f.write(mv)
                    f.write(struct.pack("<I", crc))
                    f.flush()
                    os.fsync(f.fileno())  # the content is on disk before the rename can be
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    @classmethod
    def load(cls, path) -> "QuantKVCache":
        """Read a cache written by :meth:`save`.

        Raises:
            CorruptFileError: truncated, corrupted, or not a sagecore cache.
            FormatVersionError: written by a newer sagecore.
            ArgumentTypeError: ``path`` is not a str or os.PathLike.
            OSError: the file cannot be opened (missing, a directory, ...).
        """
        path = _as_path(path)
        with open(path, "rb") as f:
            head = f.read(2 * HEADER_SIZE + _FILE_HEAD.size)
            if len(head) < 2 * HEADER_SIZE + _FILE_HEAD.size:
                raise CorruptFileError(f"{path}: truncated header ({len(head)} bytes)")
            try:
                kf = KVFormat.from_bytes(head[:HEADER_SIZE])
                vf = KVFormat.from_bytes(head[HEADER_SIZE:2 * HEADER_SIZE])
            except FormatError as e:
                if type(e).__name__ == "FormatVersionError":
                    raise
                raise CorruptFileError(f"{path}: {e}") from None
            magic, version, _, jlen, jcrc = _FILE_HEAD.unpack_from(head, 2 * HEADER_SIZE)
            if magic != _FILE_MAGIC:
                raise CorruptFileError(f"{path}: not a sagecore cache file (magic {magic!r})")
            if version > _FILE_VERSION:
                from sagecore.errors import FormatVersionError
                raise FormatVersionError(f"{path}: cache file version {version} is newer than this "
                                         f"sagecore reads ({_FILE_VERSION})")
            if jlen > 1 << 26:
                raise CorruptFileError(f"{path}: implausible header length {jlen}")
            blob = f.read(jlen)
            if len(blob) != jlen or crc32(blob) != jcrc:
                raise CorruptFileError(f"{path}: header is truncated or corrupted")
            try:
                meta = json.loads(blob)
                segs = meta["segments"]
                if KVFormat.from_bytes(bytes.fromhex(segs[0]["k"])) != kf or \
                        KVFormat.from_bytes(bytes.fromhex(segs[0]["v"])) != vf:
                    raise CorruptFileError(f"{path}: descriptor headers disagree with the metadata")
                arrays = []
                for name, dt, shape in meta["arrays"]:
                    arrays.append((name, np.empty(shape, dtype=np.dtype(dt))))
            except CorruptFileError:
                raise
            except (ValueError, KeyError, TypeError, IndexError, FormatError) as e:
                raise CorruptFileError(f"{path}: bad metadata ({e})") from None
            crc = 0
            for name, a in arrays:
                if a.size == 0:
                    continue
                mv = memoryview(a).cast("B")
                got = f.readinto(mv)
                if got != a.nbytes:
                    raise CorruptFileError(f"{path}: truncated in buffer {name}")
                crc = crc32(mv, crc)
            tail = f.read(4)
            if len(tail) != 4 or struct.unpack("<I", tail)[0] != crc:
                raise CorruptFileError(f"{path}: payload checksum mismatch (truncated or corrupted)")
            if f.read(1):
                raise CorruptFileError(f"{path}: trailing bytes after the payload")
        try:
            return cls._from_state(meta, dict(arrays))
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptFileError(f"{path}: inconsistent content ({e})") from None

    @classmethod
    def _from_state(cls, meta, arrays):
        """A fresh cache of the saved policy and shape, with the saved content
        copied into the views its own ``_content()`` gives at the saved length."""
        L = meta["len"]
        if not isinstance(L, int) or L < 0:
            raise ValueError("bad length")
        self = cls(policy_from_dict(meta["policy"], source="<saved cache>"), batch=meta["batch"],
                   kv_heads=meta["kv_heads"], head_dim=meta["head_dim"], capacity=max(L, 1), layer=meta["layer"])
        if [list(h) for h, _, _ in self.formats] != [s["heads"] for s in meta["segments"]]:
            raise ValueError("segments do not match the policy")
        self._len = L
        if self._fp16 is not None and L >= self.warmup:
            self._fp16 = None
        views = self._content()
        if [n for n, _ in views] != list(arrays):
            raise ValueError(f"buffers {list(arrays)} do not match the expected {[n for n, _ in views]}")
        for name, view in views:
            a = arrays[name]
            if a.shape != view.shape or a.dtype != view.dtype:
                raise ValueError(f"buffer {name} has the wrong shape or dtype")
            view[...] = a
        return self
