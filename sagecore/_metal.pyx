# cython: language_level=3, boundscheck=False, wraparound=False
"""Owning wrappers over the Metal shim (objc_shim/sagecore_metal.h).

Layer 2 of three: _csagecore_metal.pxd declares the C API verbatim, this
module owns handles and lifetimes, and sagecore.metal builds on it. The C
side is the Objective-C shim on macOS and the host emulation elsewhere
(``backend_name()``). Failed calls raise the sagecore.errors.Metal* classes.
"""
from cpython.buffer cimport (PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release,
                             PyObject_GetBuffer)
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.string cimport memcpy

from sagecore._csagecore_metal cimport *

import numpy as np

from sagecore import errors

ABI_VERSION = SC_MTL_ABI_VERSION


cdef int check(sc_mtl_status status) except -1 nogil:
    """Raise the typed exception for a failed status (takes the GIL only then)."""
    if status == SC_MTL_OK:
        return 0
    with gil:
        msg = sc_mtl_last_error().decode("utf-8", "replace")
        if status == SC_MTL_ERR_COMPILE:
            raise errors.MetalCompileError(msg, sc_mtl_last_compile_log().decode("utf-8", "replace"))
        if status == SC_MTL_ERR_UNAVAILABLE:
            raise errors.MetalUnavailableError(msg)
        if status == SC_MTL_ERR_NOT_FOUND:
            raise errors.MetalFunctionNotFoundError(msg)
        if status == SC_MTL_ERR_LIMIT:
            raise errors.MetalLimitError(msg)
        if status == SC_MTL_ERR_EXECUTION:
            raise errors.MetalExecutionError(msg)
        if status == SC_MTL_ERR_NO_MEMORY:
            raise MemoryError(msg)
        raise errors.InvalidArgumentError("metal", msg)


def backend_name():
    """``"metal"`` or ``"host-emulation"``: which implementation of the shim is linked."""
    return sc_mtl_backend_name().decode()


def configure(str key, str value):
    """Emulation settings (``emu_dir``, ``cache_dir``, ``cxx``); ignored on Metal."""
    check(sc_mtl_emu_configure(key.encode(), value.encode()))


cdef class Device:
    """The system's default Metal device (or the host emulation's)."""
    cdef sc_mtl_device *d

    def __cinit__(self):
        self.d = NULL
        check(sc_mtl_device_create(&self.d))

    def __dealloc__(self):
        if self.d != NULL:
            sc_mtl_device_free(self.d)

    def info(self):
        """Capabilities as a dict (name, gpu_family, limits, features, emulated)."""
        cdef sc_mtl_device_info i
        check(sc_mtl_device_info_get(self.d, &i))
        return dict(name=i.name.decode("utf-8", "replace"), gpu_family=i.gpu_family,
                    max_threads_per_threadgroup=i.max_threads_per_threadgroup,
                    max_threadgroup_memory=i.max_threadgroup_memory,
                    recommended_working_set=i.recommended_working_set, unified_memory=bool(i.unified_memory),
                    simdgroup_matrix=bool(i.simdgroup_matrix), bfloat=bool(i.bfloat), simd_width=i.simd_width,
                    emulated=bool(i.emulated))

    def set_host_threads(self, int n):
        """Host threads that run threadgroups (emulation; 0 = all cores)."""
        check(sc_mtl_set_host_threads(self.d, n))

    def buffer(self, size_t length):
        """A new zero-filled shared buffer of ``length`` bytes."""
        cdef Buffer b = Buffer.__new__(Buffer)
        b.device = self
        check(sc_mtl_buffer_alloc(self.d, length, &b.b))
        return b

    def wrap(self, obj):
        """A buffer over ``obj``'s memory without copying (numpy array, any
        buffer-protocol object, or a DLPack tensor). ``obj`` stays alive as long
        as the buffer. ``Buffer.copied`` is True when Metal refused the wrap
        and the shim copied instead (then results must be read from the buffer)."""
        if hasattr(obj, "__dlpack__") and not isinstance(obj, np.ndarray):
            obj = np.from_dlpack(obj)
        cdef Buffer b = Buffer.__new__(Buffer)
        cdef Py_buffer view
        cdef int copied = 0
        cdef size_t addr, extent
        if isinstance(obj, np.ndarray) and not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            # a strided view: wrap the span of memory it covers (kernels index it by strides)
            if any(st < 0 for st in obj.strides):
                raise errors.InvalidArgumentError("obj", "negative strides cannot be wrapped; pass a copy")
            addr = obj.__array_interface__["data"][0]
            extent = obj.itemsize + sum((n - 1) * st for n, st in zip(obj.shape, obj.strides)) if obj.size else 0
            b.device = self
            b.source = obj
            b.readonly = not obj.flags.writeable
            check(sc_mtl_buffer_wrap(self.d, <void *>addr, extent, &b.b, &copied))
            b.copied = bool(copied)
            return b
        PyObject_GetBuffer(obj, &view, PyBUF_ANY_CONTIGUOUS)
        try:
            b.device = self
            b.source = obj
            b.readonly = view.readonly
            check(sc_mtl_buffer_wrap(self.d, view.buf, <size_t>view.len, &b.b, &copied))
        finally:
            PyBuffer_Release(&view)
        b.copied = bool(copied)
        return b

    def library_from_source(self, str source, *, str name="source.metal", str include_dir=None, bint fast_math=False):
        """Compile MSL ``source`` (host emulation: as C++, cached by content hash).

        Raises MetalCompileError with the compiler's log on failure."""
        cdef Library lib = Library.__new__(Library)
        opts = f"name={name};fast_math={int(fast_math)}" + (f";include={include_dir}" if include_dir else "")
        src = source.encode()
        ob = opts.encode()
        cdef const char *s = src
        cdef const char *o = ob
        lib.device = self
        with nogil:
            check(sc_mtl_library_from_source(self.d, s, o, &lib.l))
        return lib

    def library_from_file(self, str path):
        cdef Library lib = Library.__new__(Library)
        lib.device = self
        check(sc_mtl_library_from_file(self.d, path.encode(), &lib.l))
        return lib

    def command_buffer(self):
        cdef CommandBuffer c = CommandBuffer.__new__(CommandBuffer)
        c.device = self
        check(sc_mtl_cmdbuf_create(self.d, &c.c))
        c.keep = []
        return c


cdef class Buffer:
    """A device buffer. Supports the buffer protocol: ``memoryview(buf)`` and
    ``numpy.frombuffer(buf, dtype)`` see its bytes without copying and keep it
    alive."""
    cdef sc_mtl_buffer *b
    cdef readonly Device device
    cdef readonly object source
    cdef readonly bint copied
    cdef bint readonly

    def __cinit__(self):
        self.b = NULL

    def __dealloc__(self):
        if self.b != NULL:
            sc_mtl_buffer_free(self.b)

    @property
    def nbytes(self):
        return sc_mtl_buffer_length(self.b)

    @property
    def offset(self):
        """Offset of the data in its first wrapped page (wrapped memory)."""
        return sc_mtl_buffer_offset(self.b)

    @property
    def address(self):
        return <size_t>sc_mtl_buffer_contents(self.b)

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self.readonly and (flags & PyBUF_WRITABLE):
            raise BufferError("the wrapped memory is read-only")
        PyBuffer_FillInfo(view, self, sc_mtl_buffer_contents(self.b), sc_mtl_buffer_length(self.b),
                          self.readonly, flags)

    def numpy(self, dtype, shape=None):
        """A numpy view of the buffer (no copy; the view keeps the buffer alive)."""
        a = np.frombuffer(self, dtype=dtype)
        return a if shape is None else a.reshape(shape)


cdef class Library:
    """A compiled library; owns its pipeline cache."""
    cdef sc_mtl_library *l
    cdef readonly Device device

    def __cinit__(self):
        self.l = NULL

    def __dealloc__(self):
        if self.l != NULL:
            sc_mtl_library_free(self.l)

    def functions(self):
        cdef char buf[8192]
        check(sc_mtl_library_functions(self.l, buf, sizeof(buf)))
        s = buf.decode()
        return s.split("\n") if s else []

    @property
    def pipelines_created(self):
        """Pipeline-cache misses so far."""
        return sc_mtl_library_pipelines_created(self.l)

    def pipeline(self, str function, constants=None):
        """The pipeline of ``function`` specialized by ``constants``:
        ``{index: value}`` (bool, int or float; or ``(value, "uint"|"short"|"ushort")``).
        Cached in the library by a name that spells out every specialization."""
        cdef sc_mtl_constant cs[64]
        cdef int n = 0
        cdef Pipeline p = Pipeline.__new__(Pipeline)
        if constants:
            if len(constants) > 64:
                raise errors.InvalidArgumentError("constants", "at most 64 function constants")
            for idx, val in sorted(constants.items()):
                kind = None
                if isinstance(val, tuple):
                    val, kind = val
                cs[n].index = <uint32_t>idx
                if kind is None:
                    kind = "bool" if isinstance(val, bool) else "int" if isinstance(val, int) else \
                        "float" if isinstance(val, float) else None
                if kind not in _FC_KINDS:
                    raise errors.ArgumentTypeError("constants", f"constant {idx}: unsupported value {val!r}")
                fc_type, field = _FC_KINDS[kind]
                cs[n].type = fc_type
                if field == "f":
                    cs[n].value.f = <float>val
                elif field == "u":
                    cs[n].value.u = <uint32_t>val
                else:
                    cs[n].value.i = <int32_t>(1 if val is True else 0 if val is False else val)
                n += 1
        fn = function.encode()
        check(sc_mtl_pipeline_get(self.l, fn, cs, n, &p.p))
        p.library = self
        return p


# function-constant kind -> (C type, union field it is stored in)
_FC_KINDS = {"bool": (SC_MTL_FC_BOOL, "i"), "int": (SC_MTL_FC_INT32, "i"), "uint": (SC_MTL_FC_UINT32, "u"),
             "short": (SC_MTL_FC_INT16, "i"), "ushort": (SC_MTL_FC_UINT16, "u"), "float": (SC_MTL_FC_FLOAT, "f")}


cdef class Pipeline:
    """A specialized kernel (owned by its library's cache)."""
    cdef sc_mtl_pipeline *p
    cdef readonly Library library

    @property
    def name(self):
        return sc_mtl_pipeline_name(self.p).decode()

    @property
    def max_threads(self):
        return sc_mtl_pipeline_max_threads(self.p)

    def __eq__(self, other):
        return isinstance(other, Pipeline) and (<Pipeline>other).p == self.p

    def __hash__(self):
        return hash(<size_t>self.p)


cdef class CommandBuffer:
    """One command buffer with one compute encoder: bind, dispatch, barrier,
    then ``commit()`` and ``wait()``. Buffers bound here stay alive until the
    command buffer is gone."""
    cdef sc_mtl_cmdbuf *c
    cdef readonly Device device
    cdef list keep

    def __cinit__(self):
        self.c = NULL

    def __dealloc__(self):
        if self.c != NULL:
            sc_mtl_cmdbuf_free(self.c)

    def set_pipeline(self, Pipeline p):
        check(sc_mtl_set_pipeline(self.c, p.p))
        self.keep.append(p.library)

    def set_buffer(self, uint32_t index, Buffer b, size_t offset=0):
        check(sc_mtl_set_buffer(self.c, index, b.b, offset))
        self.keep.append(b)

    def set_bytes(self, uint32_t index, data):
        """Small argument data (bytes, a numpy scalar/structured array, ...), copied now."""
        cdef const unsigned char[::1] mv = memoryview(data).cast("B")
        check(sc_mtl_set_bytes(self.c, index, &mv[0] if mv.shape[0] else NULL, mv.shape[0]))

    def set_threadgroup_memory(self, uint32_t index, size_t length):
        check(sc_mtl_set_threadgroup_memory(self.c, index, length))

    def dispatch(self, threadgroups, threads):
        """Dispatch ``threadgroups`` (x, y, z) of ``threads`` (x, y, z) each.
        The threadgroup size is checked against the pipeline (MetalLimitError)."""
        cdef uint32_t g[3]
        cdef uint32_t t[3]
        tg = tuple(threadgroups) + (1,) * (3 - len(threadgroups))
        th = tuple(threads) + (1,) * (3 - len(threads))
        for i in range(3):
            if tg[i] < 0 or th[i] < 0:
                raise errors.InvalidArgumentError("threadgroups", "sizes must be >= 0")
            g[i] = tg[i]
            t[i] = th[i]
        check(sc_mtl_dispatch(self.c, g, t))

    def barrier(self):
        check(sc_mtl_barrier(self.c))

    def set_race_check(self, bint on=True):
        check(sc_mtl_set_race_check(self.c, on))

    def commit(self):
        with nogil:
            check(sc_mtl_commit(self.c))

    def wait(self):
        with nogil:
            check(sc_mtl_wait(self.c))

    def gpu_time(self):
        """Seconds between the start and end of the committed work."""
        cdef double s, e
        check(sc_mtl_gpu_time(self.c, &s, &e))
        return e - s
