/*
 * pack_avx512.c -- AVX-512 (F/BW/DQ/VL) packing kernels for pack.c.
 *
 * Two fused kernels replace the generic load / range / encode passes for the
 * formats that matter most:
 *   quant_token: token_group 1, symmetric, channel_group % 16 == 0 (q8_0-like
 *                V, per-token int4 V);
 *   quant_chan:  channel_group 1, any token_group, symmetric or zero-point
 *                (KIVI-style K: the built-in int8 and int4 K formats).
 * Both reproduce encode_group() in pack.c bit for bit: the same float
 * operations in the same order, round-to-nearest-even, no FMA. The row
 * kernels of the AVX2 table serve every other step.
 */
#include "../sc_internal.h"

#ifdef SC_X86
#include <immintrin.h>

#define SC_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))
#define RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* value space: fp16-rounded, minus the smoothing mean. The raw values are
 * also summed into *chk: NaN and inf (fp32 input beyond the fp16 range rounds
 * to inf) propagate through the sum, finite fp16 values can never overflow
 * it, so one fpclass test per block validates the input in the same pass. */
SC_AVX512 static inline __m512 load16(const void *src, int mode, int64_t i, const float *mean, __m512 *chk) {
    __m512 v = mode == SC_SRC_F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)src + i)))
             : mode == SC_SRC_F32 ? _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps((const float *)src + i), RNE))
                                  : _mm512_loadu_ps((const float *)src + i);
    *chk = _mm512_add_ps(*chk, v);
    return mean ? _mm512_sub_ps(v, _mm512_loadu_ps(mean + i)) : v;
}

/* any NaN or infinity among the lanes */
SC_AVX512 static inline int nonfinite(__m512 chk) { return _mm512_fpclass_ps_mask(chk, 0x99) != 0; }

/* sc_f2h_ceil on 16 lanes (want >= 0) */
SC_AVX512 static inline __m256i f2h_ceil16(__m512 want) {
    __m256i h = _mm512_cvtps_ph(want, RNE);
    __mmask16 lt = _mm512_cmp_ps_mask(_mm512_cvtph_ps(h), want, _CMP_LT_OQ);
    return _mm256_mask_add_epi16(h, lt, h, _mm256_set1_epi16(1));
}

/* sc_f2h_floor on 16 lanes */
SC_AVX512 static inline __m256i f2h_floor16(__m512 x) {
    __m256i h = _mm512_cvtps_ph(x, RNE);
    __mmask16 gt = _mm512_cmp_ps_mask(_mm512_cvtph_ps(h), x, _CMP_GT_OQ);
    __mmask16 zero = _mm256_cmpeq_epi16_mask(h, _mm256_setzero_si256());
    __mmask16 neg = _mm256_test_epi16_mask(h, _mm256_set1_epi16((short)0x8000));
    __m256i down = _mm256_sub_epi16(h, _mm256_set1_epi16(1));
    __m256i adj = _mm256_mask_add_epi16(down, neg, h, _mm256_set1_epi16(1));
    adj = _mm256_mask_mov_epi16(adj, zero, _mm256_set1_epi16((short)0x8001));
    return _mm256_mask_mov_epi16(h, gt, adj);
}

/* rint(v * inv) -> int32 lanes. The ranges are chosen so that codes cannot
 * leave [lo, hi] (scales rounded up, minimums down); the emitters still clamp
 * exactly like the portable kernel, on the narrow integers where it is cheap. */
SC_AVX512 static inline __m512i quant16(__m512 v, __m512 inv) {
    return _mm512_cvt_roundps_epi32(_mm512_mul_ps(v, inv), RNE);
}

enum { K_I8, K_U8, K_I4, K_U4 }; /* int8 symmetric, int8 zero-point, int4 symmetric, int4 zero-point */

/* 64 codes (4 x 16 int32) -> one token row segment: 64 bytes, or 32 nibble-pair bytes. */
SC_AVX512 static inline void emit64(__m512i q0, __m512i q1, __m512i q2, __m512i q3, int kind, uint8_t *dst) {
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i w0 = _mm512_packs_epi32(q0, q1), w1 = _mm512_packs_epi32(q2, q3);
    __m512i b = (kind == K_U8 || kind == K_U4) ? _mm512_packus_epi16(w0, w1) : _mm512_packs_epi16(w0, w1);
    b = _mm512_permutexvar_epi32(order, b); /* undo the per-128-bit-lane interleave of the packs */
    if (kind == K_I8) {
        _mm512_storeu_si512(dst, _mm512_max_epi8(b, _mm512_set1_epi8(-127)));
    } else if (kind == K_U8) {
        _mm512_storeu_si512(dst, b);
    } else {
        if (kind == K_I4)
            b = _mm512_add_epi8(_mm512_min_epi8(_mm512_max_epi8(b, _mm512_set1_epi8(-7)), _mm512_set1_epi8(7)),
                                _mm512_set1_epi8(8));
        else
            b = _mm512_min_epu8(b, _mm512_set1_epi8(15));
        /* word k = c[2k] | c[2k+1] << 8  ->  byte k = c[2k] | c[2k+1] << 4 */
        __m512i t = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi16(0x000F)),
                                    _mm512_and_si512(_mm512_srli_epi16(b, 4), _mm512_set1_epi16(0x00F0)));
        _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi16_epi8(t));
    }
}

/* 16 codes -> 16 bytes or 8 nibble-pair bytes (row tails where D % 64 != 0). */
SC_AVX512 static inline void emit16(__m512i q, int kind, uint8_t *dst) {
    if (kind == K_I8) {
        _mm_storeu_si128((__m128i *)dst, _mm_max_epi8(_mm512_cvtsepi32_epi8(q), _mm_set1_epi8(-127)));
    } else if (kind == K_U8) {
        _mm_storeu_si128((__m128i *)dst, _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512())));
    } else {
        const int lo = kind == K_I4 ? -7 : 0, hi = kind == K_I4 ? 7 : 15, bias = kind == K_I4 ? 8 : 0;
        __m512i u = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
        u = _mm512_add_epi32(u, _mm512_set1_epi32(bias));
        __m512i pair = _mm512_or_si512(u, _mm512_srli_epi64(u, 28)); /* lane 2k: c[2k] | c[2k+1] << 4 */
        _mm_storel_epi64((__m128i *)dst, _mm512_cvtepi64_epi8(_mm512_and_si512(pair, _mm512_set1_epi64(0xFF))));
    }
}

/* Encode one token row of nv vectors (q[i] = codes of channels 16i..16i+15). */
SC_AVX512 static inline __attribute__((always_inline)) void emit_row(const __m512i *q, int64_t nv, int kind,
                                                                      uint8_t *dst) {
    const int64_t per64 = kind == K_I8 || kind == K_U8 ? 64 : 32; /* bytes per 64 codes */
    int64_t i = 0;
    for (; i + 4 <= nv; i += 4) emit64(q[i], q[i + 1], q[i + 2], q[i + 3], kind, dst + (i / 4) * per64);
    for (; i < nv; i++) emit16(q[i], kind, dst + i * (per64 / 4));
}

/* ------------------------------------------------------------ per token */
/* quant_token_body's encoding of a loaded (and validated) row x */
SC_AVX512 static inline __attribute__((always_inline)) int quant_x_body(const __m512 *x, const int64_t D, const int64_t G,
                                                                       int is_int4, int scale_f32, uint8_t *dst,
                                                                       void *scales) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    const int64_t ncell = D / G, per = G / 16;
    float amax[32] __attribute__((aligned(64)));
    float worst = 0.0f;
    for (int64_t c = 0; c < ncell; c++) {
        __m512 am = _mm512_and_ps(x[c * per], absmask);
        for (int64_t j = 1; j < per; j++) am = _mm512_max_ps(am, _mm512_and_ps(x[c * per + j], absmask));
        amax[c] = _mm512_reduce_max_ps(am);
        worst = amax[c] > worst ? amax[c] : worst;
    }
    if (!(worst <= 3.4e38f)) return -1;
    for (int64_t c = ncell; c < 16 * ((ncell + 15) / 16); c++) amax[c] = 0.0f;
    const float qmax = is_int4 ? 7.0f : 127.0f;
    float inv[32] __attribute__((aligned(64)));
    for (int64_t c = 0; c < ncell; c += 16) {
        __m512 want = _mm512_div_ps(_mm512_load_ps(amax + c), _mm512_set1_ps(qmax)), s;
        __mmask16 live = (__mmask16)(ncell - c >= 16 ? 0xFFFF : (1u << (ncell - c)) - 1);
        if (scale_f32) {
            s = want;
            _mm512_mask_storeu_ps((float *)scales + c, live, s);
        } else {
            if (_mm512_mask_cmp_ps_mask(live, want, _mm512_set1_ps(SC_FP16_MAX), _CMP_GT_OQ)) return -1;
            __m256i h = f2h_ceil16(want);
            _mm256_mask_storeu_epi16((uint16_t *)scales + c, live, h);
            s = _mm512_cvtph_ps(h);
        }
        __mmask16 pos = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
        _mm512_store_ps(inv + c, _mm512_maskz_div_ps(pos, _mm512_set1_ps(1.0f), s));
    }
    __m512i q[32];
    for (int64_t i = 0; i < D / 16; i++) q[i] = quant16(x[i], _mm512_set1_ps(inv[i / per]));
    emit_row(q, D / 16, is_int4 ? K_I4 : K_I8, dst);
    return 0;
}
SC_AVX512 static inline __attribute__((always_inline)) int quant_token_body(const void *src, int src_mode, const float *mean, const int64_t D,
                                             const int64_t G, int is_int4, int scale_f32, uint8_t *dst,
                                             void *scales) {
    __m512 x[32];
    __m512 chk = _mm512_setzero_ps();
    for (int64_t i = 0; i < D / 16; i++) x[i] = load16(src, src_mode, i * 16, mean, &chk);
    if (nonfinite(chk)) return -1;
    return quant_x_body(x, D, G, is_int4, scale_f32, dst, scales);
}

/* Scales of up to 4 cells from their maxima (lane c = cell c; ncell lanes
 * stored): scale = amax / qmax, rounded up to fp16 unless scale_f32; returns
 * the inverses (0 for a zero scale) in *inv, or -1 when a range does not fit. */
SC_AVX512 static inline __attribute__((always_inline)) int cell_scales4(__m128 amax, int ncell, int is_int4,
                                                                       int scale_f32, void *scales, __m128 *inv) {
    if (_mm_cmp_ps_mask(amax, _mm_set1_ps(3.4e38f), _CMP_NLE_UQ)) return -1;
    const __mmask8 live = (__mmask8)((1u << ncell) - 1);
    const __m128 want = _mm_div_ps(amax, _mm_set1_ps(is_int4 ? 7.0f : 127.0f));
    __m128 sv;
    if (scale_f32) {
        sv = want;
        _mm_mask_storeu_ps((float *)scales, live, sv);
    } else {
        if (_mm_mask_cmp_ps_mask(live, want, _mm_set1_ps(SC_FP16_MAX), _CMP_GT_OQ)) return -1;
        __m128i h = _mm_cvtps_ph(want, RNE);
        __mmask8 lt = _mm_cmp_ps_mask(_mm_cvtph_ps(h), want, _CMP_LT_OQ);
        h = _mm_mask_add_epi16(h, lt, h, _mm_set1_epi16(1));
        _mm_mask_storeu_epi16((uint16_t *)scales, live, h);
        sv = _mm_cvtph_ps(h);
    }
    *inv = _mm_maskz_div_ps(_mm_cmp_ps_mask(sv, _mm_setzero_ps(), _CMP_GT_OQ), _mm_set1_ps(1.0f), sv);
    return 0;
}

/* D in {64, 128}, G = 32: at most 4 cells, everything stays in registers (the
 * cell maxima are transposed into one xmm instead of going through memory,
 * which cost a store-forwarding stall per token). */
SC_AVX512 static inline __attribute__((always_inline)) int quant_x_g32(const __m512 *x, const int64_t D, int is_int4,
                                                                      int scale_f32, uint8_t *dst, void *scales) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m128 part[4];
    for (int c = 0; c < 4; c++) {
        if (c < D / 32) {
            __m512 am = _mm512_max_ps(_mm512_and_ps(x[2 * c], absmask), _mm512_and_ps(x[2 * c + 1], absmask));
            __m256 h = _mm256_max_ps(_mm512_castps512_ps256(am), _mm512_extractf32x8_ps(am, 1));
            part[c] = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        } else {
            part[c] = _mm_setzero_ps();
        }
    }
    _MM_TRANSPOSE4_PS(part[0], part[1], part[2], part[3]);
    __m128 amax = _mm_max_ps(_mm_max_ps(part[0], part[1]), _mm_max_ps(part[2], part[3])); /* lane c = cell c */
    __m128 inv4;
    if (cell_scales4(amax, (int)(D / 32), is_int4, scale_f32, scales, &inv4)) return -1;
    __m512 inv512 = _mm512_castps128_ps512(inv4);
    __m512i q[8];
    for (int64_t c = 0; c < D / 32; c++) {
        __m512 vinv = _mm512_permutexvar_ps(_mm512_set1_epi32((int)c), inv512);
        q[2 * c] = quant16(x[2 * c], vinv);
        q[2 * c + 1] = quant16(x[2 * c + 1], vinv);
    }
    emit_row(q, D / 16, is_int4 ? K_I4 : K_I8, dst);
    return 0;
}
SC_AVX512 static inline __attribute__((always_inline)) int quant_token_g32(
        const void *src, int src_mode, const float *mean, const int64_t D, int is_int4, int scale_f32,
        uint8_t *dst, void *scales) {
    __m512 x[8];
    __m512 chk = _mm512_setzero_ps();
    for (int64_t i = 0; i < D / 16; i++) x[i] = load16(src, src_mode, i * 16, mean, &chk);
    if (nonfinite(chk)) return -1;
    return quant_x_g32(x, D, is_int4, scale_f32, dst, scales);
}
/* the same for one cell of D = 16 nv channels (a scale per token): the
 * cell's maximum and cell_scales4 on one lane instead of quant_x_body's
 * vectors of cells (two 16-lane divisions per token) */
SC_AVX512 static inline __attribute__((always_inline)) int quant_x_one(const __m512 *x, const int64_t nv, int is_int4,
                                                                      int scale_f32, uint8_t *dst, void *scales) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m512 am = _mm512_and_ps(x[0], absmask);
    for (int64_t i = 1; i < nv; i++) am = _mm512_max_ps(am, _mm512_and_ps(x[i], absmask));
    __m128 inv;
    if (cell_scales4(_mm_set_ss(_mm512_reduce_max_ps(am)), 1, is_int4, scale_f32, scales, &inv)) return -1;
    const __m512 vinv = _mm512_broadcastss_ps(inv);
    __m512i q[16];
    for (int64_t i = 0; i < nv; i++) q[i] = quant16(x[i], vinv);
    emit_row(q, nv, is_int4 ? K_I4 : K_I8, dst);
    return 0;
}

/* K = 256 / D tokens at once (D in {64, 128}, G = 32): 8 cells, so the scale
 * math runs once per block on one ymm and the tokens' dependency chains
 * interleave. Rows are src_stride elements apart; codes row_bytes apart;
 * scales contiguous (the store layout of one (batch, head) row). */
SC_AVX512 static inline __attribute__((always_inline)) int quant_block_g32(
        const void *src, int64_t src_stride, int src_mode, const float *mean, const int64_t D, int is_int4,
        int scale_f32, uint8_t *dst, int64_t row_bytes, void *scales) {
    const int64_t K = 256 / D, V = D / 16; /* tokens per block, vectors per token */
    const int64_t es = src_mode == SC_SRC_F16 ? 2 : 4;
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    __m512 x[16];
    __m128 part[8];
    __m512 chk = _mm512_setzero_ps();
    for (int64_t t = 0; t < K; t++) {
        const char *p = (const char *)src + t * src_stride * es;
        for (int64_t i = 0; i < V; i++) x[t * V + i] = load16(p, src_mode, i * 16, mean, &chk);
        for (int64_t c = 0; c < D / 32; c++) {
            __m512 am = _mm512_max_ps(_mm512_and_ps(x[t * V + 2 * c], absmask),
                                      _mm512_and_ps(x[t * V + 2 * c + 1], absmask));
            __m256 h = _mm256_max_ps(_mm512_castps512_ps256(am), _mm512_extractf32x8_ps(am, 1));
            part[t * (D / 32) + c] = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        }
    }
    if (nonfinite(chk)) return -1;
    _MM_TRANSPOSE4_PS(part[0], part[1], part[2], part[3]);
    _MM_TRANSPOSE4_PS(part[4], part[5], part[6], part[7]);
    __m128 a0 = _mm_max_ps(_mm_max_ps(part[0], part[1]), _mm_max_ps(part[2], part[3]));
    __m128 a1 = _mm_max_ps(_mm_max_ps(part[4], part[5]), _mm_max_ps(part[6], part[7]));
    __m256 amax = _mm256_insertf128_ps(_mm256_castps128_ps256(a0), a1, 1); /* lane j = cell j of the block */
    if (_mm256_cmp_ps_mask(amax, _mm256_set1_ps(3.4e38f), _CMP_NLE_UQ)) return -1;
    const float qmax = is_int4 ? 7.0f : 127.0f;
    __m256 want = _mm256_div_ps(amax, _mm256_set1_ps(qmax)), sv;
    if (scale_f32) {
        sv = want;
        _mm256_storeu_ps((float *)scales, sv);
    } else {
        if (_mm256_cmp_ps_mask(want, _mm256_set1_ps(SC_FP16_MAX), _CMP_GT_OQ)) return -1;
        __m128i h = _mm256_cvtps_ph(want, RNE);
        __mmask8 lt = _mm256_cmp_ps_mask(_mm256_cvtph_ps(h), want, _CMP_LT_OQ);
        h = _mm_mask_add_epi16(h, lt, h, _mm_set1_epi16(1));
        _mm_storeu_si128((__m128i *)scales, h);
        sv = _mm256_cvtph_ps(h);
    }
    __m256 inv8 = _mm256_maskz_div_ps(_mm256_cmp_ps_mask(sv, _mm256_setzero_ps(), _CMP_GT_OQ),
                                      _mm256_set1_ps(1.0f), sv);
    __m512 inv512 = _mm512_castps256_ps512(inv8);
    for (int64_t t = 0; t < K; t++) {
        __m512i q[8];
        for (int64_t c = 0; c < D / 32; c++) {
            __m512 vinv = _mm512_permutexvar_ps(_mm512_set1_epi32((int)(t * (D / 32) + c)), inv512);
            q[2 * c] = quant16(x[t * V + 2 * c], vinv);
            q[2 * c + 1] = quant16(x[t * V + 2 * c + 1], vinv);
        }
        emit_row(q, V, is_int4 ? K_I4 : K_I8, dst + t * row_bytes);
    }
    return 0;
}

SC_AVX512 static int64_t quant_tokens_avx512(const void *src, int64_t src_stride, int64_t n, int src_mode,
                                             const float *mean, int64_t D, int64_t G, int is_int4, int scale_f32,
                                             uint8_t *dst, int64_t row_bytes, void *scales) {
    const int64_t es = src_mode == SC_SRC_F16 ? 2 : 4, ncell = D / G, ss = scale_f32 ? 4 : 2;
    int64_t t = 0;
    if (G == 32 && (D == 128 || D == 64)) {
        const int64_t K = 256 / D;
        for (; t + K <= n; t += K) {
            const char *p = (const char *)src + t * src_stride * es;
            int r = D == 128 ? quant_block_g32(p, src_stride, src_mode, mean, 128, is_int4, scale_f32,
                                               dst + t * row_bytes, row_bytes, (char *)scales + t * ncell * ss)
                             : quant_block_g32(p, src_stride, src_mode, mean, 64, is_int4, scale_f32,
                                               dst + t * row_bytes, row_bytes, (char *)scales + t * ncell * ss);
            if (r) return t;
        }
    }
    for (; t < n; t++)
        if (sc_row_kernels_avx512.quant_token((const char *)src + t * src_stride * es, src_mode, mean, D, G,
                                              is_int4, scale_f32, dst + t * row_bytes,
                                              (char *)scales + t * ncell * ss))
            return t;
    return n;
}

SC_AVX512 static int quant_token_avx512(const void *src, int src_mode, const float *mean, int64_t D, int64_t G,
                                        int is_int4, int scale_f32, uint8_t *dst, void *scales) {
    /* constant shapes let the compiler keep the token in registers */
    if (D == 128 && G == 32) return quant_token_g32(src, src_mode, mean, 128, is_int4, scale_f32, dst, scales);
    if (D == 64 && G == 32) return quant_token_g32(src, src_mode, mean, 64, is_int4, scale_f32, dst, scales);
    if (D == 128 && G == 128) { /* one scale per token (gD) */
        __m512 x[8], chk = _mm512_setzero_ps();
        for (int i = 0; i < 8; i++) x[i] = load16(src, src_mode, 16 * i, mean, &chk);
        return nonfinite(chk) ? -1 : quant_x_one(x, 8, is_int4, scale_f32, dst, scales);
    }
    return quant_token_body(src, src_mode, mean, D, G, is_int4, scale_f32, dst, scales);
}

/* ---------------------------------------------------------- per channel */
SC_AVX512 static inline __attribute__((always_inline)) int quant_chan_body(
        const void *const *rows, const int src_mode, const float *mean, int64_t nt, int64_t D, int is_int4,
        const int zp, int scale_f32, float *x, uint8_t *dst, int64_t row_bytes, void *scales, void *zeros) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
    float inv[512] __attribute__((aligned(64))), m[512] __attribute__((aligned(64)));
    const float span = is_int4 ? (zp ? 15.0f : 7.0f) : (zp ? 255.0f : 127.0f);
    /* pass 1: load into the scratch, column ranges (16 channels at a time) */
    for (int64_t c = 0; c < D; c += 16) {
        __m512 mx = _mm512_set1_ps(zp ? -INFINITY : 0.0f), mn = _mm512_set1_ps(INFINITY);
        __m512 chk = _mm512_setzero_ps();
        for (int64_t t = 0; t < nt; t++) {
            __m512 v = load16(rows[t], src_mode, c, mean, &chk);
            _mm512_storeu_ps(x + t * D + c, v); /* scratch is malloc-aligned only */
            if (zp) {
                mn = _mm512_min_ps(v, mn);
                mx = _mm512_max_ps(v, mx);
            } else {
                mx = _mm512_max_ps(_mm512_and_ps(v, absmask), mx);
            }
        }
        /* same checks as encode_group */
        __mmask16 bad = nonfinite(chk) ? 1 : 0;
        bad |= _mm512_cmp_ps_mask(mx, _mm512_set1_ps(3.4e38f), _CMP_NLE_UQ);
        __m512 vspan = _mm512_set1_ps(span), s, minv = _mm512_setzero_ps();
        if (zp) bad |= _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-3.4e38f), _CMP_NGE_UQ);
        if (!scale_f32) {
            if (zp) {
                bad |= _mm512_cmp_ps_mask(mn, _mm512_set1_ps(-SC_FP16_MAX), _CMP_LT_OQ);
                bad |= _mm512_cmp_ps_mask(_mm512_div_ps(_mm512_sub_ps(mx, mn), vspan),
                                          _mm512_set1_ps(SC_FP16_MAX), _CMP_GT_OQ);
            } else {
                bad |= _mm512_cmp_ps_mask(_mm512_div_ps(mx, vspan), _mm512_set1_ps(SC_FP16_MAX), _CMP_GT_OQ);
            }
        }
        if (bad) return -1;
        if (zp) {
            if (scale_f32) {
                minv = mn;
                s = _mm512_div_ps(_mm512_sub_ps(mx, mn), vspan);
                _mm512_storeu_ps((float *)zeros + c, minv);
                _mm512_storeu_ps((float *)scales + c, s);
            } else {
                __m256i mh = f2h_floor16(mn);
                minv = _mm512_cvtph_ps(mh);
                __m256i sh = f2h_ceil16(_mm512_div_ps(_mm512_sub_ps(mx, minv), vspan));
                s = _mm512_cvtph_ps(sh);
                _mm256_storeu_si256((__m256i *)((uint16_t *)zeros + c), mh);
                _mm256_storeu_si256((__m256i *)((uint16_t *)scales + c), sh);
            }
        } else if (scale_f32) {
            s = _mm512_div_ps(mx, vspan);
            _mm512_storeu_ps((float *)scales + c, s);
        } else {
            __m256i sh = f2h_ceil16(_mm512_div_ps(mx, vspan));
            s = _mm512_cvtph_ps(sh);
            _mm256_storeu_si256((__m256i *)((uint16_t *)scales + c), sh);
        }
        __mmask16 pos = _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ);
        _mm512_store_ps(inv + c, _mm512_maskz_div_ps(pos, _mm512_set1_ps(1.0f), s));
        _mm512_store_ps(m + c, minv);
    }
    /* pass 2: encode every token row */
    const int kind = is_int4 ? (zp ? K_U4 : K_I4) : (zp ? K_U8 : K_I8);
    const int64_t V = D / 16;
    for (int64_t t = 0; t < nt; t++) {
        __m512i q[32];
        for (int64_t i = 0; i < V; i++) {
            __m512 v = _mm512_loadu_ps(x + t * D + i * 16);
            if (zp) v = _mm512_sub_ps(v, _mm512_load_ps(m + i * 16));
            q[i] = quant16(v, _mm512_load_ps(inv + i * 16));
        }
        emit_row(q, V, kind, dst + t * row_bytes);
    }
    return 0;
}

/* specialised on the source dtype and zero-point so the inner loops carry no branches */
SC_AVX512 static int quant_chan_avx512(const void *const *rows, int src_mode, const float *mean, int64_t nt,
                                       int64_t D, int is_int4, int zp, int scale_f32, float *x, uint8_t *dst,
                                       int64_t row_bytes, void *scales, void *zeros) {
#define SC_CHAN(F16, ZP) quant_chan_body(rows, F16, mean, nt, D, is_int4, ZP, scale_f32, x, dst, row_bytes, scales, zeros)
    if (src_mode == SC_SRC_F16) return zp ? SC_CHAN(1, 1) : SC_CHAN(1, 0);
    return zp ? SC_CHAN(0, 1) : SC_CHAN(0, 0);
#undef SC_CHAN
}

/* ------------------------------------------------------------ decoding */
/* 16 codes of a row at channel c -> int32 lanes (int4: nibble pairs). */
SC_AVX512 static inline __m512 codes16(const uint8_t *row, int64_t c, int is_int4, int is_u8) {
    __m512i u;
    if (is_int4) {
        __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(row + c / 2)));
        __m128i t = _mm_or_si128(_mm_and_si128(w, _mm_set1_epi16(0x000F)),
                                 _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x00F0)), 4));
        u = _mm512_cvtepu8_epi32(t); /* bytes c[2i], c[2i+1] in channel order */
    } else {
        __m128i b = _mm_loadu_si128((const __m128i *)(row + c));
        u = is_u8 ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b);
    }
    return _mm512_cvtepi32_ps(u);
}

/* codes16 for int4 in SC_LAYOUT_K16: channels c..c+15 of token tt are words
 * c/8 and c/8 + 1 of its 16-token block (row0: the kv row's first byte) */
SC_AVX512 static inline __m512 codes16_k16(const uint8_t *row0, int64_t tt, int64_t c, int64_t rb) {
    const uint8_t *p = row0 + (tt & ~(int64_t)15) * rb + ((c / 8) * 16 + (tt & 15)) * 4;
    uint32_t w0, w1;
    memcpy(&w0, p, 4);
    memcpy(&w1, p + 64, 4);
    const __m128i w = _mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)((uint64_t)w0 | (uint64_t)w1 << 32)));
    const __m128i t = _mm_or_si128(_mm_and_si128(w, _mm_set1_epi16(0x000F)),
                                   _mm_slli_epi16(_mm_and_si128(w, _mm_set1_epi16(0x00F0)), 4));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(t));
}

/* the same for int8 codes: channels c..c+15 are words c/4 .. c/4 + 3 */
SC_AVX512 static inline __m512 codes16_k16_i8(const uint8_t *row0, int64_t tt, int64_t c, int64_t rb, int is_u8) {
    const uint8_t *p = row0 + (tt & ~(int64_t)15) * rb + ((c / 4) * 16 + (tt & 15)) * 4;
    int32_t w[4];
    for (int i = 0; i < 4; i++) memcpy(&w[i], p + 64 * i, 4);
    const __m128i b = _mm_loadu_si128((const __m128i *)w);
    return _mm512_cvtepi32_ps(is_u8 ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b));
}

SC_AVX512 static inline __m512 load_scales16(const sc_format *f, const void *base, int64_t i) {
    return f->scale_dtype == SC_DTYPE_F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)))
                                          : _mm512_loadu_ps((const float *)base + i);
}

/* Same values as decode_group: x = code * s + m, m = 0 (int8), -8 s (int4) or the minimum. */
SC_AVX512 static int decode_fast_avx512(const sc_format *f, const sc_store *st, int64_t row, int64_t t0, int64_t n,
                                        float *dst) {
    const int64_t D = f->head_dim, T = f->token_group, G = f->channel_group;
    if (f->encoding == SC_ENC_FP16) return 0;
    if (f->outliers || D % 16) return 0;
    const int is_int4 = f->encoding == SC_ENC_INT4, zp = f->zero_point;
    const int64_t rb = is_int4 ? D / 2 : D, ncell = D / G, groups = st->capacity / T;
    const uint8_t *data = (const uint8_t *)st->data + (row * st->capacity + t0) * rb;
    const uint8_t *row0 = (const uint8_t *)st->data + row * st->capacity * rb;
    const int k16 = f->layout == SC_LAYOUT_K16;
    if (k16 && G != 1) return 0;
    if (G == 1) {
        /* per-channel cells: one scale vector per token group */
        for (int64_t t = 0; t < n;) {
            const int64_t g = (t0 + t) / T, end = (g + 1) * T - t0 < n ? (g + 1) * T - t0 : n;
            const int64_t cell0 = (row * groups + g) * ncell;
            for (int64_t c = 0; c < D; c += 16) {
                const __m512 s = load_scales16(f, st->scales, cell0 + c);
                const __m512 m = zp ? load_scales16(f, st->zeros, cell0 + c)
                                    : (is_int4 ? _mm512_mul_ps(_mm512_set1_ps(-8.0f), s) : _mm512_setzero_ps());
                for (int64_t tt = t; tt < end; tt++) {
                    const __m512 cv = !k16 ? codes16(data + tt * rb, c, is_int4, zp)
                                      : is_int4 ? codes16_k16(row0, t0 + tt, c, rb)
                                                : codes16_k16_i8(row0, t0 + tt, c, rb, zp);
                    __m512 x = _mm512_mul_ps(cv, s);
                    _mm512_storeu_ps(dst + tt * D + c, (zp || is_int4) ? _mm512_add_ps(x, m) : x);
                }
            }
            t = end;
        }
        return 1;
    }
    if (T == 1 && G % 16 == 0 && ncell <= 16) {
        /* a token's cell scales (and minimums) as one vector; cell c broadcast by permute */
        const __mmask16 km = (__mmask16)((1u << ncell) - 1);
        for (int64_t t = 0; t < n; t++) {
            const int64_t cell0 = (row * groups + t0 + t) * ncell;
            const uint8_t *r = data + t * rb;
            __m512 sv, mv = _mm512_setzero_ps();
            if (f->scale_dtype == SC_DTYPE_F16) {
                sv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, (const uint16_t *)st->scales + cell0));
                if (zp) mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(km, (const uint16_t *)st->zeros + cell0));
            } else {
                sv = _mm512_maskz_loadu_ps(km, (const float *)st->scales + cell0);
                if (zp) mv = _mm512_maskz_loadu_ps(km, (const float *)st->zeros + cell0);
            }
            if (!zp && is_int4) mv = _mm512_mul_ps(_mm512_set1_ps(-8.0f), sv);
            for (int64_t cell = 0; cell < ncell; cell++) {
                const __m512i idx = _mm512_set1_epi32((int)cell);
                const __m512 s1 = _mm512_permutexvar_ps(idx, sv), m1 = _mm512_permutexvar_ps(idx, mv);
                for (int64_t c = cell * G; c < (cell + 1) * G; c += 16) {
                    __m512 x = _mm512_mul_ps(codes16(r, c, is_int4, zp), s1);
                    _mm512_storeu_ps(dst + t * D + c, (zp || is_int4) ? _mm512_add_ps(x, m1) : x);
                }
            }
        }
        return 1;
    }
    return 0;
}

/* Block-Hadamard rotation (sc_rotate_f32) with a block of nv vectors held in
 * registers: the butterflies of h = 1, 2, 4, 8 inside each vector (a lane
 * permute and a blend of a + s / s - a, as rotate_avx2 does for h < 8), then
 * h >= 16 between vectors, then the 1/sqrt(block) scale -- per element the
 * portable loop's operations in its order, so the results are bitwise the
 * same. rotate_avx2 runs the stages h >= 8 through memory (two loads and two
 * stores per vector and stage): it was ~15% of an int8 cache's append with
 * rotated V (perf; docs/benchmarks.md, session 17). */
SC_AVX512 static inline __attribute__((always_inline)) __m512 bfly16(__m512 a, __m512 s, __mmask16 upper) {
    return _mm512_mask_blend_ps(upper, _mm512_add_ps(a, s), _mm512_sub_ps(s, a));
}
/* the stages h = 1, 2, 4, 8 of one vector */
SC_AVX512 static inline __attribute__((always_inline)) __m512 bfly_in16(__m512 a) {
    a = bfly16(a, _mm512_permute_ps(a, _MM_SHUFFLE(2, 3, 0, 1)), 0xAAAA);
    a = bfly16(a, _mm512_permute_ps(a, _MM_SHUFFLE(1, 0, 3, 2)), 0xCCCC);
    a = bfly16(a, _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(2, 3, 0, 1)), 0xF0F0);
    return bfly16(a, _mm512_shuffle_f32x4(a, a, _MM_SHUFFLE(1, 0, 3, 2)), 0xFF00);
}
/* the stages h >= 16 between the block's nv vectors, then the scale */
SC_AVX512 static inline __attribute__((always_inline)) void bfly_across(__m512 *v, const int nv, __m512 norm) {
    for (int h = 1; h < nv; h *= 2)
        for (int i = 0; i < nv; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                const __m512 a = v[j], b = v[j + h];
                v[j] = _mm512_add_ps(a, b);
                v[j + h] = _mm512_sub_ps(a, b);
            }
    for (int i = 0; i < nv; i++) v[i] = _mm512_mul_ps(v[i], norm);
}
SC_AVX512 static inline __attribute__((always_inline)) void rotate_block_avx512(float *u, __m512 norm, const int nv) {
    __m512 v[16];
    for (int i = 0; i < nv; i++) v[i] = bfly_in16(_mm512_loadu_ps(u + 16 * i));
    bfly_across(v, nv, norm);
    for (int i = 0; i < nv; i++) _mm512_storeu_ps(u + 16 * i, v[i]);
}
SC_AVX512 static void rotate_avx512(float *x, int64_t n, int64_t stride, int32_t d) {
    const int32_t hb = sc_rotation_block(d);
    if (hb < 16 || hb > 256) { /* head dims are multiples of 16 (blocks >= 16); anything else as before */
        sc_row_kernels_avx2.rotate(x, n, stride, d);
        return;
    }
    const __m512 norm = _mm512_set1_ps(1.0f / sqrtf((float)hb));
    for (int64_t r = 0; r < n; r++)
        for (int32_t base = 0; base < d; base += hb) { /* the block count a constant in each instance */
            float *u = x + r * stride + base;
            switch (hb / 16) {
            case 1: rotate_block_avx512(u, norm, 1); break;
            case 2: rotate_block_avx512(u, norm, 2); break;
            case 4: rotate_block_avx512(u, norm, 4); break;
            case 8: rotate_block_avx512(u, norm, 8); break;
            default: rotate_block_avx512(u, norm, 16); break;
            }
        }
}

/* Rotated per-token formats (the built-in policies' V), sc_rot_fused_dims:
 * per token the row is loaded (fp16-rounded, minus the mean, validated),
 * rotated by rotate_block_avx512's butterflies in registers and encoded by
 * the per-token encoder -- the values load_f16/load_f32 + sc_rotate_f32 +
 * quant_token produce, without the row's trips through memory and the
 * separate finiteness pass (sc_quantize_ex classifies a failure afterwards,
 * as for the other fused kernels). Until 2026-12-04 (session 19) only d128
 * had it; the other head dims packed at 0.4-0.65x its GB/s. */
/* sc_rotation_block, inline so that it folds for a constant D */
static inline int64_t rot_block(int64_t D) {
    int64_t b = 1;
    while (b < 256 && D % (b * 2) == 0) b *= 2;
    return b;
}
/* load, validate and rotate one token of D channels into v (0: a non-finite input) */
SC_AVX512 static inline __attribute__((always_inline)) int rot_load(const char *p, int src_mode, const float *mean,
                                                                   __m512 *v, const int64_t D) {
    const int64_t nv = D / 16, nb = rot_block(D) / 16;
    __m512 chk = _mm512_setzero_ps();
    for (int64_t i = 0; i < nv; i++) v[i] = bfly_in16(load16(p, src_mode, 16 * i, mean, &chk));
    const __m512 norm = _mm512_set1_ps(1.0f / sqrtf((float)rot_block(D)));
    for (int64_t b = 0; b < nv; b += nb) bfly_across(v + b, (int)nb, norm);
    return !nonfinite(chk);
}
/* Two tokens per iteration up to d128: one token's load-rotate-round chain
 * (~100 cycles of latency, ~250 instructions at d128) nearly fills the
 * reorder window, so tokens one at a time ran at their latency. Wider
 * tokens go one at a time (two of them would not fit the 32 registers). */
SC_AVX512 static inline __attribute__((always_inline)) int64_t quant_rot_body(
        const void *src, int64_t src_stride, int64_t n, int src_mode, const float *mean, const int64_t D,
        const int64_t G, int is_int4, int scale_f32, uint8_t *dst, int64_t row_bytes, void *scales) {
    const int64_t es = src_mode == SC_SRC_F16 ? 2 : 4, ss = scale_f32 ? 4 : 2, ncell = D / G;
#define QROT_ENC(v, t)                                                                                                \
    (G == D    ? quant_x_one(v, D / 16, is_int4, scale_f32, dst + (t) * row_bytes, (char *)scales + (t) * ncell * ss) \
     : D <= 128 ? quant_x_g32(v, D, is_int4, scale_f32, dst + (t) * row_bytes, (char *)scales + (t) * ncell * ss)   \
               : quant_x_body(v, D, G, is_int4, scale_f32, dst + (t) * row_bytes, (char *)scales + (t) * ncell * ss))
    int64_t t = 0;
    if (D <= 128)
        for (; t + 2 <= n; t += 2) {
            __m512 a[8], b[8];
            const int oka = rot_load((const char *)src + t * src_stride * es, src_mode, mean, a, D);
            const int okb = rot_load((const char *)src + (t + 1) * src_stride * es, src_mode, mean, b, D);
            if (!oka || QROT_ENC(a, t)) return t;
            if (!okb || QROT_ENC(b, t + 1)) return t + 1;
        }
    for (; t < n; t++) {
        __m512 a[16];
        if (!rot_load((const char *)src + t * src_stride * es, src_mode, mean, a, D) || QROT_ENC(a, t)) return t;
    }
#undef QROT_ENC
    return n;
}
SC_AVX512 static int64_t quant_rot_tokens_avx512(const void *src, int64_t src_stride, int64_t n, int src_mode,
                                                 const float *mean, int64_t D, int64_t G, int is_int4, int scale_f32,
                                                 uint8_t *dst, int64_t row_bytes, void *scales) {
    /* (D, G) as constants in each instance: sc_rot_fused_dims */
#define QROT(Dc, Gc) quant_rot_body(src, src_stride, n, src_mode, mean, Dc, Gc, is_int4, scale_f32, dst, row_bytes, scales)
    switch (D) {
    case 32: return QROT(32, 32);
    case 64: return G == 32 ? QROT(64, 32) : QROT(64, 64);
    case 80: return QROT(80, 80);
    case 96: return G == 32 ? QROT(96, 32) : QROT(96, 96);
    case 128: return G == 32 ? QROT(128, 32) : QROT(128, 128);
    case 192: return G == 32 ? QROT(192, 32) : QROT(192, 192);
    default: return G == 32 ? QROT(256, 32) : QROT(256, 256);
    }
#undef QROT
}

sc_row_kernels sc_row_kernels_avx512;

/* The AVX2 row kernels plus the fused AVX-512 kernels and the rotation. */
void sc_row_kernels_avx512_init(void) {
    sc_row_kernels_avx512 = sc_row_kernels_avx2;
    sc_row_kernels_avx512.quant_token = quant_token_avx512;
    sc_row_kernels_avx512.quant_chan = quant_chan_avx512;
    sc_row_kernels_avx512.quant_tokens = quant_tokens_avx512;
    sc_row_kernels_avx512.decode_fast = decode_fast_avx512;
    sc_row_kernels_avx512.rotate = rotate_avx512;
    sc_row_kernels_avx512.quant_rot_tokens = quant_rot_tokens_avx512;
}

#endif /* SC_X86 */
