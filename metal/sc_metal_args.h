/* sc_metal_args.h -- what host code and Metal kernels share: argument structs
 * (passed with set_bytes) and function-constant indices. Included by the
 * kernels (MSL, or C++ under the host emulation) and by host C code.
 *
 * Layout rules: only 4- and 8-byte scalars, 8-byte fields first, no vectors,
 * so MSL and C agree on every offset (checked by tests/test_metal_kernels.py
 * against the numpy dtype the Python layer builds). */
#ifndef SC_METAL_ARGS_H
#define SC_METAL_ARGS_H

#if defined(__METAL_VERSION__)
typedef long sc_i64;
typedef int sc_i32;
typedef float sc_f32;
#else
#include <stdint.h>
typedef int64_t sc_i64;
typedef int32_t sc_i32;
typedef float sc_f32;
#endif

/* ---------------------------------------------------------- function constants
 * The KV packing kernels are specialized by format: one pipeline per format,
 * named by these values (see sagecore/metal/kernels.py). */
#define SC_FC_ENCODING 0    /* int: 2 int8, 3 int4 (sc_encoding) */
#define SC_FC_ZERO_POINT 1  /* bool: per-cell minimum */
#define SC_FC_SCALE_F32 2   /* bool: fp32 scales/minimums (else fp16) */
#define SC_FC_ROTATE 3      /* bool: block-Hadamard rotation along head_dim */
#define SC_FC_SMOOTH 4      /* bool: subtract / add back the row mean */
#define SC_FC_OUTLIERS 5    /* int: k values per cell kept in fp16 (0..16) */
#define SC_FC_IO_F16 6      /* bool: the plain tensor (source or destination) is fp16, else fp32 */

/* ---------------------------------------------------------- KV packing
 * The store is the C core's sc_store (docs/formats.md): data
 * [rows][capacity][row_bytes], scales/zeros [rows][capacity/T][D/G],
 * out_idx/out_val [rows][capacity/T][D/G][k], mean [rows][D] (float32).
 * A plain tensor is [B][H][n][D] with element strides. */
typedef struct sc_kv_pack_args {
    sc_i64 stride_b, stride_h, stride_t; /* plain tensor strides, elements */
    sc_i32 heads;                        /* H: row = b * heads + h */
    sc_i32 rows;                         /* B * H */
    sc_i32 head_dim;                     /* D */
    sc_i32 token_group;                  /* T */
    sc_i32 channel_group;                /* G */
    sc_i32 capacity;                     /* store tokens per row, a multiple of T */
    sc_i32 t0;                           /* first store token, a multiple of T */
    sc_i32 n_tokens;                     /* tokens [t0, t0 + n) */
    sc_i32 row_bytes;                    /* D (int8) or D / 2 (int4) */
    sc_i32 rot_block;                    /* Hadamard block (largest power of 2 dividing D, <= 256) */
    sc_f32 rot_norm;                     /* 1 / sqrt(rot_block) */
    sc_i32 reserved;
} sc_kv_pack_args;

/* error word written by the kernels (0 = ok); the host turns it into a
 * typed exception */
#define SC_KV_ERR_NONFINITE 1 /* a source value is NaN/Inf or beyond fp16 */
#define SC_KV_ERR_RANGE 2     /* the cell range does not fit fp16 scales */

#endif
