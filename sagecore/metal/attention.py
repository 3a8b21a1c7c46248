"""Host side of the Metal attention kernels (``metal/attention.metal``).

:func:`make_runner` turns a plan (request + decision) into a callable with
the CPU runners' signature, ``run(q, k, v, out, kv_len, scale, kv_lens,
lse)``: K/V are numpy tensors (``kv_source="tensor"``) or packed stores
(``"store"``). One call encodes the plan's passes into one command buffer
(the split-K part pass, a barrier, the reduce pass), with the argument struct
set as bytes and pipelines from the library's cache.
"""

from __future__ import annotations

import numpy as np

from sagecore import errors
from sagecore._arrays import raise_nonfinite
from sagecore.formats import LAYOUTS, KVFormat
from sagecore.metal.kernels import rotation

__all__ = ["ATTN_ARGS", "MAX_ROWS", "make_runner", "row_blocks"]

#: sc_attn_args (metal/sc_metal_args.h), field by field; align=True pads like C
ATTN_ARGS = np.dtype([(n, "<i8") for n in ("q_sb", "q_sh", "q_st", "o_sb", "o_sh", "o_st", "k_sb", "k_sh", "k_st",
                                           "v_sb", "v_sh", "v_st")]
                     + [(n, "<i4") for n in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head_dim", "group",
                                             "rows_per_head", "row_blocks", "rows", "splits", "chunk", "causal",
                                             "has_kv_lens")]
                     + [("qscale", "<f4")]
                     + [(n, "<i4") for n in ("k_T", "k_G", "k_cap", "k_row_bytes", "v_T", "v_G", "v_cap",
                                             "v_row_bytes", "rot_block")]
                     + [("rot_norm", "<f4")], align=True)

MAX_ROWS = 8  # SC_ATTN_MAX_ROWS: rows of the decode kernel
#: run every attention dispatch with the host emulation's race check (tests)
RACE_CHECK = False
#: GPU seconds of the last command buffer a runner committed (benchmarks; not thread safe)
LAST_GPU_TIME = 0.0
LOG2E = 1.4426950408889634
_FC = dict(k_enc=10, k_zp=11, k_sf32=12, k_out=13, k_rot=14, v_enc=15, v_zp=16, v_sf32=17, v_out=18, v_rot=19,
           v_smooth=20, kv_f32=21, q_f16=22, o_f16=23, partial=24, k_layout=25, v_layout=26)


MMA_ROWS = 32  # rows of the simdgroup-matrix kernel (4 simdgroups x 8)
MMA_BK = 16  # keys per tile


def row_blocks(group: int, q_len: int, variant: str = "decode") -> tuple[int, int]:
    """(query tokens per row block, row blocks): a threadgroup holds group x mb
    rows, at most MAX_ROWS (decode kernel) or MMA_ROWS (prefill kernels)."""
    cap = MAX_ROWS if variant == "decode" else MMA_ROWS
    mb = max(1, cap // group)
    mb = min(mb, q_len) if q_len else 1
    return mb, -(-q_len // mb) if q_len else 0


def _side(fid: str, source: str, D: int):
    """(encoding, zp, scale f32, outliers, rotate, smooth, T, G, layout) of one side."""
    if source == "tensor":
        return 0, False, False, 0, False, False, 1, D, 0
    f = KVFormat.parse(fid)
    if not f.is_quantized:
        return 1, False, False, 0, False, False, 1, D, 0
    return (int(f.encoding_id), bool(f.zero_point), f.scale_dtype == "fp32", int(f.outliers), bool(f.rotate),
            bool(f.smooth), int(f.token_group), int(f.resolved_channel_group(D)), LAYOUTS[f.layout][0])


def make_runner(plan):
    """The callable that executes ``plan`` on the Metal device."""
    from sagecore.metal import device, library
    r, d = plan.request, plan.decision
    B, Hq, Hkv, M, D = r.batch, r.q_heads, r.kv_heads, r.q_len, r.head_dim
    group = Hq // Hkv
    if group > (MAX_ROWS if d.variant == "decode" else MMA_ROWS):
        raise errors.UnsupportedError(f"the Metal {d.variant} kernel cannot hold {group} query heads per kv head")
    variant = d.variant
    mma = variant != "decode"
    prepass = variant == "prefill-dequant"
    mb, nrb = row_blocks(group, M, variant)
    rows = group * mb
    ks = _side(r.k_format, r.kv_source, D)
    vs = _side(r.v_format, r.kv_source, D)
    if prepass:  # the attention passes read fp16 tensors the pre-pass writes
        kfmt, vfmt = KVFormat.parse(r.k_format), KVFormat.parse(r.v_format)
        ks = vs = _side("fp16", "tensor", D)
    dev, lib = device(), library("attention")
    base = {_FC["k_enc"]: ks[0], _FC["k_zp"]: ks[1], _FC["k_sf32"]: ks[2], _FC["k_out"]: ks[3],
            _FC["k_rot"]: ks[4], _FC["v_enc"]: vs[0], _FC["v_zp"]: vs[1], _FC["v_sf32"]: vs[2],
            _FC["v_out"]: vs[3], _FC["v_rot"]: vs[4], _FC["v_smooth"]: vs[5],
            _FC["k_layout"]: ks[8], _FC["v_layout"]: vs[8],
            _FC["kv_f32"]: r.kv_source == "tensor" and r.kv_dtype == "float32",
            _FC["q_f16"]: r.q_dtype == "float16", _FC["o_f16"]: r.out_dtype == "float16"}
    kname = "sc_attn_mma" if mma else "sc_attn_vec"
    pipes = {partial: lib.pipeline(kname, {**base, _FC["partial"]: partial}) for partial in (False, True)}
    reduce_pipe = lib.pipeline("sc_attn_reduce", {**base, _FC["partial"]: False})
    emulated = dev.info()["emulated"]
    rb_k = {1: 2 * D, 2: D, 3: D // 2}.get(ks[0], 0)
    rb_v = {1: 2 * D, 2: D, 3: D // 2}.get(vs[0], 0)
    rot = rotation(D)
    requested_split = int(d.split_k)
    dummy = dev.buffer(16)

    def strides(a):
        return tuple(s // a.itemsize for s in a.strides[:3])

    def store_bufs(st):
        return [dev.wrap(x) if x is not None else dummy for x in (st.data, st.scales, st.zeros, st.out_idx,
                                                                   st.out_val)]

    def run(q, k, v, out, kv_len, scale, kv_lens, lse):
        if lse is not None:
            raise errors.UnsupportedError("the Metal attention kernels do not return the log-sum-exp yet")
        N = int(kv_len)
        # Non-finite inputs raise, as on the CPU (docs/architecture.md): q is
        # checked here; a NaN/Inf in K or V, or an overflow, reaches the output
        # (p = 2^(NaN - m) is NaN), which is checked after the run.
        if not np.isfinite(q).all():
            raise_nonfinite("q", q)
        c = dev.command_buffer()
        if RACE_CHECK and emulated:
            c.set_race_check(True)
        if prepass:
            # dequantize-to-fp16 pre-pass: K and V of the cache -> [B, Hkv, N, D] halves
            from sagecore.metal.kernels import StoreView, encode_dequantize
            shape = (B, Hkv, N, D)
            st16 = (Hkv * N * D, N * D, D)
            k16, v16 = dev.buffer(max(16, B * Hkv * N * D * 2)), dev.buffer(max(16, B * Hkv * N * D * 2))
            if N:
                for packed, fmt, buf in ((k, kfmt, k16), (v, vfmt, v16)):
                    encode_dequantize(c, StoreView(packed, fmt, B, Hkv, D), buf, shape, st16, True, 0, N)
                c.barrier()
        a = np.zeros(1, ATTN_ARGS)
        a["q_sb"], a["q_sh"], a["q_st"] = strides(q)
        a["o_sb"], a["o_sh"], a["o_st"] = strides(out)
        a["batch"], a["q_heads"], a["kv_heads"], a["q_len"], a["kv_len"] = B, Hq, Hkv, M, N
        a["head_dim"], a["group"], a["rows_per_head"], a["row_blocks"], a["rows"] = D, group, mb, nrb, rows
        tiles = max(1, -(-N // 32))
        S = max(1, min(requested_split, tiles))
        chunk = -(-tiles // S) * 32
        S = max(1, -(-N // chunk)) if N else 1
        a["splits"], a["chunk"] = S, chunk
        a["causal"], a["has_kv_lens"] = int(r.causal), int(kv_lens is not None)
        a["qscale"] = np.float32(scale * LOG2E)
        a["rot_block"], a["rot_norm"] = rot
        if prepass:
            a["k_sb"], a["k_sh"], a["k_st"] = st16
            a["v_sb"], a["v_sh"], a["v_st"] = st16
            kb = [k16] + [dummy] * 4
            vb = [v16] + [dummy] * 4
            mean = dummy
        elif r.kv_source == "tensor":
            a["k_sb"], a["k_sh"], a["k_st"] = strides(k)
            a["v_sb"], a["v_sh"], a["v_st"] = strides(v)
            kb = [dev.wrap(k)] + [dummy] * 4
            vb = [dev.wrap(v)] + [dummy] * 4
            mean = dummy
        else:
            a["k_T"], a["k_G"], a["k_cap"], a["k_row_bytes"] = ks[6], ks[7], k.capacity, rb_k
            a["v_T"], a["v_G"], a["v_cap"], a["v_row_bytes"] = vs[6], vs[7], v.capacity, rb_v
            kb, vb = store_bufs(k), store_bufs(v)
            mean = dev.wrap(v.mean) if vs[5] else dummy
        lens = dev.wrap(np.ascontiguousarray(kv_lens, dtype=np.int64)) if kv_lens is not None else dummy
        qb, ob = dev.wrap(q), dev.wrap(out)
        parts = S > 1
        c.set_pipeline(pipes[parts])
        for i, buf in enumerate([qb, ob] + kb + vb + [mean, lens]):
            c.set_buffer(i, buf)
        items = B * Hkv * nrb
        po = dev.buffer(max(16, items * S * rows * D * 4)) if parts else dummy
        pml = dev.buffer(max(16, items * S * rows * 2 * 4)) if parts else dummy
        c.set_buffer(14, po)
        c.set_buffer(15, pml)
        c.set_bytes(16, a)
        if mma:
            c.set_threadgroup_memory(0, MMA_BK * D * 4)  # K/V tile; Q and output staging
            c.set_threadgroup_memory(1, MMA_ROWS * MMA_BK * 4)  # S / P
            c.set_threadgroup_memory(2, 3 * MMA_ROWS * 4)  # row max, sum, rescale
            c.dispatch((S, Hkv * nrb, B), (128, 1, 1))
        else:
            c.set_threadgroup_memory(0, rows * D * 4)
            c.set_threadgroup_memory(1, rows * 32 * 4)
            c.set_threadgroup_memory(2, D * 4)
            c.dispatch((S, Hkv * nrb, B), (32, 1, 1))
        if parts:
            c.barrier()
            c.set_pipeline(reduce_pipe)
            c.set_threadgroup_memory(2, D * 4)
            c.dispatch((Hkv * nrb, B, 1), (32, 1, 1))
        c.commit()
        c.wait()
        global LAST_GPU_TIME
        LAST_GPU_TIME = c.gpu_time()
        if ob.copied:  # pragma: no cover - Metal refused the wrap (never under emulation)
            src = np.lib.stride_tricks.as_strided(np.frombuffer(ob, out.dtype), out.shape, out.strides)
            np.copyto(out, src)
        if not np.isfinite(out).all():
            if r.kv_source == "tensor":
                raise_nonfinite("k", k[:, :, :N], kv_lens)
                raise_nonfinite("v", v[:, :, :N], kv_lens)
            raise errors.NonFiniteError("v", "the output is not finite: a NaN/Inf in the keys or values (their "
                                             "store or its scales/means), or scores/sums beyond float32")

    return run
