/*
 * pack_neon.c -- NEON row kernels for pack.c (arm64: Apple Silicon, aarch64
 * Linux). NEON is the arm64 baseline, so these need no target attributes.
 * Each reproduces the portable kernel bit for bit: fp16 conversions and
 * vcvtnq round to nearest even (the default FPCR mode), codes are clamped
 * before rounding (as the portable kernel does), no fused multiply-add.
 * Verified under qemu in CI (.ci/arm64, tests/c/test_core.c).
 */
#include "../sc_internal.h"

#ifdef SC_ARM64
#include <arm_neon.h>

static void load_f16_neon(const uint16_t *src, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(src + i));
        float32x4_t a = vcvt_f32_f16(vget_low_f16(h)), b = vcvt_high_f32_f16(h);
        if (mean) {
            a = vsubq_f32(a, vld1q_f32(mean + i));
            b = vsubq_f32(b, vld1q_f32(mean + i + 4));
        }
        vst1q_f32(dst + i, a);
        vst1q_f32(dst + i + 4, b);
    }
    for (; i < n; i++) dst[i] = sc_h2f(src[i]) - (mean ? mean[i] : 0.0f);
}

static void load_f32_neon(const float *src, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vcvt_f32_f16(vcvt_f16_f32(vld1q_f32(src + i)));
        if (mean) v = vsubq_f32(v, vld1q_f32(mean + i));
        vst1q_f32(dst + i, v);
    }
    for (; i < n; i++) dst[i] = sc_h2f(sc_f2h(src[i])) - (mean ? mean[i] : 0.0f);
}

static void absmax_acc_neon(const float *x, float *colmax, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(colmax + i, vmaxq_f32(vabsq_f32(vld1q_f32(x + i)), vld1q_f32(colmax + i)));
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        colmax[i] = a > colmax[i] ? a : colmax[i];
    }
}

static void minmax_acc_neon(const float *x, float *colmin, float *colmax, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        vst1q_f32(colmin + i, vminq_f32(v, vld1q_f32(colmin + i)));
        vst1q_f32(colmax + i, vmaxq_f32(v, vld1q_f32(colmax + i)));
    }
    for (; i < n; i++) {
        colmin[i] = x[i] < colmin[i] ? x[i] : colmin[i];
        colmax[i] = x[i] > colmax[i] ? x[i] : colmax[i];
    }
}

static inline int32x4_t quant4(const float *x, const float *m, const float *inv, float32x4_t lo, float32x4_t hi) {
    float32x4_t v = vld1q_f32(x);
    if (m) v = vsubq_f32(v, vld1q_f32(m));
    v = vmulq_f32(v, vld1q_f32(inv));
    v = vminq_f32(vmaxq_f32(v, lo), hi); /* clamp, then round: same codes as the portable kernel */
    return vcvtnq_s32_f32(v);
}

static void quant_i8_neon(const float *x, const float *m, const float *inv, int8_t *q, int64_t n, int32_t lo,
                          int32_t hi) {
    const float32x4_t vlo = vdupq_n_f32((float)lo), vhi = vdupq_n_f32((float)hi);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int32x4_t a = quant4(x + i, m ? m + i : NULL, inv + i, vlo, vhi);
        int32x4_t b = quant4(x + i + 4, m ? m + i + 4 : NULL, inv + i + 4, vlo, vhi);
        int16x8_t w = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
        /* codes are in [lo, hi]: signed [-127, 127] or unsigned [0, 255] */
        int8x8_t c = hi > 127 ? vreinterpret_s8_u8(vqmovun_s16(w)) : vqmovn_s16(w);
        vst1_s8(q + i, c);
    }
    for (; i < n; i++) {
        float v = (x[i] - (m ? m[i] : 0.0f)) * inv[i];
        v = v < (float)lo ? (float)lo : v;
        v = v > (float)hi ? (float)hi : v;
        q[i] = (int8_t)(int32_t)nearbyintf(v);
    }
}

/* 8 codes -> dst[0..8) = code * s + m */
static inline void dequant8_neon(uint8x8_t b, int is_u8, const float *s, const float *m, float *dst) {
    int16x8_t w = is_u8 ? vreinterpretq_s16_u16(vmovl_u8(b)) : vmovl_s8(vreinterpret_s8_u8(b));
    float32x4_t lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w))), hi = vcvtq_f32_s32(vmovl_high_s16(w));
    lo = vmulq_f32(lo, vld1q_f32(s));
    hi = vmulq_f32(hi, vld1q_f32(s + 4));
    if (m) {
        lo = vaddq_f32(lo, vld1q_f32(m));
        hi = vaddq_f32(hi, vld1q_f32(m + 4));
    }
    vst1q_f32(dst, lo);
    vst1q_f32(dst + 4, hi);
}

static void dequant_i8_neon(const int8_t *q, int is_u8, const float *s, const float *m, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) dequant8_neon(vld1_u8((const uint8_t *)q + i), is_u8, s + i, m ? m + i : NULL, dst + i);
    for (; i < n; i++) {
        float c = is_u8 ? (float)(uint8_t)q[i] : (float)q[i];
        float v = c * s[i];
        dst[i] = m ? v + m[i] : v;
    }
}

/* dequant_i8 of token tk of a k16 block: channels i..i+7 are words i/4 and
 * i/4 + 1, 64 bytes apart, loaded as the two lanes of one 64-bit vector */
static void dequant_i8_k16_neon(const uint8_t *blk, int64_t tk, int is_u8, const float *s, const float *m,
                                float *dst, int64_t n) {
    const uint8_t *p = blk + 4 * tk;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint32x2_t wv = vdup_n_u32(0);
        wv = vld1_lane_u32((const uint32_t *)(const void *)(p + 16 * i), wv, 0);
        wv = vld1_lane_u32((const uint32_t *)(const void *)(p + 16 * i + 64), wv, 1);
        dequant8_neon(vreinterpret_u8_u32(wv), is_u8, s + i, m ? m + i : NULL, dst + i);
    }
    if (i < n) { /* a last word (n % 8 == 4): dequant_i8's scalar tail */
        int8_t q[4];
        memcpy(q, p + 16 * i, 4);
        dequant_i8_neon(q, is_u8, s + i, m ? m + i : NULL, dst + i, n - i);
    }
}

static void store_f32_neon(const float *x, const float *mean, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        if (mean) v = vaddq_f32(v, vld1q_f32(mean + i));
        vst1q_f32(dst + i, v);
    }
    for (; i < n; i++) dst[i] = mean ? x[i] + mean[i] : x[i];
}

static void store_f16_neon(const float *x, const float *mean, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        if (mean) v = vaddq_f32(v, vld1q_f32(mean + i));
        vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(v)));
    }
    for (; i < n; i++) dst[i] = sc_f2h(mean ? x[i] + mean[i] : x[i]);
}

sc_row_kernels sc_row_kernels_neon;

/* The portable table with the NEON row kernels in place. */
void sc_row_kernels_neon_init(void) {
    sc_row_kernels_neon = sc_row_kernels_portable;
    sc_row_kernels_neon.load_f16 = load_f16_neon;
    sc_row_kernels_neon.load_f32 = load_f32_neon;
    sc_row_kernels_neon.absmax_acc = absmax_acc_neon;
    sc_row_kernels_neon.minmax_acc = minmax_acc_neon;
    sc_row_kernels_neon.quant_i8 = quant_i8_neon;
    sc_row_kernels_neon.dequant_i8 = dequant_i8_neon;
    sc_row_kernels_neon.dequant_i8_k16 = dequant_i8_k16_neon;
    sc_row_kernels_neon.store_f32 = store_f32_neon;
    sc_row_kernels_neon.store_f16 = store_f16_neon;
}

#endif /* SC_ARM64 */
