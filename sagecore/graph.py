"""The pipeline graph: stages, passes and plans (DESIGN section 5).

Pure Python, no backend imports. A **request** (:class:`AttentionRequest`)
says what to compute; the selector turns it into a **decision** (backend,
path, variant, split count, reasons); :func:`build_plan` turns both into a
**plan**: the ordered passes plus the buffers they bind. Plans are cached by
:class:`PlanCache` under :meth:`AttentionRequest.key` plus the decision, and
executed by a backend's :class:`sagecore.executor.Executor`.

- A *stage* is a logical step: ``tile_load`` (with dequant for a format),
  ``qk``, ``softmax`` (online, base 2), ``pv``, ``split_partial``,
  ``split_reduce``, ``finalize`` (divide by the row sum, undo V's rotation
  and smoothing).
- A *pass* is what a backend dispatches: one kernel fusing some stages, its
  grid (named axes), the buffers it reads and writes.
- A *plan* is the passes in order plus the buffers, including the split-K
  scratch buffers (unnormalized O, row max, row sum per split).

The key length ``kv_len`` is a run-time argument of a plan, not part of its
key: a decode loop whose cache grows by one token per step reuses one plan as
long as the split decision does not change.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

__all__ = ["STAGES", "AttentionRequest", "Decision", "BufferSpec", "Pass", "Plan", "build_plan", "PlanCache",
           "plan_cache"]

STAGES = ("tile_load", "qk", "softmax", "pv", "split_partial", "split_reduce", "finalize")

#: query rows one CPU work item holds (all query heads of a kv head); the C core's ROWS_MAX
CPU_ROWS_MAX = 64
CPU_MX_ROWS_MAX = 256  # csrc/attn/attn_body.h MX_ROWS_MAX (the AMX path)


#: The ``precision`` values a request may carry: the lowest precision the
#: kernels may use for the operands of QK^T and PV (accumulation is always
#: fp32). ``"bf16"`` and ``"int8"`` are permissions, not demands: ``"bf16"``
#: lets the CPU's multi-row paths (AMX, AVX512-BF16) round operands to bf16 and
#: AVX512-VNNI decode take 16-bit integer operands; ``"int8"`` (which includes
#: ``"bf16"``) lets that decode take 8-bit operands over int4 codes
#: (SageAttention's precision class; int8 codes keep 16-bit ones, see
#: docs/architecture.md). Every other path computes as for ``"fp32"``.
PRECISIONS = ("fp32", "bf16", "int8")
#: sc_attention_args.precision of each value
PRECISION_CODES = {"fp32": 0, "bf16": 1, "int8": 2}


def check_precision(precision) -> str:
    if precision not in PRECISIONS:
        from sagecore.errors import InvalidArgumentError
        raise InvalidArgumentError("precision", f"expected one of {PRECISIONS}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class AttentionRequest:
    """What one attention call computes (shapes, formats, options).

    ``k_format`` / ``v_format`` are format ids (``"fp16"``, ``"int8.t32.g1.s16+smooth"``,
    ...); ``kv_source`` is ``"tensor"`` (plain K/V arrays read in place) or ``"store"``
    (a QuantKVCache segment). ``kv_len`` is used for decisions (split-K), not in the key.
    """
    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    k_format: str = "fp16"
    v_format: str = "fp16"
    kv_source: str = "tensor"
    kv_dtype: str = "float16"
    q_dtype: str = "float32"
    out_dtype: str = "float32"
    causal: bool = False
    backend: str = "auto"        # requested: auto, cpu, metal, reference
    split_k: int = 0             # requested: 0 = selector decides
    return_lse: bool = False
    kv_lens: bool = False        # per-batch key lengths given
    precision: str = "fp32"      # lowest operand precision allowed (see PRECISIONS)

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def quantized(self) -> bool:
        return self.k_format != "fp16" or self.v_format != "fp16"

    def key(self) -> tuple:
        return (self.batch, self.q_heads, self.kv_heads, self.q_len, self.head_dim, self.k_format,
                self.v_format, self.kv_source, self.kv_dtype, self.q_dtype, self.out_dtype, self.causal,
                self.backend, self.split_k, self.return_lse, self.kv_lens, self.precision)


@dataclass(frozen=True)
class Decision:
    """The selector's answer: which backend and path run a request, and why."""
    backend: str                 # cpu, metal, reference
    path: str                    # FlashAttention, QuantAttention, SdpaReference
    variant: str                 # decode, prefill
    split_k: int
    reasons: tuple = ()
    declined: tuple = ()         # (backend, reason) pairs of backends that said no

    def explain(self) -> str:
        lines = [f"{self.path} on {self.backend} ({self.variant}, split_k={self.split_k})"]
        lines += [f"  because {r}" for r in self.reasons]
        lines += [f"  not {b}: {r}" for b, r in self.declined]
        return "\n".join(lines)


@dataclass(frozen=True)
class BufferSpec:
    name: str
    role: str                    # input, output, scratch
    shape: tuple
    dtype: str
    note: str = ""


@dataclass(frozen=True)
class Pass:
    name: str
    kernel: str                  # a name that spells out every specialization
    stages: tuple
    grid: tuple                  # ((axis name, size), ...); sizes may be symbolic ("splits")
    reads: tuple
    writes: tuple


@dataclass
class Plan:
    """Ordered passes plus buffers for one request key and decision."""
    request: AttentionRequest
    decision: Decision
    passes: tuple
    buffers: tuple
    runner: object = field(default=None, repr=False, compare=False)  # set by the executor

    @property
    def backend(self) -> str:
        return self.decision.backend

    def describe(self) -> str:
        r, d = self.request, self.decision
        out = [f"plan: {d.path} on {d.backend}, {d.variant}, split_k={d.split_k}",
               f"  request: B={r.batch} Hq={r.q_heads} Hkv={r.kv_heads} M={r.q_len} N=<run time; built at {r.kv_len}> "
               f"D={r.head_dim} "
               f"causal={r.causal} K={r.k_format} V={r.v_format} ({r.kv_source}, q {r.q_dtype}, "
               f"out {r.out_dtype}, precision {r.precision})"]
        out.append("  buffers:")
        for b in self.buffers:
            shape = "x".join(str(s) for s in b.shape)
            out.append(f"    {b.role:7s} {b.name:10s} [{shape}] {b.dtype}" + (f"  ({b.note})" if b.note else ""))
        out.append("  passes:")
        for i, p in enumerate(self.passes):
            grid = " x ".join(f"{a}={n}" for a, n in p.grid)
            out.append(f"    {i}. {p.name}: kernel {p.kernel}")
            out.append(f"       grid {grid}")
            out.append(f"       stages {' -> '.join(p.stages)}")
            out.append(f"       reads {', '.join(p.reads)}; writes {', '.join(p.writes)}")
        if d.reasons:
            out.append("  why:")
            out += [f"    - {x}" for x in d.reasons]
        if d.declined:
            out.append("  declined:")
            out += [f"    - {b}: {why}" for b, why in d.declined]
        return "\n".join(out)


def row_blocking(group: int, q_len: int, head_dim: int = 0) -> tuple[int, int]:
    """(query rows per head per work item, row blocks): all heads of a GQA group
    together, as the C core blocks them (CPU_ROWS_MAX rows; CPU_MX_ROWS_MAX on
    the AMX path, which takes items of more than 16 rows at head dims % 32 == 0)."""
    cap = CPU_ROWS_MAX
    if group * q_len > 16 and head_dim % 32 == 0 and head_dim:
        from sagecore import _cpu
        if _cpu.cpu_info()["active_isa"] == "amx":
            cap = CPU_MX_ROWS_MAX
    mb = max(1, q_len)  # q_len 0: one empty block
    if group * mb > cap:
        mb = max(1, cap // group)
    return mb, -(-q_len // mb)


def kernel_name(r: AttentionRequest, d: Decision, role: str) -> str:
    """e.g. ``attn_decode_part.k=int8.t32.g1.s16+smooth.v=int8.t1.g32.s16.d128.causal``."""
    name = f"attn_{d.variant}_{role}.k={r.k_format}.v={r.v_format}.d{r.head_dim}"
    return name + (".causal" if r.causal else "")


def build_plan(r: AttentionRequest, d: Decision) -> Plan:
    """The passes and buffers for request ``r`` under decision ``d``."""
    B, Hq, Hkv, M, D = r.batch, r.q_heads, r.kv_heads, r.q_len, r.head_dim
    kv = r.kv_dtype if r.kv_source == "tensor" else "packed"
    bufs = [BufferSpec("q", "input", (B, Hq, M, D), r.q_dtype),
            BufferSpec("k", "input", (B, Hkv, "N", D), kv, r.k_format),
            BufferSpec("v", "input", (B, Hkv, "N", D), kv, r.v_format),
            BufferSpec("out", "output", (B, Hq, M, D), r.out_dtype)]
    if r.return_lse:
        bufs.append(BufferSpec("lse", "output", (B, Hq, M), "float32", "natural-log log-sum-exp"))
    if d.path == "SdpaReference":
        passes = (Pass("reference", "sdpa_reference.float64", ("qk", "softmax", "pv", "finalize"),
                       (("batch", B), ("q_heads", Hq)), ("q", "k", "v"), ("out",)),)
        bufs.append(BufferSpec("scores", "scratch", (B, Hq, M, "N"), "float64", "materialized"))
        return Plan(r, d, passes, tuple(bufs))
    if d.backend == "metal":
        from sagecore.metal.attention import row_blocks as metal_row_blocks
        mb, nrb = metal_row_blocks(r.group, M, d.variant)
    else:
        mb, nrb = row_blocking(r.group, M, r.head_dim)
    rows = r.group * mb
    load_k = f"tile_load[{r.k_format}]"
    load_v = f"tile_load[{r.v_format}]"
    grid = (("batch", B), ("kv_heads", Hkv), ("row_blocks", nrb))
    writes = ("out", "lse") if r.return_lse else ("out",)
    pre = ()
    reads = ("q", "k", "v")
    if d.variant == "prefill-dequant":
        # K/V dequantized to fp16 tensors first; the attention passes read those
        bufs.append(BufferSpec("k16", "scratch", (B, Hkv, "N", D), "float16", "dequantized K"))
        bufs.append(BufferSpec("v16", "scratch", (B, Hkv, "N", D), "float16", "dequantized V"))
        pre = (Pass("dequantize_kv", f"kv_decode.k={r.k_format}.v={r.v_format}.d{D}",
                    (load_k, load_v), (("batch", B), ("kv_heads", Hkv), ("token_groups", "N/T")), ("k", "v"),
                    ("k16", "v16")),)
        load_k = load_v = "tile_load[fp16]"
        reads = ("q", "k16", "v16")
    core = (load_k, "qk", "softmax", load_v, "pv")
    if d.split_k > 1:
        S = d.split_k
        items = B * Hkv * nrb
        bufs.append(BufferSpec("part_o", "scratch", (items, S, rows, D), "float32", "unnormalized O per split"))
        bufs.append(BufferSpec("part_ml", "scratch", (items, S, rows, 2), "float32", "row max, row sum per split"))
        passes = pre + (Pass("split_part", kernel_name(r, d, "part"), core + ("split_partial",),
                             grid + (("splits", S),), reads, ("part_o", "part_ml")),
                        Pass("split_reduce", kernel_name(r, d, "reduce"), ("split_reduce", "finalize"), grid,
                             ("part_o", "part_ml") + (("q",) if r.return_lse else ()), writes))
    else:
        passes = pre + (Pass("attention", kernel_name(r, d, "fused"), core + ("finalize",), grid, reads,
                             writes),)
    return Plan(r, d, passes, tuple(bufs))


class PlanCache:
    """Thread-safe LRU of plans keyed by (request key, decision)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, r: AttentionRequest, d: Decision, build=build_plan) -> Plan:
        key = (r.key(), d.backend, d.path, d.variant, d.split_k)
        with self._lock:
            plan = self._d.get(key)
            if plan is not None:
                self._d.move_to_end(key)
                self.hits += 1
                return plan
            self.misses += 1
        plan = build(r, d)
        with self._lock:
            # another thread may have built the same plan meanwhile: keep the first
            plan = self._d.setdefault(key, plan)
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._d)


#: the process-wide plan cache
plan_cache = PlanCache()
