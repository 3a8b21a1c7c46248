/* emu_abi.h -- the contract between the host-emulation runtime
 * (shim_host.cpp) and a kernel module (a .metal file compiled as C++ against
 * metal_prelude.h, plus the launch thunks the generator appends).
 *
 * The runtime dlopens a module, hands it the runtime's function table
 * (sc_emu_module_init) and reads its kernel table (sc_emu_kernels). Each
 * thread of a threadgroup is a fiber that calls its kernel's thunk; the thunk
 * reads the thread's ids and the dispatch's bindings through the table.
 */
#ifndef SC_EMU_ABI_H
#define SC_EMU_ABI_H

#include <stddef.h>
#include <stdint.h>

#define SC_EMU_ABI_VERSION 1
#define SC_EMU_MAX_BINDINGS 31
#define SC_EMU_SIMD_WIDTH 32

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sc_emu_thread {
    uint32_t tpitg[3];   /* thread_position_in_threadgroup */
    uint32_t tgpig[3];   /* threadgroup_position_in_grid */
    uint32_t ntg[3];     /* threads_per_threadgroup */
    uint32_t ngrid[3];   /* threadgroups_per_grid */
    uint32_t index;      /* thread_index_in_threadgroup */
    uint32_t lane;       /* thread_index_in_simdgroup */
    uint32_t simdgroup;  /* simdgroup_index_in_threadgroup */
    uint32_t n_simdgroups;
} sc_emu_thread;

typedef struct sc_emu_binding {
    void *ptr;
    size_t length; /* bytes from ptr to the end of the bound range */
    int bound;
} sc_emu_binding;

typedef struct sc_emu_fc_value {
    uint32_t index;
    int type; /* sc_mtl_fc_type */
    union { int32_t i; uint32_t u; float f; } value;
} sc_emu_fc_value;

typedef struct sc_emu_launch {
    sc_emu_binding buffers[SC_EMU_MAX_BINDINGS];
    sc_emu_binding tgmem[SC_EMU_MAX_BINDINGS];
    const sc_emu_fc_value *constants;
    int n_constants;
} sc_emu_launch;

/* What the runtime offers a module. Every call that synchronizes names the
 * source file and line of the call site, for divergence reports. */
typedef struct sc_emu_api {
    int version;
    const sc_emu_thread *(*self)(void);
    const sc_emu_launch *(*launch)(void);
    void (*threadgroup_barrier)(const char *file, int line);
    void (*simdgroup_barrier)(const char *file, int line);
    /* Every active lane of the simdgroup deposits `size` bytes; each gets all
     * lanes' values in `all` (SC_EMU_SIMD_WIDTH * size bytes, lane order) and
     * the active-lane mask. */
    void (*simd_exchange)(const void *value, size_t size, void *all, uint32_t *active, const char *file,
                          int line);
    /* A function constant's value: 1 if set for this pipeline, else 0. */
    int (*function_constant)(uint32_t index, int type, void *out);
    /* Abort the dispatch with a message (does not return). */
    void (*fail)(const char *message, const char *file, int line);
} sc_emu_api;

/* Kernel parameter kinds the generator emits */
enum {
    SC_EMU_PARAM_BUFFER = 1,      /* [[buffer(n)]], pointer */
    SC_EMU_PARAM_BUFFER_REF = 2,  /* [[buffer(n)]], reference or value: needs min_size bytes */
    SC_EMU_PARAM_THREADGROUP = 3, /* [[threadgroup(n)]] */
    SC_EMU_PARAM_POSITION = 4,    /* a thread-position attribute */
};

typedef struct sc_emu_param {
    const char *name;
    int kind;
    uint32_t index;   /* binding index */
    size_t min_size;  /* bytes (BUFFER_REF) */
} sc_emu_param;

typedef struct sc_emu_kernel {
    const char *name;
    void (*thunk)(void);
    const sc_emu_param *params;
    int n_params;
    const char *file;
    int line;
} sc_emu_kernel;

/* exported by each module */
typedef int (*sc_emu_module_init_fn)(const sc_emu_api *api);

#ifdef __cplusplus
}
#endif
#endif
