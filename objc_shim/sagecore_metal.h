/* sagecore_metal.h -- the Metal shim's C API (ABI 1).
 *
 * One opaque handle per Metal object, each with create/free and a few verbs.
 * Every function returns an sc_mtl_status; on failure the calling thread's
 * last-error message (sc_mtl_last_error) says what and where. No Objective-C
 * type appears here, so Cython and other runtimes can use it as plain C.
 *
 * Two implementations of this header exist:
 *   objc_shim/metal/shim_metal.m   macOS, on the real Metal API;
 *   objc_shim/host/shim_host.cpp   everywhere else: the host emulation, which
 *                                  compiles the metal/ kernels as C++ against a
 *                                  prelude and runs every threadgroup as
 *                                  cooperative fibers (docs/metal.md).
 * sc_mtl_backend_name() says which one is linked.
 *
 * Threading: devices, buffers, libraries and pipelines may be shared between
 * threads (pipeline creation is serialized internally). A command buffer and
 * its encoder belong to one thread at a time.
 */
#ifndef SAGECORE_METAL_H
#define SAGECORE_METAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SC_MTL_ABI_VERSION 1

typedef enum sc_mtl_status {
    SC_MTL_OK = 0,
    SC_MTL_ERR_INVALID_ARGUMENT = 1, /* a bad handle, index, size or option */
    SC_MTL_ERR_UNAVAILABLE = 2,      /* no device / toolchain */
    SC_MTL_ERR_NO_MEMORY = 3,
    SC_MTL_ERR_COMPILE = 4,          /* library compilation failed: see the log */
    SC_MTL_ERR_NOT_FOUND = 5,        /* no such function in the library */
    SC_MTL_ERR_LIMIT = 6,            /* threadgroup size or memory over the pipeline/device limit */
    SC_MTL_ERR_EXECUTION = 7,        /* a dispatch failed: fault, divergence, deadlock, race */
} sc_mtl_status;

typedef struct sc_mtl_device sc_mtl_device;
typedef struct sc_mtl_buffer sc_mtl_buffer;
typedef struct sc_mtl_library sc_mtl_library;
typedef struct sc_mtl_pipeline sc_mtl_pipeline;
typedef struct sc_mtl_cmdbuf sc_mtl_cmdbuf;

/* ------------------------------------------------------------ errors */
/* The calling thread's last error message ("" if none); valid until the
 * thread's next failing call. */
const char *sc_mtl_last_error(void);
/* The full compiler log of the calling thread's last SC_MTL_ERR_COMPILE. */
const char *sc_mtl_last_compile_log(void);
/* "metal" or "host-emulation" */
const char *sc_mtl_backend_name(void);
int sc_mtl_abi_version(void);

/* ------------------------------------------------------------ device */
typedef struct sc_mtl_device_info {
    char name[128];
    int32_t gpu_family;              /* highest MTLGPUFamilyApple<n> supported (n), 0 if unknown */
    int32_t max_threads_per_threadgroup;
    int64_t max_threadgroup_memory;  /* bytes */
    int64_t recommended_working_set; /* bytes, 0 if unknown */
    int32_t unified_memory;
    int32_t simdgroup_matrix;        /* simdgroup_float8x8 etc. */
    int32_t bfloat;                  /* bfloat type in kernels (Apple GPU family >= 9 / MSL 3.1) */
    int32_t simd_width;              /* 32 on Apple GPUs */
    int32_t emulated;                /* 1: host emulation */
} sc_mtl_device_info;

/* The system default device. */
sc_mtl_status sc_mtl_device_create(sc_mtl_device **out);
void sc_mtl_device_free(sc_mtl_device *d);
sc_mtl_status sc_mtl_device_info_get(const sc_mtl_device *d, sc_mtl_device_info *out);

/* ------------------------------------------------------------ buffers */
/* Shared storage, page aligned, zero filled. */
sc_mtl_status sc_mtl_buffer_alloc(sc_mtl_device *d, size_t length, sc_mtl_buffer **out);
/* Wrap existing memory without copying: the enclosing pages are wrapped and
 * the buffer binds with an offset (sc_mtl_buffer_offset). When the wrap is
 * refused, the bytes are copied into a new buffer and *copied is set to 1
 * (the caller must then copy results back). The memory must outlive the
 * buffer. */
sc_mtl_status sc_mtl_buffer_wrap(sc_mtl_device *d, void *ptr, size_t length, sc_mtl_buffer **out, int *copied);
void sc_mtl_buffer_free(sc_mtl_buffer *b);
void *sc_mtl_buffer_contents(const sc_mtl_buffer *b); /* first byte of the user's data */
size_t sc_mtl_buffer_length(const sc_mtl_buffer *b);  /* the user's length */
size_t sc_mtl_buffer_offset(const sc_mtl_buffer *b);  /* offset of the data in the wrapped pages */

/* ------------------------------------------------------------ libraries */
/* Compile MSL source. options: NULL or "key=value;..." with keys
 * "fast_math" (0/1), "language" ("3.0", "3.1"), "include" (a directory the
 * source's #include "..." resolves against) and "name" (a label for logs). */
sc_mtl_status sc_mtl_library_from_source(sc_mtl_device *d, const char *source, const char *options,
                                         sc_mtl_library **out);
/* Load a library file: a .metallib (Metal) or a host-emulation module. */
sc_mtl_status sc_mtl_library_from_file(sc_mtl_device *d, const char *path, sc_mtl_library **out);
void sc_mtl_library_free(sc_mtl_library *l);
/* Function names, '\n'-separated, into buf (truncated to cap, NUL-terminated). */
sc_mtl_status sc_mtl_library_functions(const sc_mtl_library *l, char *buf, size_t cap);

/* ------------------------------------------------------------ pipelines */
typedef enum sc_mtl_fc_type {
    SC_MTL_FC_BOOL = 0, SC_MTL_FC_INT32 = 1, SC_MTL_FC_UINT32 = 2, SC_MTL_FC_FLOAT = 3,
    SC_MTL_FC_INT16 = 4, SC_MTL_FC_UINT16 = 5,
} sc_mtl_fc_type;

typedef union sc_mtl_constant_value {
    int32_t i; /* bool, int, short (sign-extended) */
    uint32_t u; /* uint, ushort */
    float f;
} sc_mtl_constant_value;

typedef struct sc_mtl_constant {
    uint32_t index; /* [[function_constant(index)]] */
    sc_mtl_fc_type type;
    sc_mtl_constant_value value;
} sc_mtl_constant;

/* The pipeline of `function` specialized by `constants`. Pipelines are cached
 * in the library by a name that spells out every specialization
 * ("fn[c0=1,c3=2.5]"); a second call with the same specialization returns the
 * same pipeline (owned by the library: do not free it). Thread safe. */
sc_mtl_status sc_mtl_pipeline_get(sc_mtl_library *l, const char *function, const sc_mtl_constant *constants,
                                  int n_constants, sc_mtl_pipeline **out);
const char *sc_mtl_pipeline_name(const sc_mtl_pipeline *p);
int32_t sc_mtl_pipeline_max_threads(const sc_mtl_pipeline *p);
int32_t sc_mtl_pipeline_simd_width(const sc_mtl_pipeline *p);
/* How many pipelines the library has created (cache misses). */
int64_t sc_mtl_library_pipelines_created(const sc_mtl_library *l);

/* ------------------------------------------------------------ encoding */
/* One command buffer with one compute encoder. Dispatches run in order; a
 * barrier makes the next dispatch see every earlier write (Metal:
 * memoryBarrierWithScope:MTLBarrierScopeBuffers). Nothing runs before commit. */
sc_mtl_status sc_mtl_cmdbuf_create(sc_mtl_device *d, sc_mtl_cmdbuf **out);
void sc_mtl_cmdbuf_free(sc_mtl_cmdbuf *c);
sc_mtl_status sc_mtl_set_pipeline(sc_mtl_cmdbuf *c, sc_mtl_pipeline *p);
sc_mtl_status sc_mtl_set_buffer(sc_mtl_cmdbuf *c, uint32_t index, sc_mtl_buffer *b, size_t offset);
/* Small argument structs (<= 4 KB): copied now. */
sc_mtl_status sc_mtl_set_bytes(sc_mtl_cmdbuf *c, uint32_t index, const void *data, size_t length);
sc_mtl_status sc_mtl_set_threadgroup_memory(sc_mtl_cmdbuf *c, uint32_t index, size_t length);
/* The threadgroup size is checked against the pipeline's maximum here
 * (SC_MTL_ERR_LIMIT), never clamped. */
sc_mtl_status sc_mtl_dispatch(sc_mtl_cmdbuf *c, const uint32_t threadgroups[3], const uint32_t threads[3]);
sc_mtl_status sc_mtl_barrier(sc_mtl_cmdbuf *c);
sc_mtl_status sc_mtl_commit(sc_mtl_cmdbuf *c);
/* Wait for completion; an execution error of any dispatch is reported here. */
sc_mtl_status sc_mtl_wait(sc_mtl_cmdbuf *c);
/* GPU start/end of the committed work in seconds (host emulation: wall time). */
sc_mtl_status sc_mtl_gpu_time(const sc_mtl_cmdbuf *c, double *start, double *end);

/* ------------------------------------------------------------ emulation only */
/* Race check: each dispatch runs twice, threads scheduled forward then in
 * reverse, and the bound device buffers must come out bytewise equal
 * (SC_MTL_ERR_EXECUTION otherwise). Metal: returns SC_MTL_ERR_UNAVAILABLE. */
sc_mtl_status sc_mtl_set_race_check(sc_mtl_cmdbuf *c, int on);
/* Host threads that run threadgroups in parallel (0: all cores). */
sc_mtl_status sc_mtl_set_host_threads(sc_mtl_device *d, int n);
/* Where the emulation finds its files and tools: "emu_dir" (metal_prelude.h),
 * "cache_dir" (built modules), "cxx" (the C++ compiler). The environment
 * variables SAGECORE_METAL_EMU_DIR / _CACHE / _CXX take precedence. Metal:
 * accepted and ignored. */
sc_mtl_status sc_mtl_emu_configure(const char *key, const char *value);

#ifdef __cplusplus
}
#endif
#endif
