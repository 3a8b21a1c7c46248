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

SC_AVX2 static void dequant_i8_avx2(const int8_t *q, int is_u8, const float *s, const float *m,
                                    float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(q + i));
        __m256i w = is_u8 ? _mm256_cvtepu8_epi32(b) : _mm256_cvtepi8_epi32(b);
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(w), _mm256_loadu_ps(s + i));
        if (m) v = _mm256_add_ps(v, _mm256_loadu_ps(m + i));
        _mm256_storeu_ps(dst + i, v);
    }
    for (; i < n; i++) {
        float c = is_u8 ? (float)(uint8_t)q[i] : (float)q[i];
        float v = c * s[i];
        dst[i] = m ? v + m[i] : v;
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

const sc_row_kernels sc_row_kernels_avx2 = {
    load_f16_avx2, load_f32_avx2, absmax_acc_avx2, minmax_acc_avx2,
    quant_i8_avx2, dequant_i8_avx2, store_f32_avx2, store_f16_avx2,
};

#endif /* SC_X86 */
