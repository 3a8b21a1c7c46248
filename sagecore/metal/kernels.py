"""Host side of the Metal KV packing kernels (``metal/kv_pack.metal``).

A :class:`sagecore.cache.TensorStore` keeps its arrays in host memory, which
on Apple silicon is the GPU's memory too: the kernels read and write those
arrays in place through zero-copy buffers, and their output is the same
bytes the C core would produce (tests/test_metal_kernels.py).

Formats are pipelines: one per (format, source dtype), specialized by the
function constants of ``metal/sc_metal_args.h`` and cached by name.
"""

from __future__ import annotations

import numpy as np

from sagecore import errors
from sagecore.formats import LAYOUTS
from sagecore.metal import device, library

__all__ = ["ARGS_DTYPE", "quantize", "dequantize", "args_for"]

#: sc_kv_pack_args (metal/sc_metal_args.h), field by field
ARGS_DTYPE = np.dtype([
    ("stride_b", "<i8"), ("stride_h", "<i8"), ("stride_t", "<i8"),
    ("heads", "<i4"), ("rows", "<i4"), ("head_dim", "<i4"), ("token_group", "<i4"),
    ("channel_group", "<i4"), ("capacity", "<i4"), ("t0", "<i4"), ("n_tokens", "<i4"),
    ("row_bytes", "<i4"), ("rot_block", "<i4"), ("rot_norm", "<f4"), ("reserved", "<i4"),
])

# function-constant indices (SC_FC_* in sc_metal_args.h)
FC_ENCODING, FC_ZERO_POINT, FC_SCALE_F32, FC_ROTATE, FC_SMOOTH, FC_OUTLIERS, FC_IO_F16, FC_LAYOUT = range(8)
_ERR_NONFINITE, _ERR_RANGE = 0, 1


def rotation(head_dim: int) -> tuple[int, np.float32]:
    """(Hadamard block, 1/sqrt(block)) of head_dim: the C core's sc_rotation_block."""
    from sagecore import _cpu
    b = _cpu.rotation_block(head_dim)
    return b, np.float32(1.0) / np.sqrt(np.float32(b))


def args_for(store, x_shape, strides_elems, t0: int, n: int) -> np.ndarray:
    D = store.head_dim
    a = np.zeros(1, ARGS_DTYPE)
    a["stride_b"], a["stride_h"], a["stride_t"] = strides_elems
    a["heads"], a["rows"], a["head_dim"] = store.heads, store.rows, D
    a["token_group"], a["channel_group"], a["capacity"] = store.T, store.G, store.capacity
    a["t0"], a["n_tokens"], a["row_bytes"] = t0, n, store.row_bytes
    a["rot_block"], a["rot_norm"] = rotation(D)
    return a


def _constants(fmt, io_f16: bool) -> dict:
    return {FC_ENCODING: int(fmt.encoding_id), FC_ZERO_POINT: bool(fmt.zero_point),
            FC_SCALE_F32: fmt.scale_dtype == "fp32", FC_ROTATE: bool(fmt.rotate), FC_SMOOTH: bool(fmt.smooth),
            FC_OUTLIERS: int(fmt.outliers), FC_IO_F16: bool(io_f16), FC_LAYOUT: LAYOUTS[fmt.layout][0]}


def _check(store, x, t0, name):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise errors.ArgumentTypeError(name, "expected a 4-d numpy array [batch, heads, tokens, head_dim]")
    if x.dtype not in (np.float16, np.float32):
        raise errors.ArgumentTypeError(name, f"dtype must be float16 or float32, got {x.dtype}")
    B, H, n, D = x.shape
    if (B * H, D) != (store.rows, store.head_dim):
        raise errors.InvalidArgumentError(name, f"shape {x.shape} does not match the store's "
                                          f"{store.rows} rows of head_dim {store.head_dim}")
    if x.strides[3] != x.itemsize or any(s % x.itemsize for s in x.strides):
        raise errors.InvalidArgumentError(name, "the head_dim axis must be contiguous")
    if t0 < 0 or t0 % store.T or t0 + n > store.capacity:
        raise errors.InvalidArgumentError("t0", f"token range [{t0}, {t0 + n}) must start at a multiple of "
                                          f"{store.T} and fit capacity {store.capacity}")
    return n, tuple(s // x.itemsize for s in x.strides[:3])


def _bind_store(c, dev, store, names, first):
    dummy = dev.buffer(16)
    for i, name in enumerate(names):
        arr = store.arrays.get(name)
        c.set_buffer(first + i, dev.wrap(arr) if arr is not None else dummy)


def _raise_err(err, store):
    if err[_ERR_NONFINITE]:
        raise errors.NonFiniteError("src", "a value is NaN, infinite or beyond the float16 range")
    if err[_ERR_RANGE]:
        raise errors.NonFiniteError("src", "after smoothing/rotation a cell's value range exceeds what fp16 "
                                    "scales and minimums represent (use scale_dtype fp32)")


def quantize(store, x: np.ndarray, t0: int = 0, *, race_check: bool = False) -> float:
    """Quantize ``x`` [B, H, n, D] into tokens [t0, t0+n) of ``store`` on the
    Metal device (C core equivalent: ``sc_quantize``). Returns the GPU time in
    seconds (host emulation: wall time of the dispatches). ``race_check``
    runs each dispatch in two thread orders (host emulation only; ignored on
    a GPU)."""
    n, strides = _check(store, x, t0, "src")
    if n == 0:
        return 0.0
    dev, lib = device(), library("kv_pack")
    D, rows = store.head_dim, store.rows
    consts = _constants(store.fmt, x.dtype == np.float16)
    a = args_for(store, x.shape, strides, t0, n)
    err = np.zeros(2, np.int32)
    if not store.fmt.is_quantized:  # fp16: a rounding copy
        c = dev.command_buffer()
        c.set_pipeline(lib.pipeline("sc_kv_store_f16", consts))
        c.set_buffer(0, dev.wrap(x))
        c.set_buffer(1, dev.wrap(store.arrays["data"]))
        c.set_buffer(2, dev.wrap(err))
        c.set_bytes(3, a)
        c.dispatch((n, rows, 1), (D, 1, 1))
        c.commit()
        c.wait()
        _raise_err(err, store)
        return c.gpu_time()
    xt = dev.buffer(rows * n * D * 4)
    errb = dev.wrap(err)
    c = dev.command_buffer()
    if race_check and dev.info()["emulated"]:  # a host-emulation check; a GPU has no thread order to flip
        c.set_race_check(True)
    c.set_pipeline(lib.pipeline("sc_kv_transform", consts))
    c.set_buffer(0, dev.wrap(x))
    c.set_buffer(1, xt)
    mean = store.arrays.get("mean")
    c.set_buffer(2, dev.wrap(mean) if mean is not None else dev.buffer(16))
    c.set_buffer(3, errb)
    c.set_bytes(4, a)
    c.set_threadgroup_memory(0, D * 4)
    c.dispatch((n, rows, 1), (D, 1, 1))
    c.barrier()
    c.set_pipeline(lib.pipeline("sc_kv_encode", consts))
    c.set_buffer(0, xt)
    _bind_store(c, dev, store, ("data", "scales", "zeros", "out_idx", "out_val"), 1)
    c.set_buffer(6, errb)
    c.set_bytes(7, a)
    ncell = D // store.G
    c.set_threadgroup_memory(0, (2 * D + 2 * ncell) * 4)
    c.set_threadgroup_memory(1, D * 4)
    c.dispatch((-(-n // store.T), rows, 1), (D, 1, 1))
    c.commit()
    c.wait()
    _raise_err(err, store)
    return c.gpu_time()


def dequantize(store, out: np.ndarray, t0: int = 0, *, race_check: bool = False) -> float:
    """Dequantize tokens [t0, t0+n) of ``store`` into ``out`` [B, H, n, D]
    (float16 or float32) on the Metal device (C core: ``sc_dequantize``)."""
    n, strides = _check(store, out, t0, "dst")
    if not out.flags.writeable:
        raise errors.InvalidArgumentError("dst", "must be writeable")
    if n == 0:
        return 0.0
    dev = device()
    c = dev.command_buffer()
    if race_check and dev.info()["emulated"]:  # a host-emulation check; a GPU has no thread order to flip
        c.set_race_check(True)
    encode_dequantize(c, store, dev.wrap(out), out.shape, strides, out.dtype == np.float16, t0, n)
    c.commit()
    c.wait()
    return c.gpu_time()


def encode_dequantize(c, store, dst_buf, dst_shape, dst_strides, dst_f16: bool, t0: int, n: int) -> None:
    """Encode the dequantize pass of ``store`` tokens [t0, t0+n) into command
    buffer ``c``, writing ``dst_buf`` (a [B, H, n, D] tensor with element
    strides ``dst_strides``). Used alone, and as the pre-pass of the Metal
    prefill route that feeds the fp16 attention kernel."""
    dev, lib = device(), library("kv_pack")
    D, rows = store.head_dim, store.rows
    consts = _constants(store.fmt, dst_f16)
    a = args_for(store, dst_shape, dst_strides, t0, n)
    if not store.fmt.is_quantized:
        c.set_pipeline(lib.pipeline("sc_kv_load_f16", consts))
        c.set_buffer(0, dev.wrap(store.arrays["data"]))
        c.set_buffer(1, dst_buf)
        c.set_bytes(2, a)
        c.dispatch((n, rows, 1), (D, 1, 1))
        return
    c.set_pipeline(lib.pipeline("sc_kv_decode", consts))
    _bind_store(c, dev, store, ("data", "scales", "zeros", "out_idx", "out_val", "mean"), 0)
    c.set_buffer(6, dst_buf)
    c.set_bytes(7, a)
    c.set_threadgroup_memory(0, D * 4)
    c.dispatch((-(-n // store.T), rows, 1), (D, 1, 1))


class StoreView:
    """The TensorStore attributes the kernels read, over a C ``PackedStore``
    (what QuantKVCache hands the plan runners) and its format."""

    def __init__(self, packed, fmt, batch: int, heads: int, head_dim: int):
        from sagecore import _cpu
        self.fmt, self.batch, self.heads, self.head_dim = fmt, batch, heads, head_dim
        self.rows = batch * heads
        self.T = fmt.token_group if fmt.is_quantized else 1
        self.G = fmt.resolved_channel_group(head_dim)
        self.capacity = packed.capacity
        self.row_bytes = _cpu.row_bytes(fmt.c_params(head_dim))
        self.arrays = dict(data=packed.data, scales=packed.scales, zeros=packed.zeros, out_idx=packed.out_idx,
                           out_val=packed.out_val, mean=packed.mean)
