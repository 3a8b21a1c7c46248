/*
 * pack_avx2.c -- AVX2 + F16C row kernels for pack.c.
 *
 * Compiled for the baseline ISA; only these functions carry target
 * attributes and are reached only when cpu.c found AVX2/FMA/F16C usable.
 * Each kernel reproduces the portable one bit for bit: same operation order,
 * round-to-nearest-even, no fused multiply-add.
 */
#include "../sc_internal.h"

#ifdef SC_X86
#include <immintrin.h>

#define SC_AVX2 __attribute__((target("avx2,fma,f16c")))

SC_AVX2 static void load_f16_avx2(const uint16_t *src, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i)));
        if (mean) v = _mm256_sub_ps(v, _mm256_loadu_ps(mean + i));
        _mm256_storeu_ps(dst + i, v);
    }
    for (; i < n; i++) dst[i] = sc_h2f(src[i]) - (mean ? mean[i] : 0.0f);
}

SC_AVX2 static void load_f32_avx2(const float *src, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 v = _mm256_cvtph_ps(h);
        if (mean) v = _mm256_sub_ps(v, _mm256_loadu_ps(mean + i));
        _mm256_storeu_ps(dst + i, v);
    }
    for (; i < n; i++) dst[i] = sc_h2f(sc_f2h(src[i])) - (mean ? mean[i] : 0.0f);
}

SC_AVX2 static void absmax_acc_avx2(const float *x, float *colmax, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(colmax + i, _mm256_max_ps(a, _mm256_loadu_ps(colmax + i)));
    }
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        colmax[i] = a > colmax[i] ? a : colmax[i];
    }
}

SC_AVX2 static void minmax_acc_avx2(const float *x, float *colmin, float *colmax, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(colmin + i, _mm256_min_ps(v, _mm256_loadu_ps(colmin + i)));
        _mm256_storeu_ps(colmax + i, _mm256_max_ps(v, _mm256_loadu_ps(colmax + i)));
    }
    for (; i < n; i++) {
        colmin[i] = x[i] < colmin[i] ? x[i] : colmin[i];
        colmax[i] = x[i] > colmax[i] ? x[i] : colmax[i];
    }
}

SC_AVX2 static inline __m256i quant8(const float *x, const float *m, const float *inv, __m256 lo, __m256 hi) {
    __m256 v = _mm256_loadu_ps(x);
    if (m) v = _mm256_sub_ps(v, _mm256_loadu_ps(m));
    v = _mm256_round_ps(_mm256_mul_ps(v, _mm256_loadu_ps(inv)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    return _mm256_cvttps_epi32(v);
}

SC_AVX2 static void quant_i8_avx2(const float *x, const float *m, const float *inv, int8_t *q,
                                  int64_t n, int32_t lo, int32_t hi) {
    const __m256 vlo = _mm256_set1_ps((float)lo), vhi = _mm256_set1_ps((float)hi);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = quant8(x + i, m ? m + i : NULL, inv + i, vlo, vhi);
        __m256i b = quant8(x + i + 8, m ? m + i + 8 : NULL, inv + i + 8, vlo, vhi);
        __m256i c = quant8(x + i + 16, m ? m + i + 16 : NULL, inv + i + 16, vlo, vhi);
        __m256i d = quant8(x + i + 24, m ? m + i + 24 : NULL, inv + i + 24, vlo, vhi);
        __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
        /* values are already in [lo, hi]; unsigned codes up to 255 need packus */
        __m256i r = hi > 127 ? _mm256_packus_epi16(ab, cd) : _mm256_packs_epi16(ab, cd);
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(r, perm));
    }
    for (; i < n; i++) {
        float v = nearbyintf((x[i] - (m ? m[i] : 0.0f)) * inv[i]);
        v = v < (float)lo ? (float)lo : v;
        v = v > (float)hi ? (float)hi : v;
        q[i] = (int8_t)(int32_t)v;
    }
}

/* 8 codes (the low 8 bytes of b) -> dst[0..8) = code * s + m */
SC_AVX2 static inline void dequant8_avx2(__m128i b, int is_u8, const float *s, const float *m, float *dst) {
    __m256i w = is_u8 ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b);
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(w), _mm256_loadu_ps(s));
    if (m) v = _mm256_add_ps(v, _mm256_loadu_ps(m));
    _mm256_storeu_ps(dst, v);
}

SC_AVX2 static void dequant_i8_avx2(const int8_t *q, int is_u8, const float *s, const float *m,
                                    float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        dequant8_avx2(_mm_loadl_epi64((const __m128i *)(q + i)), is_u8, s + i, m ? m + i : NULL, dst + i);
    for (; i < n; i++) {
        float c = is_u8 ? (float)(uint8_t)q[i] : (float)q[i];
        float v = c * s[i];
        dst[i] = m ? v + m[i] : v;
    }
}

/* channels i..i+7 of token tk are words i/4, i/4 + 1 of the block, 64 bytes apart */
SC_AVX2 static void dequant_i8_k16_avx2(const uint8_t *blk, int64_t tk, int is_u8, const float *s, const float *m,
                                        float *dst, int64_t n) {
    const uint8_t *p = blk + 4 * tk;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int32_t w0, w1;
        memcpy(&w0, p + 16 * i, 4);
        memcpy(&w1, p + 16 * i + 64, 4);
        dequant8_avx2(_mm_insert_epi32(_mm_cvtsi32_si128(w0), w1, 1), is_u8, s + i, m ? m + i : NULL, dst + i);
    }
    if (i < n) { /* a last word (n % 8 == 4): dequant_i8's scalar tail */
        int8_t q[4];
        memcpy(q, p + 16 * i, 4);
        dequant_i8_avx2(q, is_u8, s + i, m ? m + i : NULL, dst + i, n - i);
    }
}

SC_AVX2 static void store_f32_avx2(const float *x, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        if (mean) v = _mm256_add_ps(v, _mm256_loadu_ps(mean + i));
        _mm256_storeu_ps(dst + i, v);
    }
    for (; i < n; i++) dst[i] = mean ? x[i] + mean[i] : x[i];
}

SC_AVX2 static void store_f16_avx2(const float *x, const float *mean, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        if (mean) v = _mm256_add_ps(v, _mm256_loadu_ps(mean + i));
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; i++) dst[i] = sc_f2h(mean ? x[i] + mean[i] : x[i]);
}

SC_AVX2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

/* 16 codes (int32 in two vectors, already clamped) -> 16 int8 */
SC_AVX2 static inline __m128i pack16_i8(__m256i a, __m256i b) {
    __m256i w = _mm256_packs_epi32(a, b);            /* a0-3 b0-3 | a4-7 b4-7 (int16) */
    __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
    __m128i bytes = _mm_packs_epi16(lo, hi);         /* a0-3 b0-3 a4-7 b4-7 */
    return _mm_shuffle_epi8(bytes, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
}

/* Scales for n cell maxima, vectorised: s = ceil_fp16(a / qmax) (or a / qmax
 * in fp32), inv = 1 / s (0 where s == 0). Same rounding as sc_f2h_ceil. */
SC_AVX2 static void cell_scales(const float *amax, int64_t n, float qmax, int scale_f32, void *scales,
                                float *inv) {
    const __m256 vq = _mm256_set1_ps(qmax), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 want = _mm256_div_ps(_mm256_loadu_ps(amax + i), vq), sv;
        if (scale_f32) {
            sv = want;
            _mm256_storeu_ps((float *)scales + i, sv);
        } else {
            __m128i h = _mm256_cvtps_ph(want, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256 back = _mm256_cvtph_ps(h);
            /* +1 ulp where rounding went down (values are >= 0) */
            __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(back, want, _CMP_LT_OQ));
            __m128i bump = _mm_packs_epi32(_mm256_castsi256_si128(lt), _mm256_extracti128_si256(lt, 1));
            h = _mm_sub_epi16(h, bump);
            _mm_storeu_si128((__m128i *)((uint16_t *)scales + i), h);
            sv = _mm256_cvtph_ps(h);
        }
        __m256 r = _mm256_div_ps(one, sv);
        _mm256_storeu_ps(inv + i, _mm256_and_ps(r, _mm256_cmp_ps(sv, zero, _CMP_GT_OQ)));
    }
    for (; i < n; i++) {
        float s;
        if (scale_f32) {
            s = amax[i] / qmax;
            ((float *)scales)[i] = s;
        } else {
            uint16_t h = sc_f2h_ceil(amax[i] / qmax);
            ((uint16_t *)scales)[i] = h;
            s = sc_h2f(h);
        }
        inv[i] = s > 0.0f ? 1.0f / s : 0.0f;
    }
}

/* Load one token of D values into x (fp16-rounded, minus the mean),
 * validating the raw values in the same pass; 0 on NaN/inf. */
SC_AVX2 static inline __attribute__((always_inline)) int load_token_avx2(const void *src, int src_mode,
                                                                        const float *mean, int64_t D, float *x) {
    int bad = 0;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < D; i += 8) {
        __m256 v;
        if (src_mode == SC_SRC_F16) v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)src + i)));
        else if (src_mode == SC_SRC_F32) v = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps((const float *)src + i),
                                                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        else v = _mm256_loadu_ps((const float *)src + i);
        /* validate in the same pass: NaN or inf (fp32 input beyond fp16 rounded to inf) */
        bad |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(3.4e38f), _CMP_NLE_UQ));
        if (mean) v = _mm256_sub_ps(v, _mm256_loadu_ps(mean + i));
        _mm256_store_ps(x + i, v);
    }
    return !bad;
}

/* quant_token_avx2's encoding of a loaded token x */
SC_AVX2 static inline __attribute__((always_inline)) int quant_x_avx2(const float *x, int64_t D, int64_t G,
                                                                     int is_int4, int scale_f32, uint8_t *dst,
                                                                     void *scales) {
    float amax[64] __attribute__((aligned(32))), inv[64] __attribute__((aligned(32)));
    uint16_t sh[64];
    float sf[64];
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const int64_t ncell = D / G;
    float worst = 0.0f;
    for (int64_t c = 0; c < ncell; c++) {
        __m256 am = _mm256_setzero_ps();
        for (int64_t j = 0; j < G; j += 8) am = _mm256_max_ps(am, _mm256_andnot_ps(sign, _mm256_load_ps(x + c * G + j)));
        amax[c] = hmax8(am);
        worst = amax[c] > worst ? amax[c] : worst;
    }
    if (!(worst <= 3.4e38f)) return -1; /* NaN/Inf only: scales of |x| <= 2*65504 fit fp16 */
    const int32_t qmax = is_int4 ? 7 : 127;
    if (!scale_f32)
        for (int64_t c = 0; c < ncell; c++)
            if (amax[c] / (float)qmax > SC_FP16_MAX) return -1;
    /* pad to whole vectors so the scale math never takes the scalar tail */
    const int64_t nv = (ncell + 7) & ~(int64_t)7;
    for (int64_t c = ncell; c < nv; c++) amax[c] = 0.0f;
    cell_scales(amax, nv, (float)qmax, scale_f32, scale_f32 ? (void *)sf : (void *)sh, inv);
    if (scale_f32) memcpy(scales, sf, (size_t)ncell * 4);
    else memcpy(scales, sh, (size_t)ncell * 2);
    const __m256 vlo = _mm256_set1_ps((float)-qmax), vhi = _mm256_set1_ps((float)qmax);
    for (int64_t c = 0; c < ncell; c++) {
        const __m256 vinv = _mm256_set1_ps(inv[c]);
        for (int64_t j = c * G; j < (c + 1) * G; j += 16) {
            __m256 v0 = _mm256_round_ps(_mm256_mul_ps(_mm256_load_ps(x + j), vinv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256 v1 = _mm256_round_ps(_mm256_mul_ps(_mm256_load_ps(x + j + 8), vinv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m256i q0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(v0, vlo), vhi));
            __m256i q1 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(v1, vlo), vhi));
            __m128i b = pack16_i8(q0, q1);
            if (!is_int4) {
                _mm_storeu_si128((__m128i *)(dst + j), b);
            } else {
                /* codes + 8 in [1, 15]; byte i = c[2i] | c[2i+1] << 4 */
                __m128i u = _mm_add_epi8(b, _mm_set1_epi8(8));
                __m128i t = _mm_or_si128(_mm_and_si128(u, _mm_set1_epi16(0x000F)),
                                         _mm_and_si128(_mm_srli_epi16(u, 4), _mm_set1_epi16(0x00F0)));
                _mm_storel_epi64((__m128i *)(dst + j / 2), _mm_packus_epi16(t, t));
            }
        }
    }
    return 0;
}

SC_AVX2 static int quant_token_avx2(const void *src, int src_mode, const float *mean, int64_t D, int64_t G,
                                    int is_int4, int scale_f32, uint8_t *dst, void *scales) {
    float x[512] __attribute__((aligned(32)));
    if (!load_token_avx2(src, src_mode, mean, D, x)) return -1;
    return quant_x_avx2(x, D, G, is_int4, scale_f32, dst, scales);
}

/* Block-Hadamard of one row of d values, vectorised: stages h = 1, 2, 4
 * inside each 8-lane vector (a permute and a blend: the same a+b / a-b per
 * element as the portable loop), stages h >= 8 between whole vectors. */
SC_AVX2 static inline __attribute__((always_inline)) void rotate_row_avx2(float *v, int32_t d, int32_t hb,
                                                                         __m256 norm) {
    for (int32_t base = 0; base < d; base += hb) {
        float *u = v + base;
        for (int32_t i = 0; i < hb; i += 8) {
            __m256 a = _mm256_loadu_ps(u + i), s;
            s = _mm256_permute_ps(a, _MM_SHUFFLE(2, 3, 0, 1));
            a = _mm256_blend_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), 0xAA);
            s = _mm256_permute_ps(a, _MM_SHUFFLE(1, 0, 3, 2));
            a = _mm256_blend_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), 0xCC);
            s = _mm256_permute2f128_ps(a, a, 1);
            a = _mm256_blend_ps(_mm256_add_ps(a, s), _mm256_sub_ps(s, a), 0xF0);
            _mm256_storeu_ps(u + i, a);
        }
        for (int32_t h = 8; h < hb; h *= 2)
            for (int32_t i = 0; i < hb; i += 2 * h)
                for (int32_t j = i; j < i + h; j += 8) {
                    __m256 a = _mm256_loadu_ps(u + j), b = _mm256_loadu_ps(u + j + h);
                    _mm256_storeu_ps(u + j, _mm256_add_ps(a, b));
                    _mm256_storeu_ps(u + j + h, _mm256_sub_ps(a, b));
                }
    }
    for (int32_t c = 0; c < d; c += 8) _mm256_storeu_ps(v + c, _mm256_mul_ps(_mm256_loadu_ps(v + c), norm));
}
SC_AVX2 static void rotate_avx2(float *x, int64_t n, int64_t stride, int32_t d) {
    const int32_t hb = sc_rotation_block(d);
    const __m256 norm = _mm256_set1_ps(1.0f / sqrtf((float)hb));
    for (int64_t r = 0; r < n; r++) rotate_row_avx2(x + r * stride, d, hb, norm);
}

/* Rotated per-token formats (sc_rot_fused_dims): per token, load + validate,
 * rotate and encode on one L1-resident row -- the values, codes and scales of
 * load_f16/load_f32 + rotate_avx2 + quant_token_avx2, without the separate
 * finiteness pass over the input and the chunk scratch. Returns n or the
 * first failing token (sc_quantize_ex classifies it). */
SC_AVX2 static int64_t quant_rot_tokens_avx2(const void *src, int64_t src_stride, int64_t n, int src_mode,
                                             const float *mean, int64_t D, int64_t G, int is_int4, int scale_f32,
                                             uint8_t *dst, int64_t row_bytes, void *scales) {
    const int64_t es = src_mode == SC_SRC_F16 ? 2 : 4, ss = scale_f32 ? 4 : 2, ncell = D / G;
    const int32_t hb = sc_rotation_block((int32_t)D);
    const __m256 norm = _mm256_set1_ps(1.0f / sqrtf((float)hb));
    float x[512] __attribute__((aligned(32)));
    for (int64_t t = 0; t < n; t++) {
        if (!load_token_avx2((const char *)src + t * src_stride * es, src_mode, mean, D, x)) return t;
        rotate_row_avx2(x, (int32_t)D, hb, norm);
        if (quant_x_avx2(x, D, G, is_int4, scale_f32, dst + t * row_bytes, (char *)scales + t * ncell * ss)) return t;
    }
    return n;
}

const sc_row_kernels sc_row_kernels_avx2 = {
    load_f16_avx2, load_f32_avx2, absmax_acc_avx2, minmax_acc_avx2,
    quant_i8_avx2, dequant_i8_avx2, store_f32_avx2, store_f16_avx2, quant_token_avx2, NULL, rotate_avx2, NULL, NULL,
    dequant_i8_k16_avx2,
    quant_rot_tokens_avx2,
};

#endif /* SC_X86 */
