"""Executors: each backend runs plans (:mod:`sagecore.graph`) its own way.

The interface is two verbs. :meth:`Executor.prepare` is called once per plan
(when the plan cache builds it) and attaches ``plan.runner``: whatever makes
later calls cheap (here, a C argument template; on Metal, the cached
pipelines). :meth:`Executor.run` executes a prepared plan on bound buffers.

CPU: the plan's passes -- one fused pass, or ``split_part`` then
``split_reduce`` -- are executed by one ``sc_attention`` call, which runs the
part pass over every (batch, kv head, row block, split) item and then the
reduce pass, with a barrier in between (an OpenMP worksharing loop each).
The split count is the plan's (the selector's decision), never re-decided in
C. Split-K scratch is allocated per call inside the C core, so one plan may
run concurrently from several threads.
"""

from __future__ import annotations

import numpy as np

from sagecore.errors import NonFiniteError, UnsupportedError
from sagecore.graph import PRECISION_CODES

__all__ = ["Executor", "CpuExecutor", "MetalExecutor", "ReferenceExecutor", "executor"]


class Executor:
    """What a backend implements to execute plans."""
    backend = "?"
    #: pass sequences this executor knows how to run
    PASSES = ()

    def prepare(self, plan) -> None:
        names = tuple(p.name for p in plan.passes)
        if names not in self.PASSES:
            raise UnsupportedError(f"{self.backend} executor cannot run passes {names} (knows {self.PASSES})")
        plan.runner = self._compile(plan)

    def _compile(self, plan):
        raise NotImplementedError

    def run(self, plan, q, k, v, out, *, kv_len, scale, kv_lens=None, lse=None):
        """Execute ``plan``: q/out/lse are numpy arrays (BHND views); k/v are
        arrays (``kv_source='tensor'``) or packed stores (``'store'``)."""
        if plan.runner is None:
            self.prepare(plan)
        plan.runner(q, k, v, out, kv_len, scale, kv_lens, lse)


class CpuExecutor(Executor):
    backend = "cpu"
    PASSES = (("attention",), ("split_part", "split_reduce"))

    def _compile(self, plan):
        from sagecore import _cpu
        causal = bool(plan.request.causal)
        split = int(plan.decision.split_k)
        prec = PRECISION_CODES[plan.request.precision]  # sc_attention_args.precision
        if plan.request.kv_source == "tensor":
            f = _cpu.attention_tensors

            def run(q, k, v, out, kv_len, scale, kv_lens, lse):
                f(q, k, v, out, kv_lens, scale, causal, split, lse, prec)
        else:
            f = _cpu.attention
            kvh = plan.request.kv_heads

            def run(q, k, v, out, kv_len, scale, kv_lens, lse):
                f(q, k, v, out, kvh, kv_len, kv_lens, scale, causal, split, lse, prec)
        return run


class MetalExecutor(Executor):
    """The same plans on the Metal device (host emulation off macOS): the
    passes go into one command buffer -- the fused pass, or the split-K part
    pass, a barrier, the reduce pass -- with pipelines from the library cache
    (:mod:`sagecore.metal.attention`)."""
    backend = "metal"
    PASSES = (("attention",), ("split_part", "split_reduce"), ("dequantize_kv", "attention"),
              ("dequantize_kv", "split_part", "split_reduce"))

    def _compile(self, plan):
        from sagecore.metal.attention import make_runner
        return make_runner(plan)


class ReferenceExecutor(Executor):
    """The materialized float64 reference (only ever selected explicitly)."""
    backend = "reference"
    PASSES = (("reference",),)

    def _compile(self, plan):
        from sagecore.reference import sdpa_reference
        causal = bool(plan.request.causal)

        def run(q, k, v, out, kv_len, scale, kv_lens, lse):
            o, ls = sdpa_reference(q, k[:, :, :kv_len], v[:, :, :kv_len], scale=scale, is_causal=causal,
                                   kv_lens=kv_lens, return_lse=True)
            with np.errstate(over="ignore"):
                cast = o.astype(out.dtype)
            if not np.isfinite(cast).all():  # as the CPU's check of a float16 out
                raise NonFiniteError("v", f"the output overflows the {out.dtype} out (inputs are finite)")
            np.copyto(out, cast)
            if lse is not None:
                np.copyto(lse, ls, casting="unsafe")
        return run


_EXECUTORS = {}


def executor(backend: str) -> Executor:
    """The executor of ``backend`` (created on first use)."""
    ex = _EXECUTORS.get(backend)
    if ex is None:
        if backend == "cpu":
            ex = CpuExecutor()
        elif backend == "reference":
            ex = ReferenceExecutor()
        elif backend == "metal":
            ex = MetalExecutor()
        else:
            raise UnsupportedError(f"no executor for backend {backend!r} in this build")
        _EXECUTORS[backend] = ex
    return ex


def plan_for(request, kv_len=None):
    """Select, fetch or build the plan, and prepare it for its backend
    (``kv_len``: see :func:`sagecore.selector.select`)."""
    from sagecore.graph import plan_cache
    from sagecore.selector import select
    d = select(request, kv_len=kv_len)
    plan = plan_cache.get(request, d)
    if plan.runner is None:
        executor(d.backend).prepare(plan)
    return plan
