# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Owning wrappers over the portable C core (csrc/include/sagecore.h).

Layer 2 of three: _csagecore.pxd declares the C API, this module owns
handles and lifetimes, and the pure-Python modules (formats, cache, ...) build
the public API on top. Every call into C releases the GIL.
"""
cimport numpy as cnp
from libc.stdint cimport int64_t, uint16_t, uint64_t

from sagecore._csagecore cimport *

import numpy as np

from sagecore import errors

cnp.import_array()

ABI_VERSION = SC_ABI_VERSION


cdef int check(sc_status status) except -1 nogil:
    """Raise the sagecore exception for a failed status (takes the GIL only then)."""
    if status == SC_OK:
        return 0
    with gil:
        msg = sc_last_error().decode("utf-8", "replace")
        if status == SC_ERR_NONFINITE:
            # sc_attention names the argument first ("q: ...", "k: ...", "v: ...")
            arg, sep, rest = msg.partition(": ")
            if sep and arg in ("q", "k", "v"):
                raise errors.NonFiniteError(arg, rest)
            raise errors.NonFiniteError("values", msg)
        if status == SC_ERR_UNSUPPORTED:
            raise errors.UnsupportedError(msg)
        if status == SC_ERR_NO_MEMORY:
            raise MemoryError(msg)
        raise errors.InvalidArgumentError("core", msg)


cdef int fill_tensor(sc_tensor *t, cnp.ndarray a, str name) except -1:
    if a.ndim != 4:
        raise errors.InvalidArgumentError(name, f"expected a 4-d array [batch, heads, tokens, head_dim], got {a.ndim}-d")
    cdef int itemsize
    cdef int typenum = cnp.PyArray_TYPE(a)
    if typenum == cnp.NPY_FLOAT16:
        t.dtype = SC_DTYPE_F16
        itemsize = 2
    elif typenum == cnp.NPY_FLOAT32:
        t.dtype = SC_DTYPE_F32
        itemsize = 4
    else:
        raise errors.ArgumentTypeError(name, f"dtype must be float16 or float32, got {a.dtype}")
    # nothing of an empty array is read, and numpy may give it zero strides
    cdef bint empty = cnp.PyArray_SIZE(a) == 0
    if not empty and a.shape[3] > 1 and a.strides[3] != itemsize:
        raise errors.InvalidArgumentError(name, "the head_dim axis must be contiguous (stride 1); pass copy=True "
                                          "or np.ascontiguousarray(x)")
    for i in range(3):
        if a.strides[i] % itemsize:
            raise errors.InvalidArgumentError(name, "strides must be multiples of the item size")
    t.ptr = cnp.PyArray_DATA(a)
    t.batch = a.shape[0]
    t.heads = a.shape[1]
    t.tokens = a.shape[2]
    t.dim = a.shape[3]
    t.stride_b = a.strides[0] // itemsize
    t.stride_h = a.strides[1] // itemsize
    t.stride_t = a.strides[2] // itemsize
    return 0


cdef void *ptr_or_null(object a):
    if a is None:
        return NULL
    return cnp.PyArray_DATA(<cnp.ndarray>a)


cdef class PackedStore:
    """One tensor's packed storage (C ``sc_store``) plus its resolved format.

    Holds references to the numpy arrays it points into, so they live as long
    as the store. Built by :class:`sagecore.cache.QuantKVCache`; kernels get
    the C struct directly.
    """
    cdef sc_format fmt
    cdef sc_store st
    cdef readonly object data, scales, zeros, out_idx, out_val, mean

    def __cinit__(self, tuple fmt, data, scales, zeros, out_idx, out_val, mean,
                  int64_t rows, int64_t capacity):
        (self.fmt.encoding, self.fmt.head_dim, self.fmt.token_group, self.fmt.channel_group,
         self.fmt.scale_dtype, self.fmt.zero_point, self.fmt.outliers, self.fmt.rotate,
         self.fmt.smooth, self.fmt.layout) = fmt
        check(sc_format_check(&self.fmt))
        for name, arr in (("data", data), ("scales", scales), ("zeros", zeros),
                          ("out_idx", out_idx), ("out_val", out_val), ("mean", mean)):
            if arr is not None and not (<cnp.ndarray?>arr).flags.c_contiguous:
                raise errors.InvalidArgumentError(name, "store arrays must be C-contiguous")
        self.data, self.scales, self.zeros = data, scales, zeros
        self.out_idx, self.out_val, self.mean = out_idx, out_val, mean
        self.st.data = ptr_or_null(data)
        self.st.scales = ptr_or_null(scales)
        self.st.zeros = ptr_or_null(zeros)
        self.st.out_idx = <uint16_t *>ptr_or_null(out_idx)
        self.st.out_val = <uint16_t *>ptr_or_null(out_val)
        self.st.mean = <float *>ptr_or_null(mean)
        self.st.rows = rows
        self.st.capacity = capacity

    @property
    def capacity(self):
        return self.st.capacity

    def quantize(self, cnp.ndarray src, int64_t t0, bint values_checked=False):
        """Quantize src [B, H, n, D] into tokens [t0, t0+n) (C: sc_quantize_ex).

        values_checked: src already passed check_values(), skip that read pass."""
        cdef sc_tensor t
        cdef unsigned int flags = SC_QUANTIZE_VALUES_CHECKED if values_checked else 0
        fill_tensor(&t, src, "src")
        with nogil:
            check(sc_quantize_ex(&self.fmt, &self.st, &t, t0, flags))

    def dequantize(self, cnp.ndarray dst, int64_t t0):
        """Dequantize tokens [t0, t0+n) into dst [B, H, n, D] (C: sc_dequantize)."""
        cdef sc_tensor t
        fill_tensor(&t, dst, "dst")
        if not dst.flags.writeable:
            raise errors.InvalidArgumentError("dst", "must be writeable")
        with nogil:
            check(sc_dequantize(&self.fmt, &self.st, &t, t0))


cdef object prepare_args(sc_attention_args *a, cnp.ndarray q, cnp.ndarray out, object kv_lens, float scale,
                         bint causal, int split_k, object lse, int precision):
    """The parts of sc_attention_args shared by both entry points. Returns the
    int64 lengths array, which must outlive the call."""
    cdef cnp.ndarray lens_arr = None, lse_arr
    fill_tensor(&a.q, q, "q")
    fill_tensor(&a.out, out, "out")
    if not cnp.PyArray_ISWRITEABLE(out):
        raise errors.InvalidArgumentError("out", "must be writeable")
    a.kv_lens = NULL
    a.lse = NULL
    if kv_lens is not None:
        lens_arr = np.ascontiguousarray(kv_lens, dtype=np.int64)
        if lens_arr.ndim != 1 or lens_arr.shape[0] != q.shape[0]:
            raise errors.InvalidArgumentError("kv_lens", f"expected {q.shape[0]} lengths")
        a.kv_lens = <const int64_t *>cnp.PyArray_DATA(lens_arr)
    if lse is not None:
        lse_arr = lse
        if lse_arr.dtype != np.float32 or not lse_arr.flags.c_contiguous or lse_arr.size != q.shape[0] * q.shape[1] * q.shape[2]:
            raise errors.InvalidArgumentError("lse", "expected a C-contiguous float32 [B, Hq, M] array")
        a.lse = <float *>cnp.PyArray_DATA(lse_arr)
    a.scale = scale
    a.causal = causal
    a.split_k = split_k
    a.precision = precision
    return lens_arr


def attention(cnp.ndarray q, PackedStore k, PackedStore v, cnp.ndarray out, int64_t kv_heads, int64_t kv_len,
              object kv_lens=None, float scale=1.0, bint causal=False, int split_k=0, object lse=None,
              int precision=0):
    """Attention of q [B, Hq, M, D] over the K/V stores into out (C: sc_attention).

    kv_lens: optional int64 [B]; lse: optional C-contiguous float32 [B, Hq, M];
    precision: 0 fp32, 1 bf16 operands allowed, 2 8-bit operands allowed (sc_attention_args.precision)."""
    cdef sc_attention_args a
    keep = prepare_args(&a, q, out, kv_lens, scale, causal, split_k, lse, precision)
    a.kf = &k.fmt
    a.vf = &v.fmt
    a.k = &k.st
    a.v = &v.st
    a.k_tensor = NULL
    a.v_tensor = NULL
    a.kv_heads = kv_heads
    a.kv_len = kv_len
    with nogil:
        check(sc_attention(&a))


def attention_tensors(cnp.ndarray q, cnp.ndarray k, cnp.ndarray v, cnp.ndarray out, object kv_lens=None,
                      float scale=1.0, bint causal=False, int split_k=0, object lse=None, int precision=0):
    """Attention over plain f16/f32 K/V arrays [B, Hkv, N, D] (any strides),
    read in place (C: sc_attention with k_tensor / v_tensor)."""
    cdef sc_attention_args a
    cdef sc_tensor kt, vt
    keep = prepare_args(&a, q, out, kv_lens, scale, causal, split_k, lse, precision)
    fill_tensor(&kt, k, "k")
    fill_tensor(&vt, v, "v")
    a.kf = NULL
    a.vf = NULL
    a.k = NULL
    a.v = NULL
    a.k_tensor = &kt
    a.v_tensor = &vt
    a.kv_heads = k.shape[1]
    a.kv_len = k.shape[2]
    with nogil:
        check(sc_attention(&a))


def attention_auto_splits(int64_t batch, int64_t kv_heads, int64_t q_heads, int64_t q_len, int64_t kv_len):
    return sc_attention_auto_splits(batch, kv_heads, q_heads, q_len, kv_len, sc_num_threads())


def check_values(cnp.ndarray a, str name):
    """Raise NonFiniteError naming `name` if a [B,H,N,D] holds NaN/Inf or |x| > 65504."""
    cdef sc_tensor t
    cdef sc_status st
    fill_tensor(&t, a, name)
    with nogil:
        st = sc_check_values(&t)
    if st != SC_OK:
        raise errors.NonFiniteError(name, sc_last_error().decode("utf-8", "replace"))


def convert(cnp.ndarray src, cnp.ndarray dst):
    """Copy src into dst ([B,H,N,D] each), converting f16/f32 (C: sc_convert)."""
    cdef sc_tensor s, d
    fill_tensor(&s, src, "src")
    fill_tensor(&d, dst, "dst")
    with nogil:
        check(sc_convert(&s, &d))


def rotate(cnp.ndarray x):
    """Rotate a C-contiguous float32 [..., D] array in place (C: sc_rotate_f32)."""
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.writeable:
        raise errors.InvalidArgumentError("x", "must be a writeable C-contiguous float32 array")
    cdef int64_t d = x.shape[x.ndim - 1]
    cdef int64_t n = x.size // d if d else 0
    cdef float *p = <float *>cnp.PyArray_DATA(x)
    with nogil:
        sc_rotate_f32(p, n, d, <int>d)


def rotation_block(int head_dim):
    return sc_rotation_block(head_dim)


def row_bytes(tuple fmt):
    cdef sc_format f
    (f.encoding, f.head_dim, f.token_group, f.channel_group, f.scale_dtype, f.zero_point,
     f.outliers, f.rotate, f.smooth, f.layout) = fmt
    return sc_format_row_bytes(&f)


cdef extern from "sc_internal.h" nogil:
    int sc_cpu_avxvnni_mode()  # 1 AVX-VNNI, 2 its EVEX twin (SAGECORE_AVXVNNI=evex), 0 neither


def cpu_info():
    """Detected CPU features and ISA levels; ``avxvnni``: what the avx2 level's
    integer decode runs on ("vex", "evex-twin" or None)."""
    return {
        "features": sc_cpu_features().decode(),
        "best_isa": sc_isa_name(sc_cpu_best_isa()).decode(),
        "active_isa": sc_isa_name(sc_cpu_active_isa()).decode(),
        "threads": sc_num_threads(),
        "avxvnni": {1: "vex", 2: "evex-twin"}.get(sc_cpu_avxvnni_mode()),
    }


_ISA_BY_NAME = {
    "portable": SC_ISA_PORTABLE, "avx2": SC_ISA_AVX2, "avx512": SC_ISA_AVX512,
    "avx512_vnni": SC_ISA_AVX512_VNNI, "amx": SC_ISA_AMX, "neon": SC_ISA_NEON, "neon_dotprod": SC_ISA_NEON_DOTPROD,
}


def set_isa(str name):
    """Force the ISA level process-wide (for tests and comparisons)."""
    if name not in _ISA_BY_NAME:
        raise errors.InvalidArgumentError("isa", f"expected one of {sorted(_ISA_BY_NAME)}, got {name!r}")
    check(sc_cpu_set_isa(_ISA_BY_NAME[name]))


def supported_isas():
    """ISA names usable on this CPU, slowest first."""
    best = sc_cpu_best_isa()
    out = ["portable"]
    for name, v in _ISA_BY_NAME.items():
        if v != SC_ISA_PORTABLE and v <= best and (v >= SC_ISA_NEON) == (best >= SC_ISA_NEON):
            out.append(name)
    return out


def read_probe(cnp.ndarray a):
    """Read every byte of a C-contiguous array with all threads; returns the
    seconds taken (C: sc_read_probe). For bandwidth reports."""
    import time
    if not a.flags.c_contiguous:
        raise errors.InvalidArgumentError("a", "must be C-contiguous")
    cdef const void *p = cnp.PyArray_DATA(a)
    cdef size_t n = a.nbytes
    cdef uint64_t r
    t0 = time.perf_counter()
    with nogil:
        r = sc_read_probe(p, n)
    return time.perf_counter() - t0


def compute_probe(int64_t n):
    """n float multiply-adds (widest vectors of the active ISA, independent
    chains) on each of the kernels' threads; returns the seconds taken (C:
    sc_compute_probe). For reports of how much vector throughput the threads
    add (sagecore.bench.compute_scaling). Returns (seconds, checksum); the
    checksum is the sum of every thread's result, so it is the thread count
    times one thread's."""
    import time
    if n < 12:
        raise errors.InvalidArgumentError("n", f"expected at least 12 multiply-adds, got {n}")
    cdef double r
    t0 = time.perf_counter()
    with nogil:
        r = sc_compute_probe(n)
    return time.perf_counter() - t0, r


def set_num_threads(int n):
    sc_set_num_threads(n)


def get_num_threads():
    return sc_num_threads()
