"""What each backend can consume, without importing or initialising it.

Capabilities are plain data so that the policy loader and the selector can ask
"would backend X take this?" cheaply and give reasons when the answer is no.
"""

from __future__ import annotations


__all__ = ["Capabilities", "capabilities", "BACKENDS"]

BACKENDS = ("cpu", "metal", "reference")

#: Head dims the attention kernels are specialised for.
ATTENTION_HEAD_DIMS = (32, 64, 80, 96, 128, 192, 256)
#: Metal: a lane holds head_dim/32 <= 8 channels; the decode kernel holds <= 8
#: query rows per threadgroup, the prefill kernel <= 32 (so <= 32 query heads per kv head)
METAL_HEAD_DIMS = (32, 64, 80, 96, 128, 192, 256)
METAL_MAX_GROUP = 32
METAL_DECODE_MAX_ROWS = 8
#: Metal prefill of quantized K/V: from this q_len on, dequantize K/V to fp16
#: in a pre-pass and run the fp16 kernel (llama.cpp found that faster on
#: M-series GPUs for M >= 32); below it the kernel dequantizes tiles itself.
#: Not measured on Apple hardware by this project: a threshold to tune on a Mac.
METAL_DEQUANT_MIN_Q_LEN = 32
#: Metal split-K: the parallel width the split rule fills (threadgroups in
#: flight), until a profile measured on a Mac says otherwise
METAL_PARALLEL_GROUPS = 32


class Capabilities:
    """Formats, head dims and features a backend accepts."""

    def __init__(self, name, available, unavailable_reason=None, encodings=("fp16", "int8", "int4"),
                 head_dims=ATTENTION_HEAD_DIMS, options=("smooth", "rotate", "outliers", "zero_point")):
        self.name = name
        self.available = available
        self.unavailable_reason = unavailable_reason
        self.encodings = frozenset(encodings)
        self.head_dims = tuple(head_dims)
        self.options = frozenset(options)
        self.emulated = False
        self.max_group = None

    def why_not_format(self, fmt, head_dim=None):
        """None if the backend can attend over ``fmt`` at ``head_dim``, else the reason."""
        if not self.available:
            return self.unavailable_reason
        if fmt.encoding not in self.encodings:
            return f"{self.name} does not consume {fmt.encoding} codes"
        for opt in ("smooth", "rotate", "zero_point"):
            if getattr(fmt, opt) and opt not in self.options:
                return f"{self.name} does not support {opt}"
        if fmt.outliers and "outliers" not in self.options:
            return f"{self.name} does not support outlier tables"
        if head_dim is not None and self.head_dims and head_dim not in self.head_dims:
            return f"{self.name} kernels support head_dim {list(self.head_dims)}, not {head_dim}"
        return None


def capabilities(name: str) -> Capabilities:
    """Capabilities of backend ``name`` ("cpu", "metal" or "reference")."""
    from sagecore.errors import InvalidArgumentError
    if name == "cpu":
        return Capabilities("cpu", True)
    if name == "reference":
        return Capabilities("reference", True, head_dims=())
    if name == "metal":
        from sagecore import errors, metal
        try:
            info = metal.device().info()
        except errors.MetalError as e:
            return Capabilities("metal", False, f"no Metal device: {e}")
        caps = Capabilities("metal", True, head_dims=METAL_HEAD_DIMS)
        caps.emulated = info["emulated"]
        caps.max_group = METAL_MAX_GROUP
        return caps
    raise InvalidArgumentError("backend", f"expected one of {list(BACKENDS)}, got {name!r}")
