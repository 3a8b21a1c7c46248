# Declarations of objc_shim/sagecore_metal.h, C names verbatim. Nothing else.
from libc.stdint cimport int32_t, int64_t, uint32_t


cdef extern from "sagecore_metal.h" nogil:
    int SC_MTL_ABI_VERSION

    ctypedef enum sc_mtl_status:
        SC_MTL_OK
        SC_MTL_ERR_INVALID_ARGUMENT
        SC_MTL_ERR_UNAVAILABLE
        SC_MTL_ERR_NO_MEMORY
        SC_MTL_ERR_COMPILE
        SC_MTL_ERR_NOT_FOUND
        SC_MTL_ERR_LIMIT
        SC_MTL_ERR_EXECUTION

    ctypedef struct sc_mtl_device
    ctypedef struct sc_mtl_buffer
    ctypedef struct sc_mtl_library
    ctypedef struct sc_mtl_pipeline
    ctypedef struct sc_mtl_cmdbuf

    const char *sc_mtl_last_error()
    const char *sc_mtl_last_compile_log()
    const char *sc_mtl_backend_name()
    int sc_mtl_abi_version()

    ctypedef struct sc_mtl_device_info:
        char name[128]
        int32_t gpu_family
        int32_t max_threads_per_threadgroup
        int64_t max_threadgroup_memory
        int64_t recommended_working_set
        int32_t unified_memory
        int32_t simdgroup_matrix
        int32_t bfloat
        int32_t simd_width
        int32_t emulated

    sc_mtl_status sc_mtl_device_create(sc_mtl_device **out)
    void sc_mtl_device_free(sc_mtl_device *d)
    sc_mtl_status sc_mtl_device_info_get(const sc_mtl_device *d, sc_mtl_device_info *out)

    sc_mtl_status sc_mtl_buffer_alloc(sc_mtl_device *d, size_t length, sc_mtl_buffer **out)
    sc_mtl_status sc_mtl_buffer_wrap(sc_mtl_device *d, void *ptr, size_t length, sc_mtl_buffer **out, int *copied)
    void sc_mtl_buffer_free(sc_mtl_buffer *b)
    void *sc_mtl_buffer_contents(const sc_mtl_buffer *b)
    size_t sc_mtl_buffer_length(const sc_mtl_buffer *b)
    size_t sc_mtl_buffer_offset(const sc_mtl_buffer *b)

    sc_mtl_status sc_mtl_library_from_source(sc_mtl_device *d, const char *source, const char *options,
                                             sc_mtl_library **out)
    sc_mtl_status sc_mtl_library_from_file(sc_mtl_device *d, const char *path, sc_mtl_library **out)
    void sc_mtl_library_free(sc_mtl_library *l)
    sc_mtl_status sc_mtl_library_functions(const sc_mtl_library *l, char *buf, size_t cap)

    ctypedef enum sc_mtl_fc_type:
        SC_MTL_FC_BOOL
        SC_MTL_FC_INT32
        SC_MTL_FC_UINT32
        SC_MTL_FC_FLOAT
        SC_MTL_FC_INT16
        SC_MTL_FC_UINT16

    ctypedef union sc_mtl_constant_value:
        int32_t i
        uint32_t u
        float f

    ctypedef struct sc_mtl_constant:
        uint32_t index
        sc_mtl_fc_type type
        sc_mtl_constant_value value

    sc_mtl_status sc_mtl_pipeline_get(sc_mtl_library *l, const char *function, const sc_mtl_constant *constants,
                                      int n_constants, sc_mtl_pipeline **out)
    const char *sc_mtl_pipeline_name(const sc_mtl_pipeline *p)
    int32_t sc_mtl_pipeline_max_threads(const sc_mtl_pipeline *p)
    int32_t sc_mtl_pipeline_simd_width(const sc_mtl_pipeline *p)
    int64_t sc_mtl_library_pipelines_created(const sc_mtl_library *l)

    sc_mtl_status sc_mtl_cmdbuf_create(sc_mtl_device *d, sc_mtl_cmdbuf **out)
    void sc_mtl_cmdbuf_free(sc_mtl_cmdbuf *c)
    sc_mtl_status sc_mtl_set_pipeline(sc_mtl_cmdbuf *c, sc_mtl_pipeline *p)
    sc_mtl_status sc_mtl_set_buffer(sc_mtl_cmdbuf *c, uint32_t index, sc_mtl_buffer *b, size_t offset)
    sc_mtl_status sc_mtl_set_bytes(sc_mtl_cmdbuf *c, uint32_t index, const void *data, size_t length)
    sc_mtl_status sc_mtl_set_threadgroup_memory(sc_mtl_cmdbuf *c, uint32_t index, size_t length)
    sc_mtl_status sc_mtl_dispatch(sc_mtl_cmdbuf *c, const uint32_t *threadgroups, const uint32_t *threads)
    sc_mtl_status sc_mtl_barrier(sc_mtl_cmdbuf *c)
    sc_mtl_status sc_mtl_commit(sc_mtl_cmdbuf *c)
    sc_mtl_status sc_mtl_wait(sc_mtl_cmdbuf *c)
    sc_mtl_status sc_mtl_gpu_time(const sc_mtl_cmdbuf *c, double *start, double *end)

    sc_mtl_status sc_mtl_set_race_check(sc_mtl_cmdbuf *c, int on)
    sc_mtl_status sc_mtl_set_host_threads(sc_mtl_device *d, int n)
    sc_mtl_status sc_mtl_emu_configure(const char *key, const char *value)
