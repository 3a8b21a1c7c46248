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
#define SC_FC_LAYOUT 7      /* int: byte order of the codes (sc_format.layout: 0 rows, 1 k16) */

/* Byte b of token t (counted from the kv row's first token) of a store's
 * codes, from the row's first byte, for a layout (sagecore.h, sc_layout):
 * 0 token rows of rb bytes; 1 k16, the 4-byte words of 16 tokens
 * interleaved -- the C core's sc_k16_gather/scatter. */
#if defined(__METAL_VERSION__) || defined(__cplusplus)
inline
#else
static inline
#endif
sc_i64 sc_code_offset(sc_i32 layout, sc_i64 t, sc_i32 b, sc_i32 rb) {
    return layout == 1 ? (t - t % 16) * rb + ((b / 4) * 16 + t % 16) * 4 + b % 4 : t * rb + b;
}

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

/* ---------------------------------------------------------- attention
 * Function constants of the attention kernels (metal/attention.metal). K and
 * V each come either as a plain tensor (encoding 0: fp16 or fp32 rows read
 * in place, any strides) or as a store (1 fp16, 2 int8, 3 int4) in the
 * layout above. */
#define SC_FC_K_ENC 10     /* int: 0 tensor, 1 fp16 store, 2 int8, 3 int4 */
#define SC_FC_K_ZP 11      /* bool */
#define SC_FC_K_SF32 12    /* bool: fp32 scales */
#define SC_FC_K_OUT 13     /* int: outliers per cell */
#define SC_FC_K_ROT 14     /* bool: K rotated -> q is rotated the same way */
#define SC_FC_V_ENC 15
#define SC_FC_V_ZP 16
#define SC_FC_V_SF32 17
#define SC_FC_V_OUT 18
#define SC_FC_V_ROT 19     /* bool: V rotated -> the output is rotated back */
#define SC_FC_V_SMOOTH 20  /* bool: V smoothed -> the mean is added back */
#define SC_FC_KV_F32 21    /* bool: plain K/V tensors are fp32 (else fp16) */
#define SC_FC_Q_F16 22     /* bool: q is fp16 (else fp32) */
#define SC_FC_O_F16 23     /* bool: out is fp16 (else fp32) */
#define SC_FC_PARTIAL 24   /* bool: write split-K partials instead of the output */
#define SC_FC_K_LAYOUT 25  /* int: byte order of a K store's codes (SC_FC_LAYOUT) */
#define SC_FC_V_LAYOUT 26  /* int: the same for V */

typedef struct sc_attn_args {
    sc_i64 q_sb, q_sh, q_st;  /* q strides (elements): batch, head, token */
    sc_i64 o_sb, o_sh, o_st;  /* out strides */
    sc_i64 k_sb, k_sh, k_st;  /* plain K tensor strides (encoding 0) */
    sc_i64 v_sb, v_sh, v_st;  /* plain V tensor strides */
    sc_i32 batch, q_heads, kv_heads, q_len; /* B, Hq, Hkv, M */
    sc_i32 kv_len, head_dim, group;         /* N, D, Hq / Hkv */
    sc_i32 rows_per_head;                   /* mb: query tokens per row block */
    sc_i32 row_blocks;                      /* ceil(M / mb) */
    sc_i32 rows;                            /* group * mb (<= SC_ATTN_MAX_ROWS) */
    sc_i32 splits, chunk;                   /* key splits; keys per split (a multiple of 32) */
    sc_i32 causal, has_kv_lens;
    sc_f32 qscale;                          /* softmax scale * log2(e) */
    sc_i32 k_T, k_G, k_cap, k_row_bytes;    /* K store: token group, channel group, capacity, row bytes */
    sc_i32 v_T, v_G, v_cap, v_row_bytes;    /* V store */
    sc_i32 rot_block;                       /* Hadamard block of D */
    sc_f32 rot_norm;                        /* 1 / sqrt(rot_block) */
} sc_attn_args;

/* query rows (heads of a GQA group x query tokens) one threadgroup holds */
#define SC_ATTN_MAX_ROWS 8

/* error word written by the kernels (0 = ok); the host turns it into a
 * typed exception */
#define SC_KV_ERR_NONFINITE 1 /* a source value is NaN/Inf or beyond fp16 */
#define SC_KV_ERR_RANGE 2     /* the cell range does not fit fp16 scales */

#endif
