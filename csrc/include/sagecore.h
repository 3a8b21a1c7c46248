/*
 * sagecore.h -- the public C API of sagecore's portable CPU core.
 *
 * This header has no Python in it and no dependency beyond <stdint.h>: other
 * runtimes link the core (libsagecore_core.a, or the sources under csrc/) and
 * call it directly. The Python package wraps exactly these functions through
 * sagecore/_csagecore.pxd, with the GIL released.
 *
 * Conventions
 *   - Every function returns an sc_status; 0 is success. On failure a
 *     human-readable message is kept per thread: sc_last_error().
 *   - Element strides are in elements, not bytes. The channel (head_dim)
 *     stride of every tensor is 1.
 *   - "row" means one (batch, kv-head) pair: row = b * heads + h.
 *   - Values entering a quantized store are first rounded to IEEE float16
 *     (the cache's value space), so fp16 and fp32 inputs holding the same
 *     fp16 values store bitwise-identical bytes.
 */
#ifndef SAGECORE_H
#define SAGECORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SC_ABI_VERSION 4 /* 2: sc_attention_args.precision; 3: SC_PRECISION_INT8; 4: sc_format.layout (the struct grew: recompile) */

/* ---------------------------------------------------------------- status */
typedef enum sc_status {
    SC_OK = 0,
    SC_ERR_INVALID_ARGUMENT = 1, /* a parameter is out of its documented range */
    SC_ERR_UNSUPPORTED = 2,      /* valid, but this build/CPU cannot do it    */
    SC_ERR_NONFINITE = 3,        /* NaN/Inf or a value outside float16 range  */
    SC_ERR_NO_MEMORY = 4
} sc_status;

/* Message for the last failure on the calling thread ("" if none). */
const char *sc_last_error(void);

/* ------------------------------------------------------------ data types */
typedef enum sc_dtype {
    SC_DTYPE_F32 = 0,
    SC_DTYPE_F16 = 1
} sc_dtype;

typedef enum sc_encoding {
    SC_ENC_FP16 = 1, /* IEEE half, no scales                                   */
    SC_ENC_INT8 = 2, /* int8 symmetric [-127,127], or uint8 + per-cell minimum */
    SC_ENC_INT4 = 3  /* two codes per byte: channel 2i in the low nibble, 2i+1
                        in the high nibble; symmetric codes are stored as
                        c + 8 (c in [-7,7]); zero-point codes as u in [0,15]   */
} sc_encoding;

/* ------------------------------------------------------- CPU capabilities */
typedef enum sc_isa {
    SC_ISA_PORTABLE = 0,
    SC_ISA_AVX2 = 1,       /* x86-64: AVX2 + FMA + F16C                     */
    SC_ISA_AVX512 = 2,     /* x86-64: AVX-512 F/BW/DQ/VL (+ the above)      */
    SC_ISA_AVX512_VNNI = 3,/* x86-64: AVX-512 + VNNI                        */
    SC_ISA_AMX = 4,        /* x86-64: + AVX512-BF16, AMX-TILE/BF16, OS grant */
    SC_ISA_NEON = 10,      /* arm64 baseline                                */
    SC_ISA_NEON_DOTPROD = 11
} sc_isa;

/* Best ISA level this CPU supports (what the core uses unless forced). */
sc_isa sc_cpu_best_isa(void);
/* ISA level currently in use by the core. */
sc_isa sc_cpu_active_isa(void);
/* Force an ISA level (<= best; SC_ISA_PORTABLE always works). Process-wide. */
sc_status sc_cpu_set_isa(sc_isa isa);
/* Stable lower-case name, e.g. "avx512_vnni". */
const char *sc_isa_name(sc_isa isa);
/* Space-separated feature flags the CPU reports, e.g. "avx2 fma f16c ...". */
const char *sc_cpu_features(void);

/* ------------------------------------------------------ storage formats */
/*
 * A resolved storage format for one tensor (K or V) at one head_dim. It is the
 * C image of sagecore.formats.KVFormat; the Python layer fills it.
 *
 * Quantized values form a grid of "scale cells": token_group consecutive tokens
 * x channel_group consecutive channels share one scale (and one minimum when
 * zero_point is set). Examples at head_dim 128:
 *   token_group=1,  channel_group=32  -> per token, 4 groups (like q8_0)
 *   token_group=64, channel_group=128 -> one scale per 64-key block (SageAttention K)
 *   token_group=32, channel_group=1   -> per channel over 32 tokens (KIVI K)
 */
typedef struct sc_format {
    int32_t encoding;      /* sc_encoding                                        */
    int32_t head_dim;      /* D: multiple of 16, 16..512                        */
    int32_t token_group;   /* T: 1..1024                                        */
    int32_t channel_group; /* G: divides D; even for int4                       */
    int32_t scale_dtype;   /* sc_dtype of scales and minimums                   */
    int32_t zero_point;    /* 0 symmetric; 1 asymmetric with a per-cell minimum */
    int32_t outliers;      /* k: values per cell kept verbatim in fp16 (0..16)  */
    int32_t rotate;        /* 1: block-Hadamard rotation along D, see below     */
    int32_t smooth;        /* 1: subtract the row's mean vector before quantizing */
    int32_t layout;        /* sc_layout: byte order of `data` (0: token rows)       */
} sc_format;

/* Byte order of a store's codes (sc_format.layout).
 * SC_LAYOUT_ROWS: token-major, data[row][token][row_bytes].
 * SC_LAYOUT_K16 (int8/int4, token_group a multiple of 16; descriptor version 2):
 *   within each block of 16 tokens, the rows' 4-byte words are interleaved:
 *   byte b of token t (t counted from the kv row's first token) is at
 *     (t - t % 16) * row_bytes + ((b / 4) * 16 + t % 16) * 4 + b % 4,
 *   so 64 consecutive bytes hold the same 8 (int4) or 4 (int8) channels of 16 tokens (decode
 *   kernels put the keys in the vector lanes). A block occupies the same
 *   16 * row_bytes bytes as in SC_LAYOUT_ROWS. Quantizing a partial token
 *   group writes zero words for the rest of its last block. */
enum { SC_LAYOUT_ROWS = 0, SC_LAYOUT_K16 = 1 };

/*
 * One tensor's storage for `rows` rows of `capacity` tokens (capacity is a
 * multiple of token_group). All arrays are C-contiguous; NULL where unused.
 *   data     [rows][capacity][row_bytes]  row_bytes = D*2 (fp16), D (int8), D/2 (int4);
 *                                         bytes within 16-token blocks permuted for SC_LAYOUT_K16
 *   scales   [rows][capacity/T][D/G]      of scale_dtype
 *   zeros    [rows][capacity/T][D/G]      of scale_dtype (zero_point only): the cell minimum
 *   out_idx  [rows][capacity/T][D/G][k]   uint16 position t*G + c inside the cell
 *   out_val  [rows][capacity/T][D/G][k]   fp16 value that replaces the decoded one
 *   mean     [rows][D]                    float32 smoothing vector (smooth only)
 * Dequantized value at (t, c):
 *   x = replace_by_outlier(code * s + m) ; then inverse rotation ; then + mean
 * where m = 0 (symmetric int8), -8*s (symmetric int4), or the cell minimum.
 */
typedef struct sc_store {
    void *data;
    void *scales;
    void *zeros;
    uint16_t *out_idx;
    uint16_t *out_val;
    float *mean;
    int64_t rows;
    int64_t capacity;
} sc_store;

/* A strided [B][H][N][D] source or destination tensor (element strides). */
typedef struct sc_tensor {
    void *ptr;
    int32_t dtype;  /* sc_dtype */
    int64_t batch, heads, tokens, dim;
    int64_t stride_b, stride_h, stride_t; /* stride of dim is 1 */
} sc_tensor;

/* Bytes of one token's codes in `data`. */
int64_t sc_format_row_bytes(const sc_format *f);
/* Validate a format; SC_OK or SC_ERR_INVALID_ARGUMENT with a message. */
sc_status sc_format_check(const sc_format *f);

/* Rotation block: the largest power of two dividing D, at most 256. The
 * rotation is the orthonormal Sylvester-Hadamard matrix applied to each block
 * of that many consecutive channels; it is symmetric and its own inverse. */
int32_t sc_rotation_block(int32_t head_dim);
/* In-place rotation of n vectors of length d, each stride elements apart. */
void sc_rotate_f32(float *x, int64_t n, int64_t stride, int32_t d);

/*
 * Quantize tokens [t0, t0+src->tokens) of every row from src into store.
 * t0 must be a multiple of token_group; a trailing partial group is quantized
 * from the tokens it has (re-quantize it when more arrive). src->batch*heads
 * must equal store->rows. Values must be finite and |x| <= 65504, else
 * SC_ERR_NONFINITE (store content for these tokens is then unspecified).
 * Threads: uses up to sc_num_threads() threads.
 */
sc_status sc_quantize(const sc_format *f, const sc_store *store,
                      const sc_tensor *src, int64_t t0);

/* sc_quantize with flags. SC_QUANTIZE_VALUES_CHECKED: the caller has already
 * passed src through sc_check_values(), so the extra read pass is skipped
 * (non-finite input is then undefined behaviour of the codes, never a crash). */
#define SC_QUANTIZE_VALUES_CHECKED 1u
sc_status sc_quantize_ex(const sc_format *f, const sc_store *store,
                         const sc_tensor *src, int64_t t0, uint32_t flags);

/* Dequantize tokens [t0, t0+dst->tokens) of every row into dst (f32 or f16). */
sc_status sc_dequantize(const sc_format *f, const sc_store *store,
                        const sc_tensor *dst, int64_t t0);

/* Check that every element of t is finite and within float16 range.
 * SC_OK or SC_ERR_NONFINITE with the first offending (b, h, t, c) in the message. */
sc_status sc_check_values(const sc_tensor *t);

/* Copy/convert src into dst (f32/f16 either way, fp32 -> fp16 rounds to
 * nearest even). Shapes must match. */
sc_status sc_convert(const sc_tensor *src, const sc_tensor *dst);

/* Bulk fp16 <-> fp32 conversion of n contiguous values. */
void sc_f16_to_f32(const uint16_t *src, float *dst, int64_t n);
void sc_f32_to_f16(const float *src, uint16_t *dst, int64_t n);

/* ------------------------------------------------------------- attention */
/*
 * Scaled-dot-product attention of queries over one K store and one V store
 * (any formats above, e.g. a QuantKVCache segment, or fp16 arrays viewed as
 * SC_ENC_FP16 stores). Semantics as sagecore.reference: GQA (query head h
 * reads kv head h / (q_heads / kv_heads)), right-aligned causal masking
 * (query row i of M sees keys j <= n - M + i), per-batch key counts, rows
 * with no visible key give zeros and an lse of -inf. FP32 accumulation,
 * streaming softmax in base 2 with the scale folded into the queries; K/V
 * tiles are decoded into per-thread L1-sized scratch, never a full copy.
 */
typedef struct sc_attention_args {
    sc_tensor q;              /* [B][Hq][M][D], f32 or f16, element strides */
    sc_tensor out;            /* [B][Hq][M][D], f32 or f16 */
    float *lse;               /* optional, contiguous [B][Hq][M]: natural-log log-sum-exp */
    const sc_format *kf, *vf; /* head_dim 32, 64, 80, 96, 128, 192 or 256 */
    const sc_store *k, *v;    /* rows = B * kv_heads */
    int64_t kv_heads;
    int64_t kv_len;           /* valid keys (<= capacity of both stores) */
    const int64_t *kv_lens;   /* optional [B]: valid keys per batch item (<= kv_len) */
    float scale;              /* softmax scale, e.g. 1/sqrt(D) */
    int32_t causal;
    int32_t split_k;          /* 0 auto, 1 off, n > 1: n key splits + a reduce pass */
    /* Alternative to kf/k and vf/v: plain K and V tensors [B][Hkv][>= kv_len][D]
     * of f16 or f32 with any element strides (BHND, BNHD, ...), read in place.
     * Set both (and leave kf, vf, k, v NULL) or neither. */
    const sc_tensor *k_tensor, *v_tensor;
    /* The lowest precision the kernels may use for the operands of QK^T and
     * PV (accumulation is always fp32). SC_PRECISION_FP32 (0, the default):
     * fp32-level results on every path (the AMX path splits operands into
     * bf16 hi + lo, three tile products). SC_PRECISION_BF16: operands may be
     * rounded to bf16 (2^-8 relative, the precision of bf16 SDPA); the AMX
     * path then takes one tile product instead of three, the avx512_vnni
     * level's prefill items take VDPBF16PS where the CPU has AVX512-BF16,
     * and AVX512-VNNI decode computes QK^T and PV on int8/int4 codes in
     * integers. SC_PRECISION_INT8 (includes BF16's permissions): 8-bit
     * operands, SageAttention's precision class (int8 q' per row and token
     * group, u8 P' per row and tile, 2^-8 of the largest element); AVX512-VNNI
     * decode then takes VPDPBUSD over int4 codes, where the codes' own error
     * dominates. int8 codes keep 16-bit operands: 8-bit ones miss the int8
     * accuracy targets. A permission, not a demand: other paths compute in
     * fp32 either way. */
    int32_t precision;
} sc_attention_args;

enum { SC_PRECISION_FP32 = 0, SC_PRECISION_BF16 = 1, SC_PRECISION_INT8 = 2 };

/* SC_ERR_NONFINITE when a NaN/Inf in q, or in K/V at a token below the
 * batch item's key count, or a score / output beyond float32 (float16 for an
 * f16 out) reached the arithmetic; the message starts with the argument ("q: ",
 * "k: ", "v: ") and, for tensors, names the first such element. out is then
 * unspecified. Tokens at or past kv_len / kv_lens[b] are never read. */
sc_status sc_attention(const sc_attention_args *a);

/* The split count sc_attention uses for split_k = 0. */
int32_t sc_attention_auto_splits(int64_t batch, int64_t kv_heads, int64_t q_heads, int64_t q_len,
                                 int64_t kv_len, int32_t threads);

/* ---------------------------------------------------------------- threads */
/* Reads n bytes with sc_num_threads() threads and returns a checksum; the
 * benchmarks time it as the machine's read bandwidth. */
uint64_t sc_read_probe(const void *p, size_t n);
/* n float multiply-adds (widest vectors of the active ISA, 12 independent
 * chains) on each of sc_num_threads() threads; returns a checksum. Timed
 * with one thread and with all, it shows how much vector throughput the
 * threads really add (SMT siblings, shared hosts). */
double sc_compute_probe(int64_t n);

/* Threads used by the core's parallel loops (default: all available cores). */
int sc_num_threads(void);
void sc_set_num_threads(int n);

#ifdef __cplusplus
}
#endif
#endif /* SAGECORE_H */
