/*
 * sc_internal.h -- shared by the core's translation units; not installed.
 */
#ifndef SC_INTERNAL_H
#define SC_INTERNAL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "sagecore.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define SC_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define SC_ARM64 1
#endif

#define SC_FP16_MAX 65504.0f

/* printf-style; stores the message for sc_last_error() and returns `status`. */
sc_status sc_fail(sc_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ======================================================= code layouts */
/* SC_LAYOUT_K16 (sagecore.h): tokens [t0, t0 + n) of a kv row whose codes
 * start at `data`, to / from token-major rows of rb bytes (rb a multiple of
 * 4). The decoders and the readers without a k16 kernel go through these. */
static inline void sc_k16_gather(const uint8_t *data, int64_t t0, int64_t n, int64_t rb, uint8_t *rows) {
    for (int64_t t = 0; t < n; t++) {
        const int64_t tt = t0 + t;
        const uint8_t *src = data + (tt & ~(int64_t)15) * rb + (tt & 15) * 4;
        for (int64_t w = 0; w < rb / 4; w++) memcpy(rows + t * rb + 4 * w, src + 64 * w, 4);
    }
}
/* The inverse; when t0 + n is not a multiple of 16, the rest of its block
 * is written as zero words (so a block's bytes depend only on its tokens). */
static inline void sc_k16_scatter(const uint8_t *rows, int64_t t0, int64_t n, int64_t rb, uint8_t *data) {
    const int64_t end = (t0 + n + 15) & ~(int64_t)15;
    static const uint8_t zero[4] = {0, 0, 0, 0};
    for (int64_t tt = t0; tt < end; tt++) {
        uint8_t *dst = data + (tt & ~(int64_t)15) * rb + (tt & 15) * 4;
        const uint8_t *src = tt < t0 + n ? rows + (tt - t0) * rb : NULL;
        for (int64_t w = 0; w < rb / 4; w++) memcpy(dst + 64 * w, src ? src + 4 * w : zero, 4);
    }
}

/* ================================================================ fp16 */
/* Bit-exact IEEE binary16 conversions (round to nearest even), matching
 * F16C's vcvtps2ph/vcvtph2ps and numpy's astype. After M. Dukhan's FP16. */
static inline float sc_bits_f32(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t sc_f32_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

static inline float sc_h2f(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = sc_bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = sc_bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t r = sign | (two_w < (1u << 27) ? sc_f32_bits(denormalized)
                                                   : sc_f32_bits(normalized));
    return sc_bits_f32(r);
}

static inline uint16_t sc_f2h(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = sc_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = sc_bits_f32((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = sc_f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mant_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mant_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* Smallest fp16 value >= x, for x >= 0 finite and <= 65504. Scales are
 * rounded up so that |x| * (1/s) never exceeds the code range. */
static inline uint16_t sc_f2h_ceil(float x) {
    uint16_t h = sc_f2h(x);
    if (sc_h2f(h) < x) h = (uint16_t)(h + 1);
    return h;
}
/* Largest fp16 value <= x (finite x within fp16 range). */
static inline uint16_t sc_f2h_floor(float x) {
    uint16_t h = sc_f2h(x);
    float y = sc_h2f(h);
    if (y > x) {
        if (h == 0x0000u) h = 0x8001u;            /* +0 -> smallest negative */
        else if (h & 0x8000u) h = (uint16_t)(h + 1); /* more negative          */
        else h = (uint16_t)(h - 1);
    }
    return h;
}

/* ================================================== kernel function table */
/* Source modes of the fused kernels: fp32 or fp16 input, rounded to the fp16
 * value space; or values already in the transformed (smoothed, rotated)
 * domain as fp32, taken as they are. */
enum { SC_SRC_F32 = 0, SC_SRC_F16 = 1, SC_SRC_RAW = 2 };

/* Row primitives with per-ISA implementations. All must give bitwise the same
 * results as the portable ones (same operation order, no FMA contraction). */
typedef struct sc_row_kernels {
    /* dst[i] = value-space(src[i]) - (mean ? mean[i] : 0); value space = fp16 */
    void (*load_f16)(const uint16_t *src, const float *mean, float *dst, int64_t n);
    void (*load_f32)(const float *src, const float *mean, float *dst, int64_t n);
    /* colmax[i] = max(colmax[i], |x[i]|) */
    void (*absmax_acc)(const float *x, float *colmax, int64_t n);
    /* colmin/colmax running min and max */
    void (*minmax_acc)(const float *x, float *colmin, float *colmax, int64_t n);
    /* int8 codes: q = clamp(rint((x - m[i]) * inv[i]), lo, hi); m may be NULL */
    void (*quant_i8)(const float *x, const float *m, const float *inv, int8_t *q,
                     int64_t n, int32_t lo, int32_t hi);
    /* dst[i] = q[i] * s[i] + m[i] (m may be NULL); unsigned codes if is_u8 */
    void (*dequant_i8)(const int8_t *q, int is_u8, const float *s, const float *m,
                       float *dst, int64_t n);
    /* store: dst = x + (mean ? mean : 0), as f32 or rounded to f16 */
    void (*store_f32)(const float *x, const float *mean, float *dst, int64_t n);
    void (*store_f16)(const float *x, const float *mean, uint16_t *dst, int64_t n);
    /* Fused per-token symmetric quantization (token_group 1, no outliers, no
     * rotation unless src_mode is SC_SRC_RAW, G % 16 == 0): load, subtract
     * mean, per-cell |x| max, fp16 or fp32 scale, codes. NULL where the ISA
     * has no fused version. Returns 0, or -1 on a non-finite value or a scale
     * beyond fp16 (the conditions of encode_group). */
    int (*quant_token)(const void *src, int src_mode, const float *mean, int64_t D, int64_t G,
                       int is_int4, int scale_f32, uint8_t *dst, void *scales);
    /* Fused quantization of one token group of a channel_group-1 format (no
     * outliers, no rotation), symmetric or zero-point: loads the nt rows into
     * the scratch x [nt][D], writes nt code rows (row_bytes apart), D scales
     * and D minimums. NULL where the ISA has no fused version. Returns 0, or
     * -1 under the same range conditions as encode_group. */
    /* quant_token over n tokens of one row (src_stride elements apart; codes
     * row_bytes apart; scales contiguous); may process several tokens at once.
     * Returns n, or the index of the first token whose range failed. NULL
     * where the ISA has none (callers loop over quant_token). */
    int64_t (*quant_tokens)(const void *src, int64_t src_stride, int64_t n, int src_mode, const float *mean,
                            int64_t D, int64_t G, int is_int4, int scale_f32, uint8_t *dst, int64_t row_bytes,
                            void *scales);
    /* sc_rotate_f32: in-place block-Hadamard of n vectors (same butterflies,
     * same order as the portable one, so bitwise equal) */
    void (*rotate)(float *x, int64_t n, int64_t stride, int32_t d);
    /* Fast decode of tokens [t0, t0+n) of a row into fp32 [n][D] in the
     * transformed domain, for formats without outliers; returns 0 when it
     * does not handle the format (the caller then takes the generic path). */
    int (*decode_fast)(const sc_format *f, const sc_store *st, int64_t row, int64_t t0, int64_t n, float *dst);
    int (*quant_chan)(const void *const *rows, int src_f16, const float *mean, int64_t nt, int64_t D,
                      int is_int4, int zp, int scale_f32, float *x, uint8_t *dst, int64_t row_bytes,
                      void *scales, void *zeros);
    /* dequant_i8 of token tk (0..15) of a 16-token SC_LAYOUT_K16 block of
     * int8 codes (n a multiple of 4): the same values, read from the words in
     * place (no sc_k16_gather). NULL: the caller gathers rows. */
    void (*dequant_i8_k16)(const uint8_t *blk, int64_t tk, int is_u8, const float *s, const float *m, float *dst,
                           int64_t n);
    /* quant_tokens of rotated per-token formats (D and G: sc_rot_fused_dims;
     * src_mode F16 or F32): load, subtract the mean, rotate and encode each token in
     * registers, validating the input as it loads (the values, codes and
     * scales of load + sc_rotate_f32 + quant_token, bitwise). Returns n or
     * the first failing token. NULL where the ISA has none. */
    int64_t (*quant_rot_tokens)(const void *src, int64_t src_stride, int64_t n, int src_mode, const float *mean,
                                int64_t D, int64_t G, int is_int4, int scale_f32, uint8_t *dst, int64_t row_bytes,
                                void *scales);
} sc_row_kernels;

/* the head dims and channel groups quant_rot_tokens takes: one cell (G = D)
 * or cells of 32 channels, at the attention kernels' head dims */
static inline int sc_rot_fused_dims(int64_t D, int64_t G) {
    const int d = D == 32 || D == 64 || D == 80 || D == 96 || D == 128 || D == 192 || D == 256;
    return d && (G == D || (G == 32 && D % 32 == 0));
}

extern const sc_row_kernels sc_row_kernels_portable;
/* x86 AVX512-BF16 present and usable (AVX-512 enabled by the OS); 0 elsewhere */
int sc_cpu_has_avx512bf16(void);
/* x86: 1 AVX-VNNI present (the avx2 level's integer decode scores), 2 its
 * EVEX twin forced by SAGECORE_AVXVNNI=evex (testing), 0 neither; 0 elsewhere */
int sc_cpu_avxvnni_mode(void);
#ifdef SC_X86
extern const sc_row_kernels sc_row_kernels_avx2;
extern sc_row_kernels sc_row_kernels_avx512; /* filled by sc_row_kernels_avx512_init() */
void sc_row_kernels_avx512_init(void);
/* the x86 levels whose row kernels and probe are the AVX-512 ones */
static inline int sc_isa_avx512_family(sc_isa isa) {
    return isa == SC_ISA_AVX512 || isa == SC_ISA_AVX512_VNNI || isa == SC_ISA_AMX;
}
#endif
#ifdef SC_ARM64
extern sc_row_kernels sc_row_kernels_neon; /* filled by sc_row_kernels_neon_init() */
void sc_row_kernels_neon_init(void);
#endif
/* The table for the active ISA. */
const sc_row_kernels *sc_row_kernels_active(void);

/* ============================================================ tile decoder */
/* Decodes tokens of one store row into fp32 in the *transformed* domain (the
 * rotated, smoothed values the codes represent: no inverse rotation, no mean),
 * which is what attention consumes. One per thread; t0 % token_group == 0. */
typedef struct sc_decoder sc_decoder;
sc_decoder *sc_decoder_new(const sc_format *f, const sc_store *st);
void sc_decoder_free(sc_decoder *d);
void sc_decoder_run(sc_decoder *d, int64_t row, int64_t t0, int64_t n, float *dst);

#endif /* SC_INTERNAL_H */
