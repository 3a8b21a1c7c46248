"""Input normalisation shared by the public API: arrays, DLPack, layouts.

Turns user input into numpy views without copying whenever the memory allows
it, and raises typed errors naming the argument otherwise.
"""

from __future__ import annotations

import numpy as np

from sagecore.errors import ArgumentTypeError, InvalidArgumentError, NonFiniteError

_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
#: dtype -> its name, for requests: str(dtype) costs ~4 us in numpy 2
DTYPE_NAMES = {np.dtype(np.float16): "float16", np.dtype(np.float32): "float32"}


def as_array(x, name: str) -> np.ndarray:
    """numpy view of ``x`` (numpy array or any ``__dlpack__`` object), never a copy."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, BufferError, RuntimeError) as e:
            raise ArgumentTypeError(name, f"DLPack export failed ({e}); expected CPU memory "
                                          f"of a dtype numpy supports") from None
    raise ArgumentTypeError(name, f"expected a numpy array or an object with __dlpack__, got {type(x).__name__}")


def as_kv_input(x, name: str, layout: str, copy: bool = False) -> np.ndarray:
    """A float16/float32 4-d array viewed as BHND with a contiguous last axis.

    With ``copy=True``, inputs that cannot be used in place (another float
    dtype, a strided head_dim) are copied instead of rejected."""
    a = as_array(x, name)
    if a.ndim != 4:
        raise InvalidArgumentError(name, f"expected a 4-d array in layout {layout}, got shape {a.shape}")
    if a.dtype not in _FLOAT_DTYPES:
        if copy and a.dtype.kind == "f":
            a = a.astype(np.float32)
        else:
            raise ArgumentTypeError(name, f"expected dtype float16 or float32, got {a.dtype}"
                                    + ("" if a.dtype.kind != "f" else "; pass copy=True to convert"))
    if layout == "BNHD":
        a = a.transpose(0, 2, 1, 3)
    elif layout != "BHND":
        raise InvalidArgumentError("layout", f"expected 'BHND' or 'BNHD', got {layout!r}")
    if a.size == 0:  # nothing is read; numpy may give empty arrays zero strides
        return a
    if (a.shape[3] > 1 and a.strides[3] != a.itemsize) or any(s % a.itemsize for s in a.strides):
        if not copy:
            raise InvalidArgumentError(name, "the head_dim axis must be contiguous and strides multiples of the "
                                             "element size; pass copy=True or np.ascontiguousarray(x)")
        a = np.ascontiguousarray(a)
    return a


def prepare_out(out, shape, layout):
    """``(bhnd_view, returned)`` for an attention output of BHND ``shape``: a new
    float32 array, or the caller's ``out`` (float16/float32, in ``layout``)."""
    if out is None:
        arr = np.empty(shape, np.float32)
        return arr, (arr if layout == "BHND" else arr.transpose(0, 2, 1, 3))
    view = as_kv_input(out, "out", layout)
    if view.shape != tuple(shape):
        raise InvalidArgumentError("out", f"expected shape {tuple(shape)} (BHND), got {tuple(view.shape)}")
    if not view.flags.writeable:
        raise InvalidArgumentError("out", "must be writeable")
    return view, out


def _overlap(a, b) -> bool:
    """Whether two arrays share memory: a bounds test first (~0.5 us), then,
    for interleaved views of one buffer, the exact one (a conservative True
    if numpy finds that too hard)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=100000))
    except getattr(np, "exceptions", np).TooHardError:  # numpy < 1.25: np.TooHardError
        return True


def check_out_overlap(out: np.ndarray, q: np.ndarray, *kv) -> None:
    """``out`` may be ``q`` itself (each query row is read before its output
    row is written, by the same work item) or disjoint from the inputs; any
    other overlap would let one item overwrite what another still reads, a
    silently wrong result, so it is an InvalidArgumentError. ``kv``: (name,
    array) pairs."""
    for name, a in kv:
        if _overlap(out, a):
            raise InvalidArgumentError("out", f"overlaps {name}'s memory, which the kernels read while writing "
                                              f"out; pass a separate array")
    if _overlap(out, q) and not (
            out.__array_interface__["data"][0] == q.__array_interface__["data"][0]
            and out.strides == q.strides and out.shape == q.shape and out.dtype == q.dtype):
        raise InvalidArgumentError("out", "overlaps q's memory without being q itself (same data, strides and "
                                          "dtype); pass q itself or a separate array")


def as_lengths(x, batch: int, kv_len: int, name: str = "kv_lens") -> np.ndarray:
    """``x`` as a C-contiguous int64 ``[batch]`` array of key counts in
    ``[0, kv_len]``. Integers only: a fractional, boolean or string length is
    an error, never truncated (``np.asarray(..., dtype=int64)`` would turn
    30.7 into 30 and True into 1)."""
    if isinstance(x, (list, tuple)):  # checked in Python: ~1 us where numpy takes ~4 (attend's fast path)
        for v in x:
            if type(v) is not int and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))):
                raise ArgumentTypeError(name, f"expected integer lengths, got {type(v).__name__} {v!r}")
        if len(x) != batch:
            raise InvalidArgumentError(name, f"expected {batch} lengths (one per batch item), got {len(x)}")
        if batch and (min(x) < 0 or max(x) > kv_len):
            raise InvalidArgumentError(name, f"expected lengths in [0, {kv_len}], got {list(x)}")
        return np.array(x, dtype=np.int64)
    if not (isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")):
        raise ArgumentTypeError(name, f"expected a sequence or array of {batch} integers, got {type(x).__name__}")
    a = as_array(x, name)
    if a.dtype.kind not in "iu":
        raise ArgumentTypeError(name, f"expected an integer dtype, got {a.dtype}")
    if a.shape != (batch,):
        raise InvalidArgumentError(name, f"expected {batch} lengths (one per batch item), got shape {a.shape}")
    if batch and (a.min() < 0 or a.max() > kv_len):
        raise InvalidArgumentError(name, f"expected lengths in [0, {kv_len}], got {a.tolist()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def as_flag(x, name: str) -> bool:
    """A yes/no argument: a bool (numpy's too) or the integers 0 and 1. Anything
    else is an error rather than its truthiness: ``is_causal="false"`` must not
    mean causal."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)) and x in (0, 1):
        return bool(x)
    raise ArgumentTypeError(name, f"expected True or False, got {type(x).__name__} {x!r}")


# What a non-finite element of each argument is, in the errors below (the C
# core words its SC_ERR_NONFINITE messages the same way: csrc/attn/attention.c).
_WHAT = {"q": "(queries must be finite)", "k": "of a visible key (keys must be finite)",
         "v": "of a visible value (values must be finite)"}


def first_nonfinite(a: np.ndarray, lens=None):
    """``(b, h, t, c, value)`` of the first non-finite element of the BHND
    array ``a`` among tokens ``< lens[b]`` (all tokens if ``lens`` is None),
    in (batch, head, token, channel) order; None if there is none."""
    for b in range(a.shape[0]):
        x = a[b] if lens is None else a[b, :, :int(lens[b])]
        bad = ~np.isfinite(x)
        if bad.any():
            h, t, c = (int(i) for i in np.argwhere(bad)[0])
            return b, h, t, c, float(x[h, t, c])
    return None


def raise_nonfinite(name: str, a: np.ndarray, lens=None) -> None:
    """NonFiniteError naming ``name`` and its first non-finite element, if any."""
    hit = first_nonfinite(a, lens)
    if hit is not None:
        b, h, t, c, x = hit
        raise NonFiniteError(name, f"element [batch {b}, head {h}, token {t}, channel {c}] = {x} {_WHAT[name]}")
