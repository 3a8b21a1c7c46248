/*
 * attention_arm64.c -- the arm64 instances of the attention item: NEON
 * microkernels, and NEON + dotprod (int8 K scores in integer arithmetic with
 * the query split into three int8 parts).
 */
#include "attn_body.h"

#ifdef SC_ARM64
#include <arm_neon.h>

/* NEON: 4 rows x 4 keys of accumulators (16 x 4 lanes), horizontal sums by vaddvq. */
static void qk_neon(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t j0 = 0; j0 < nt; j0 += 4) {
            const int64_t nk = nt - j0 < 4 ? nt - j0 : 4;
            float32x4_t acc[4][4];
            for (int rr = 0; rr < 4; rr++)
                for (int kk = 0; kk < 4; kk++) acc[rr][kk] = vdupq_n_f32(0.0f);
            for (int64_t c = 0; c < D; c += 4) {
                float32x4_t kv[4];
                for (int kk = 0; kk < 4; kk++) kv[kk] = kk < nk ? vld1q_f32(kt + (j0 + kk) * D + c) : vdupq_n_f32(0.0f);
                for (int rr = 0; rr < 4; rr++) {
                    if (rr >= nr) break;
                    const float32x4_t qv = vld1q_f32(q + (r0 + rr) * D + c);
                    for (int kk = 0; kk < 4; kk++) acc[rr][kk] = vfmaq_f32(acc[rr][kk], qv, kv[kk]);
                }
            }
            for (int rr = 0; rr < nr; rr++)
                for (int kk = 0; kk < nk; kk++) s[(r0 + rr) * TL + j0 + kk] = vaddvq_f32(acc[rr][kk]);
        }
    }
}

/* O += P V with 4 rows x 16 channels of accumulators. */
static void pv_neon(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 16) {
            float32x4_t acc[4][4];
            for (int rr = 0; rr < 4; rr++)
                for (int k = 0; k < 4; k++)
                    acc[rr][k] = rr < nr ? vld1q_f32(o + (r0 + rr) * D + c0 + 4 * k) : vdupq_n_f32(0.0f);
            for (int64_t j = 0; j < nt; j++) {
                float32x4_t v[4];
                for (int k = 0; k < 4; k++) v[k] = vld1q_f32(vt + j * D + c0 + 4 * k);
                for (int rr = 0; rr < 4; rr++) {
                    if (rr >= nr) break;
                    const float pj = p[(r0 + rr) * TL + j];
                    for (int k = 0; k < 4; k++) acc[rr][k] = vfmaq_n_f32(acc[rr][k], v[k], pj);
                }
            }
            for (int rr = 0; rr < nr; rr++)
                for (int k = 0; k < 4; k++) vst1q_f32(o + (r0 + rr) * D + c0 + 4 * k, acc[rr][k]);
        }
    }
}

/* exp2_neg on 4 lanes (same polynomial; 2^round(x) built in the exponent field) */
static inline float32x4_t exp2_neg4(float32x4_t x) {
    const float32x4_t lo = vdupq_n_f32(-127.0f);
    const uint32x4_t dead = vcleq_f32(x, lo);
    x = vmaxq_f32(x, lo);
    const float32x4_t xi = vrndnq_f32(x);
    const float32x4_t f = vsubq_f32(x, xi);
    float32x4_t p = vdupq_n_f32(1.5403530393381606e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3333558146428443e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(9.6181291076284772e-3f), p, f);
    p = vfmaq_f32(vdupq_n_f32(5.5504108664821580e-2f), p, f);
    p = vfmaq_f32(vdupq_n_f32(2.4022650695910071e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(6.9314718055994531e-1f), p, f);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, f);
    int32x4_t e = vaddq_s32(vcvtq_s32_f32(xi), vdupq_n_s32(127));
    e = vmaxq_s32(e, vdupq_n_s32(0));
    const float32x4_t scale = vreinterpretq_f32_s32(vshlq_n_s32(e, 23));
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vmulq_f32(p, scale)), dead));
}

static float sm_neon(float *sr, int64_t vis, int64_t nt, float *m, float *l, int *bad) {
    if (!all_finite(sr, vis)) *bad = 1;
    float32x4_t mx = vdupq_n_f32(-INFINITY);
    int64_t j = 0;
    for (; j + 4 <= vis; j += 4) mx = vmaxq_f32(mx, vld1q_f32(sr + j));
    float mt = vmaxvq_f32(mx);
    for (; j < vis; j++) mt = sr[j] > mt ? sr[j] : mt;
    if (mt == -INFINITY) {
        for (j = 0; j < nt; j++) sr[j] = 0.0f;
        return -1.0f;
    }
    const float mnew = mt > *m ? mt : *m;
    const float alpha = exp2_neg(*m - mnew);
    const float32x4_t vm = vdupq_n_f32(mnew);
    float32x4_t sum = vdupq_n_f32(0.0f);
    for (j = 0; j + 4 <= vis; j += 4) {
        float32x4_t p = exp2_neg4(vsubq_f32(vld1q_f32(sr + j), vm));
        sum = vaddq_f32(sum, p);
        vst1q_f32(sr + j, p);
    }
    float tail = 0.0f;
    for (; j < vis; j++) {
        float p = exp2_neg(sr[j] - mnew);
        sr[j] = p;
        tail += p;
    }
    for (j = vis; j < nt; j++) sr[j] = 0.0f;
    *l = *l * alpha + (vaddvq_f32(sum) + tail);
    *m = mnew;
    return alpha;
}

void sc_attn_item_neon(const attn_ctx *c, int64_t i, attn_ws *w) { attn_item_body(c, i, w, qk_neon, pv_neon, sm_neon, NULL, NULL, NULL, NULL, NULL, NULL); }

/* ---- dotprod: scores of int8 K codes in integer arithmetic (sdot).
 * Each query row (K's per-channel scales folded in, for per-channel formats)
 * is split into three int8 parts, x ~ a0 p0 + a1 p1 + a2 p2: every part
 * holds the previous one's rounding residual, so the split is exact to about
 * 2^-21 of max|x| -- fp32-level scores, unlike one int8 q (SageAttention's
 * choice, which missed our int8 accuracy targets). Three sdot per 16 codes
 * per row against four fp32 FMAs plus the code conversions. Under
 * precision="bf16" (and "int8": int8 codes keep 16-bit-class q, as on x86)
 * two parts: exact to about 2^-15 of max|x|, the class of x86's int16 q'
 * (attention_x86.c), one sdot in three fewer. */
#define SC_T_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

static void split_q(const float *x, int64_t D, int8_t *p, float *a, int nparts) {
    float r[512];
    memcpy(r, x, (size_t)D * sizeof(float));
    for (int part = 0; part < nparts; part++) {
        float mx = 0.0f;
        for (int64_t ch = 0; ch < D; ch++) mx = fabsf(r[ch]) > mx ? fabsf(r[ch]) : mx;
        const float sc = mx / 127.0f, inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        a[part] = sc;
        for (int64_t ch = 0; ch < D; ch++) {
            float v = r[ch] * inv;
            v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
            const int iv = (int)lrintf(v);
            p[part * D + ch] = (int8_t)iv;
            r[ch] -= sc * (float)iv;
        }
    }
}

/* a score from the np parts' integer dots (one expression for every layout) */
static inline __attribute__((always_inline)) float dot_parts(const float *a, int32_t h0, int32_t h1, int32_t h2,
                                                             const int np) {
    return a[0] * (float)h0 + a[1] * (float)h1 + (np == 3 ? a[2] * (float)h2 : 0.0f);
}

/* element i of a store's scales or minimums (fp32, or fp16 when !f32) */
static inline float scale_at(const void *a, int f32, int64_t i) {
    return f32 ? ((const float *)a)[i] : sc_h2f(((const uint16_t *)a)[i]);
}

/* the partial dots of one query row's np (3 or 2) parts with 16*n codes */
SC_T_DOTPROD static inline __attribute__((always_inline)) float dotn(const int8_t *pq, int64_t D, const float *a,
                                                                     const int8_t *k, int64_t n16, const int np) {
    int32x4_t h0 = vdupq_n_s32(0), h1 = vdupq_n_s32(0), h2 = vdupq_n_s32(0);
    for (int64_t i = 0; i < n16; i++) {
        const int8x16_t kv = vld1q_s8(k + 16 * i);
        h0 = vdotq_s32(h0, vld1q_s8(pq + 16 * i), kv);
        h1 = vdotq_s32(h1, vld1q_s8(pq + D + 16 * i), kv);
        if (np == 3) h2 = vdotq_s32(h2, vld1q_s8(pq + 2 * D + 16 * i), kv);
    }
    return dot_parts(a, vaddvq_s32(h0), vaddvq_s32(h1), vaddvq_s32(h2), np);
}

/* int8 K in the k16 layout (SC_LAYOUT_K16): the np-part dots of one query
 * row with a whole 16-key block, the keys in the lanes. Word w of the block
 * (64 bytes, four registers of 4 keys) holds channels 4w..4w+3 of every key;
 * sdot by lane (vdotq_laneq_s32) multiplies each key's 4 codes by the same 4
 * channels of a part, one register of q holding 4 words' worth: per word
 * and part 4 sdot for 16 keys, and no horizontal sums (dotn spends np vaddvq
 * per key). The integer sums are dotn's, so the scores are bitwise the rows
 * layout's. */
SC_T_DOTPROD static inline __attribute__((always_inline)) void dot16_k16(const int8_t *pq, int64_t D, const float *a,
                                                                        const int8_t *blk, float *s, const int np) {
    int32x4_t h[3][4];
    for (int p = 0; p < 3; p++)
        for (int kq = 0; kq < 4; kq++) h[p][kq] = vdupq_n_s32(0);
    for (int64_t w4 = 0; w4 < D / 16; w4++) {
        int8x16_t qv[3];
        for (int p = 0; p < np; p++) qv[p] = vld1q_s8(pq + p * D + 16 * w4);
#define SC_K16_WORD(L)                                                                   \
    do {                                                                                 \
        const int8_t *kw = blk + 64 * (4 * w4 + (L));                                    \
        const int8x16_t k0 = vld1q_s8(kw), k1 = vld1q_s8(kw + 16), k2 = vld1q_s8(kw + 32), \
                        k3 = vld1q_s8(kw + 48);                                          \
        for (int p = 0; p < np; p++) {                                                   \
            h[p][0] = vdotq_laneq_s32(h[p][0], k0, qv[p], (L));                          \
            h[p][1] = vdotq_laneq_s32(h[p][1], k1, qv[p], (L));                          \
            h[p][2] = vdotq_laneq_s32(h[p][2], k2, qv[p], (L));                          \
            h[p][3] = vdotq_laneq_s32(h[p][3], k3, qv[p], (L));                          \
        }                                                                                \
    } while (0)
        SC_K16_WORD(0);
        SC_K16_WORD(1);
        SC_K16_WORD(2);
        SC_K16_WORD(3);
#undef SC_K16_WORD
    }
    int32_t sum[3][16];
    for (int p = 0; p < 3; p++)
        for (int kq = 0; kq < 4; kq++) vst1q_s32(sum[p] + 4 * kq, h[p][kq]);
    for (int kk = 0; kk < 16; kk++) s[kk] = dot_parts(a, sum[0][kk], sum[1][kk], sum[2][kk], np);
}

/* ---- int4 K at precision="int8" (SageAttention's class, as x86's
 * qkb16_block): q x s rounded to one int8 part per row and token group (2^-8
 * of the row's largest element), held as its even channels qe and odd ones
 * qo (D / 2 each), so that byte b of a packed row -- channels 2b (low
 * nibble) and 2b + 1 (high) -- meets qe[b] and qo[b]. Codes are unsigned
 * nibbles: symmetric ones stored + 8 (8 sum(q') comes off), asymmetric ones
 * with the minimums' dot q . m added in fp32 (fb). */
static inline __attribute__((always_inline)) float score4(float ar, int32_t acc, int32_t bias, float fb) {
    return ar * (float)(acc - bias) + fb;
}

/* k16 block of 16 keys, one row: word w (4 bytes = channels 8w..8w+7 of a
 * key, 4 keys per register) against lane w % 4 of qe / qo */
SC_T_DOTPROD static inline __attribute__((always_inline)) void dot16_k16_i4(const int8_t *qe, const int8_t *qo,
                                                                           int64_t D, const uint8_t *blk, float ar,
                                                                           int32_t bias, float fb, float *s) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    int32x4_t he[4], ho[4];
    for (int kq = 0; kq < 4; kq++) he[kq] = ho[kq] = vdupq_n_s32(0);
    for (int64_t w4 = 0; w4 < D / 32; w4++) {
        const int8x16_t ve = vld1q_s8(qe + 16 * w4), vo = vld1q_s8(qo + 16 * w4);
#define SC_K16_WORD4(L)                                                                                 \
    do {                                                                                                \
        const uint8_t *kw = blk + 64 * (4 * w4 + (L));                                                  \
        for (int kq = 0; kq < 4; kq++) {                                                                \
            const uint8x16_t k = vld1q_u8(kw + 16 * kq);                                                \
            he[kq] = vdotq_laneq_s32(he[kq], vreinterpretq_s8_u8(vandq_u8(k, m4)), ve, (L));            \
            ho[kq] = vdotq_laneq_s32(ho[kq], vreinterpretq_s8_u8(vshrq_n_u8(k, 4)), vo, (L));           \
        }                                                                                               \
    } while (0)
        SC_K16_WORD4(0);
        SC_K16_WORD4(1);
        SC_K16_WORD4(2);
        SC_K16_WORD4(3);
#undef SC_K16_WORD4
    }
    int32_t sum[16];
    for (int kq = 0; kq < 4; kq++) vst1q_s32(sum + 4 * kq, vaddq_s32(he[kq], ho[kq]));
    for (int kk = 0; kk < 16; kk++) s[kk] = score4(ar, sum[kk], bias, fb);
}

/* one key's packed row (D / 2 bytes), one row of q' */
SC_T_DOTPROD static inline __attribute__((always_inline)) int32_t dot_row_i4(const int8_t *qe, const int8_t *qo,
                                                                            int64_t D, const uint8_t *k) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    int32x4_t h = vdupq_n_s32(0);
    for (int64_t b = 0; b < D / 2; b += 16) {
        const uint8x16_t kb = vld1q_u8(k + b);
        h = vdotq_s32(h, vreinterpretq_s8_u8(vandq_u8(kb, m4)), vld1q_s8(qe + b));
        h = vdotq_s32(h, vreinterpretq_s8_u8(vshrq_n_u8(kb, 4)), vld1q_s8(qo + b));
    }
    return vaddvq_s32(h);
}

SC_T_DOTPROD static void qk4_neondot(const attn_ctx *c, const float *q, float *qf, int64_t kr, int64_t j0, int64_t nt,
                                     float *s) {
    const sc_format *f = c->a->kf; /* int4, per-channel scales over token groups, D % 32 == 0 (sc_attention) */
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, rb = D / 2;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32, k16 = f->layout == SC_LAYOUT_K16;
    const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
    int8_t *qe = (int8_t *)qf, *qo = qe + R * (D / 2); /* [R][D / 2] each (qf holds R x D floats) */
    float ar[Q8_MAX_ROWS], fb[Q8_MAX_ROWS]; /* the item body calls qk8 for at most Q8_MAX_ROWS rows */
    int32_t bias[Q8_MAX_ROWS];
    uint8_t rows[64 * 128];
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t at = (kr * (st->capacity / T) + g) * D;
        for (int64_t r = 0; r < R; r++) {
            float x[256], m = 0.0f, z = 0.0f;
            for (int64_t ch = 0; ch < D; ch++) {
                x[ch] = q[r * D + ch] * scale_at(st->scales, sf32, at + ch);
                m = fabsf(x[ch]) > m ? fabsf(x[ch]) : m;
                if (f->zero_point) z += q[r * D + ch] * scale_at(st->zeros, sf32, at + ch);
            }
            const float inv = m > 0.0f ? 127.0f / m : 0.0f;
            int32_t qs = 0;
            for (int64_t ch = 0; ch < D; ch++) {
                float v = x[ch] * inv;
                v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
                const int iv = (int)lrintf(v);
                (ch & 1 ? qo : qe)[r * (D / 2) + ch / 2] = (int8_t)iv;
                qs += iv;
            }
            ar[r] = m * (1.0f / 127.0f);
            bias[r] = f->zero_point ? 0 : 8 * qs; /* symmetric codes are stored + 8 */
            fb[r] = z;
        }
        int64_t off = 0;
        if (k16 && (j0 + t) % 16 == 0) /* whole 16-key blocks in place */
            for (; off + 16 <= n; off += 16)
                for (int64_t r = 0; r < R; r++)
                    dot16_k16_i4(qe + r * (D / 2), qo + r * (D / 2), D, row0 + (j0 + t + off) * rb, ar[r], bias[r],
                                 fb[r], s + r * TL + t + off);
        for (; off < n; off += 64) { /* token rows (k16's other keys gathered, 64 at a time) */
            const int64_t mm = n - off < 64 ? n - off : 64;
            const uint8_t *cr = row0 + (j0 + t + off) * rb;
            if (k16) {
                sc_k16_gather(row0, j0 + t + off, mm, rb, rows);
                cr = rows;
            }
            for (int64_t r = 0; r < R; r++)
                for (int64_t j = 0; j < mm; j++)
                    s[r * TL + t + off + j] =
                        score4(ar[r], dot_row_i4(qe + r * (D / 2), qo + r * (D / 2), D, cr + j * rb), bias[r], fb[r]);
        }
        t += n;
    }
}

SC_T_DOTPROD static void qk8_neondot(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                                     int64_t j0, int64_t nt, float *s) {
    const sc_format *f = c->a->kf; /* int8, symmetric, or int4 in mode 1 at "int8" (checked by sc_attention) */
    if (f->encoding == SC_ENC_INT4) {
        qk4_neondot(c, q, qf, kr, j0, nt, s);
        return;
    }
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, G = f->channel_group;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32;
    const int8_t *codes = (const int8_t *)st->data + (kr * st->capacity + j0) * D;
    int8_t *parts = (int8_t *)qf;                    /* [R][3][D] */
    float *pa = (float *)(parts + ((3 * R * D + 3) & ~(int64_t)3)); /* [R][3] */
    const int np = c->a->precision >= SC_PRECISION_BF16 ? 2 : 3;
    if (mode == 2) { /* k = code * s[j][cell] */
        const int64_t ncell = D / G;
        for (int64_t i = 0; i < nt * ncell; i++) {
            const int64_t at = (kr * st->capacity + j0) * ncell + i;
            sc[i] = scale_at(st->scales, sf32, at);
        }
        for (int64_t r = 0; r < R; r++) split_q(q + r * D, D, parts + r * 3 * D, pa + 3 * r, np);
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < nt; j++) {
                float acc = 0.0f;
                for (int64_t cell = 0; cell < ncell; cell++)
                    acc += sc[j * ncell + cell] *
                           dotn(parts + r * 3 * D + cell * G, D, pa + 3 * r, codes + j * D + cell * G, G / 16, np);
                s[r * TL + j] = acc;
            }
        return;
    }
    /* mode 1: k = code * s[g][c]; fold s into q per token group, then split */
    float xr[512];
    int8_t rows[64 * 256];
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t at = (kr * (st->capacity / T) + g) * D;
        for (int64_t r = 0; r < R; r++) {
            for (int64_t ch = 0; ch < D; ch++) xr[ch] = q[r * D + ch] * scale_at(st->scales, sf32, at + ch);
            split_q(xr, D, parts + r * 3 * D, pa + 3 * r, np);
        }
        int64_t off = 0;
        if (f->layout == SC_LAYOUT_K16 && (j0 + t) % 16 == 0) /* whole 16-key blocks in place */
            for (; off + 16 <= n; off += 16) {
                const int8_t *blk = (const int8_t *)st->data + (kr * st->capacity + j0 + t + off) * D;
                for (int64_t r = 0; r < R; r++)
                    if (np == 3) dot16_k16(parts + r * 3 * D, D, pa + 3 * r, blk, s + r * TL + t + off, 3);
                    else dot16_k16(parts + r * 3 * D, D, pa + 3 * r, blk, s + r * TL + t + off, 2);
            }
        for (; off < n; off += 64) { /* rows; SC_LAYOUT_K16's other keys: 64 at a time gathered as rows */
            const int64_t m = n - off < 64 ? n - off : 64;
            const int8_t *cr = codes + (t + off) * D;
            if (f->layout == SC_LAYOUT_K16) {
                sc_k16_gather((const uint8_t *)st->data + kr * st->capacity * D, j0 + t + off, m, D, (uint8_t *)rows);
                cr = rows;
            }
            for (int64_t r = 0; r < R; r++)
                for (int64_t j = 0; j < m; j++)
                    s[r * TL + t + off + j] = dotn(parts + r * 3 * D, D, pa + 3 * r, cr + j * D, D / 16, np);
        }
        t += n;
    }
}

SC_T_DOTPROD void sc_attn_item_neondot(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_neon, pv_neon, sm_neon, NULL, NULL, NULL, qk8_neondot, NULL, NULL);
}
#endif

