/*
 * pack.c -- quantize / dequantize every storage format (see sagecore.h).
 *
 * Work is organised by "token group": the T tokens that share scale cells.
 * For each group of each row:
 *   1. load    tokens -> fp32 scratch [T][D] in value space (fp16-rounded),
 *              minus the smoothing mean, then rotated;
 *   2. select  outliers per cell (optional), excluded from the range;
 *   3. range   column-wise |x| max (or min/max) over the group's tokens, then
 *              one reduction per cell -> scale (and minimum);
 *   4. expand  per-cell parameters to per-channel arrays inv[D], m[D];
 *   5. encode  every token row with one vectorised pass.
 * The same steps, reversed, dequantize. Steps 1, 3 and 5 are the row kernels
 * in sc_row_kernels, with ISA-specific versions (pack_avx2.c).
 */
#include <stdio.h>
#include <stdlib.h>

#include "sc_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ============================================== portable row kernels */
static void load_f16_portable(const uint16_t *src, const float *mean, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = sc_h2f(src[i]) - (mean ? mean[i] : 0.0f);
}

static void load_f32_portable(const float *src, const float *mean, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = sc_h2f(sc_f2h(src[i])) - (mean ? mean[i] : 0.0f);
}

static void absmax_acc_portable(const float *x, float *colmax, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        colmax[i] = a > colmax[i] ? a : colmax[i];
    }
}

static void minmax_acc_portable(const float *x, float *colmin, float *colmax, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        colmin[i] = x[i] < colmin[i] ? x[i] : colmin[i];
        colmax[i] = x[i] > colmax[i] ? x[i] : colmax[i];
    }
}

/* Round to nearest even without a libm call: for |v| <= 2^22, (v + 1.5*2^23)
 * - 1.5*2^23 is exactly rint(v) in the default rounding mode. Clamping first
 * to the integer bounds gives the same codes as rint-then-clamp and keeps |v|
 * small; the loop vectorises at the baseline ISA. */
static void quant_i8_portable(const float *x, const float *m, const float *inv, int8_t *q,
                              int64_t n, int32_t lo, int32_t hi) {
    const float flo = (float)lo, fhi = (float)hi, magic = 12582912.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = (x[i] - (m ? m[i] : 0.0f)) * inv[i];
        v = v < flo ? flo : v;
        v = v > fhi ? fhi : v;
        v = (v + magic) - magic;
        q[i] = (int8_t)(int32_t)v;
    }
}

static void dequant_i8_portable(const int8_t *q, int is_u8, const float *s, const float *m,
                                float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float c = is_u8 ? (float)(uint8_t)q[i] : (float)q[i];
        float v = c * s[i];
        dst[i] = m ? v + m[i] : v;
    }
}

static void store_f32_portable(const float *x, const float *mean, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = mean ? x[i] + mean[i] : x[i];
}

static void store_f16_portable(const float *x, const float *mean, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = sc_f2h(mean ? x[i] + mean[i] : x[i]);
}

static void rotate_portable(float *x, int64_t n, int64_t stride, int32_t d);

const sc_row_kernels sc_row_kernels_portable = {
    load_f16_portable, load_f32_portable, absmax_acc_portable, minmax_acc_portable,
    quant_i8_portable, dequant_i8_portable, store_f32_portable, store_f16_portable, NULL, NULL, rotate_portable, NULL, NULL,
    NULL, /* dequant_i8_k16: the portable path gathers rows (sc_k16_gather) */
    NULL, /* quant_rot_tokens: load, rotate, quant_token (sc_quantize_ex) */
};

/* ================================================================ rotation */
int32_t sc_rotation_block(int32_t d) {
    int32_t b = 1;
    while (b < 256 && d % (b * 2) == 0) b *= 2;
    return b;
}

void sc_rotate_f32(float *x, int64_t n, int64_t stride, int32_t d) {
    sc_row_kernels_active()->rotate(x, n, stride, d);
}

static void rotate_portable(float *x, int64_t n, int64_t stride, int32_t d) {
    const int32_t hb = sc_rotation_block(d);
    const float norm = 1.0f / sqrtf((float)hb);
    for (int64_t r = 0; r < n; r++) {
        float *v = x + r * stride;
        for (int32_t base = 0; base < d; base += hb) {
            float *u = v + base;
            for (int32_t h = 1; h < hb; h *= 2)
                for (int32_t i = 0; i < hb; i += 2 * h)
                    for (int32_t j = i; j < i + h; j++) {
                        float a = u[j], b = u[j + h];
                        u[j] = a + b;
                        u[j + h] = a - b;
                    }
        }
        for (int32_t c = 0; c < d; c++) v[c] *= norm;
    }
}

/* ================================================================ formats */
int64_t sc_format_row_bytes(const sc_format *f) {
    switch (f->encoding) {
    case SC_ENC_FP16: return (int64_t)f->head_dim * 2;
    case SC_ENC_INT8: return f->head_dim;
    case SC_ENC_INT4: return f->head_dim / 2;
    }
    return 0;
}

sc_status sc_format_check(const sc_format *f) {
    if (!f) return sc_fail(SC_ERR_INVALID_ARGUMENT, "format is NULL");
    if (f->encoding != SC_ENC_FP16 && f->encoding != SC_ENC_INT8 && f->encoding != SC_ENC_INT4)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "encoding %d is not one of fp16(1), int8(2), int4(3)",
                       f->encoding);
    if (f->head_dim < 16 || f->head_dim > 512 || f->head_dim % 16)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "head_dim %d must be a multiple of 16 in [16, 512]",
                       f->head_dim);
    if (f->encoding == SC_ENC_FP16)
        return f->layout == SC_LAYOUT_ROWS ? SC_OK
                                           : sc_fail(SC_ERR_INVALID_ARGUMENT, "layout %d: fp16 stores are token rows",
                                                     f->layout);
    if (f->token_group < 1 || f->token_group > 1024)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "token_group %d must be in [1, 1024]", f->token_group);
    if (f->channel_group < 1 || f->head_dim % f->channel_group)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "channel_group %d must divide head_dim %d",
                       f->channel_group, f->head_dim);
    if (f->scale_dtype != SC_DTYPE_F16 && f->scale_dtype != SC_DTYPE_F32)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "scale_dtype %d must be f32(0) or f16(1)", f->scale_dtype);
    if (f->outliers < 0 || f->outliers > 16 ||
        f->outliers >= f->token_group * f->channel_group)
        return sc_fail(SC_ERR_INVALID_ARGUMENT,
                       "outliers %d must be in [0, 16] and smaller than the cell size %d",
                       f->outliers, f->token_group * f->channel_group);
    if ((int64_t)f->token_group * f->channel_group > 65535 && f->outliers)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "cells with outliers hold at most 65535 values");
    if (f->layout != SC_LAYOUT_ROWS && f->layout != SC_LAYOUT_K16)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "layout %d is not one of rows(0), k16(1)", f->layout);
    if (f->layout == SC_LAYOUT_K16 && f->token_group % 16)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "layout k16 needs token_group a multiple of 16, got %d",
                       f->token_group);
    return SC_OK;
}

/* ============================================================ group engine */
typedef struct group_ctx {
    const sc_format *f;
    const sc_store *st;
    const sc_row_kernels *k;
    int64_t D, T, G, ncell, rb, k_out;
    int32_t lo, hi, qmax_span; /* code range; span = hi - lo for zero-point */
    float *x;                  /* [T][D] scratch in the transformed domain */
    float *colmax, *colmin;    /* [D]  */
    float *inv, *m, *s;        /* [D]  */
    int8_t *codes;             /* [D]  */
    const void **rows;         /* [T] source row pointers of a group */
    uint8_t *krows;            /* [T][rb] a group's codes as token rows (SC_LAYOUT_K16), else NULL */
    int64_t chunk;             /* tokens the scratch holds: max(T, 64) */
} group_ctx;

static int ctx_init(group_ctx *c, const sc_format *f, const sc_store *st) {
    memset(c, 0, sizeof *c);
    c->f = f;
    c->st = st;
    c->k = sc_row_kernels_active();
    c->D = f->head_dim;
    c->T = f->encoding == SC_ENC_FP16 ? 1 : f->token_group;
    c->G = f->encoding == SC_ENC_FP16 ? f->head_dim : f->channel_group;
    c->ncell = c->D / c->G;
    c->rb = sc_format_row_bytes(f);
    c->k_out = f->outliers;
    if (f->encoding == SC_ENC_INT8) {
        c->lo = f->zero_point ? 0 : -127;
        c->hi = f->zero_point ? 255 : 127;
    } else {
        c->lo = f->zero_point ? 0 : -7;
        c->hi = f->zero_point ? 15 : 7;
    }
    /* codes for int8 zero-point are produced as [0,255] but stored via int8 */
    c->chunk = c->T > 64 ? c->T : 64;
    size_t nf = (size_t)(c->chunk * c->D + 6 * c->D);
    c->x = (float *)malloc(nf * sizeof(float) + (size_t)c->D + 64);
    if (!c->x) return 0;
    c->colmax = c->x + c->chunk * c->D;
    c->colmin = c->colmax + c->D;
    c->inv = c->colmin + c->D;
    c->m = c->inv + c->D;
    c->s = c->m + c->D;
    c->codes = (int8_t *)(c->s + c->D);
    c->rows = (const void **)malloc((size_t)c->T * sizeof(void *));
    if (!c->rows) { free(c->x); return 0; }
    if (f->layout == SC_LAYOUT_K16) {
        c->krows = (uint8_t *)malloc((size_t)(c->T * c->rb));
        if (!c->krows) { free(c->x); free((void *)c->rows); return 0; }
    }
    return 1;
}

static void ctx_free(group_ctx *c) { free(c->x); free((void *)c->rows); free(c->krows); }

/* Address of token `tok` of `row` (= b * heads + h). Hot loops call
 * tensor_row0 once per row and step by token_bytes(). */
static inline const char *tensor_row0(const sc_tensor *t, int64_t row) {
    int64_t b = row / t->heads, h = row % t->heads;
    size_t es = t->dtype == SC_DTYPE_F16 ? 2 : 4;
    return (const char *)t->ptr + (size_t)(b * t->stride_b + h * t->stride_h) * es;
}

static inline int64_t token_bytes(const sc_tensor *t) {
    return t->stride_t * (t->dtype == SC_DTYPE_F16 ? 2 : 4);
}

static inline float load_scale(const sc_format *f, const void *base, int64_t i) {
    return f->scale_dtype == SC_DTYPE_F16 ? sc_h2f(((const uint16_t *)base)[i])
                                          : ((const float *)base)[i];
}

/* Pick the k largest |x| of one cell (ties: lowest position), record them and
 * overwrite them in the scratch with a non-outlier value of the same cell so
 * they do not widen the range. */
static void select_outliers(group_ctx *c, int64_t nt, int64_t cell, uint16_t *idx, uint16_t *val) {
    const int64_t G = c->G, D = c->D, k = c->k_out;
    const int64_t c0 = cell * G, n = nt * G;
    /* a partial group (nt < T) may hold fewer positions than k: the slots
     * past n stay unused (0xFFFF) and are never dereferenced */
    const int64_t kk = k < n ? k : n;
    for (int64_t j = kk; j < k; j++) { idx[j] = 0xFFFFu; val[j] = 0; }
    for (int64_t j = 0; j < kk; j++) {
        int64_t best = -1;
        float bestv = -1.0f;
        for (int64_t p = 0; p < n; p++) {
            int taken = 0;
            for (int64_t q = 0; q < j; q++) taken |= idx[q] == (uint16_t)p;
            if (taken) continue;
            float a = fabsf(c->x[(p / G) * D + c0 + p % G]);
            if (a > bestv) { bestv = a; best = p; }
        }
        idx[j] = (uint16_t)best;
        val[j] = sc_f2h(c->x[(best / G) * D + c0 + best % G]);
    }
    /* a filler that is not an outlier: the first position not selected */
    int64_t fill = 0;
    for (int64_t p = 0; p < n; p++) {
        int taken = 0;
        for (int64_t q = 0; q < kk; q++) taken |= idx[q] == (uint16_t)p;
        if (!taken) { fill = p; break; }
    }
    /* every position an outlier (n <= k): the filler is irrelevant, keep it in range */
    float fv = c->x[(fill / G) * D + c0 + fill % G];
    for (int64_t j = 0; j < kk; j++) c->x[(idx[j] / G) * D + c0 + idx[j] % G] = fv;
}

/* Quantize the nt (<= T) tokens now in c->x as group `g` of `row`. */
static sc_status encode_group(group_ctx *c, int64_t row, int64_t g, int64_t nt) {
    const sc_format *f = c->f;
    const sc_store *st = c->st;
    const int64_t D = c->D, G = c->G, T = c->T, ncell = c->ncell;
    const int64_t cell0 = (row * (st->capacity / T) + g) * ncell;
    uint16_t *oidx = c->k_out ? st->out_idx + cell0 * c->k_out : NULL;
    uint16_t *oval = c->k_out ? st->out_val + cell0 * c->k_out : NULL;

    if (c->k_out)
        for (int64_t cell = 0; cell < ncell; cell++)
            select_outliers(c, nt, cell, oidx + cell * c->k_out, oval + cell * c->k_out);

    /* range: column-wise, then one reduction per cell */
    for (int64_t i = 0; i < D; i++) { c->colmax[i] = f->zero_point ? -INFINITY : 0.0f; c->colmin[i] = INFINITY; }
    for (int64_t t = 0; t < nt; t++) {
        if (f->zero_point) c->k->minmax_acc(c->x + t * D, c->colmin, c->colmax, D);
        else c->k->absmax_acc(c->x + t * D, c->colmax, D);
    }
    const int32_t span = f->zero_point ? c->hi - c->lo : c->hi;
    for (int64_t cell = 0; cell < ncell; cell++) {
        float hi = c->colmax[cell * G], lo = c->colmin[cell * G];
        for (int64_t j = 1; j < G; j++) {
            float a = c->colmax[cell * G + j], b = c->colmin[cell * G + j];
            hi = a > hi ? a : hi;
            lo = b < lo ? b : lo;
        }
        /* Inputs are finite fp16 values, but smoothing (up to 2x) and rotation
         * (up to sqrt(256)x) can take them past what an fp16 minimum holds. */
        if (!(hi <= 3.4e38f) || (f->zero_point && !(lo >= -3.4e38f)) ||
            (f->scale_dtype == SC_DTYPE_F16 &&
             (f->zero_point ? (lo < -SC_FP16_MAX || (hi - lo) / (float)span > SC_FP16_MAX)
                            : hi / (float)span > SC_FP16_MAX)))
            return sc_fail(SC_ERR_NONFINITE, "row %lld token group %lld: after smoothing/rotation the value "
                           "range exceeds what fp16 scales and minimums represent (use scale_dtype fp32)",
                           (long long)row, (long long)g);
        float scale, minv = 0.0f;
        if (f->zero_point) {
            if (f->scale_dtype == SC_DTYPE_F16) {
                uint16_t mh = sc_f2h_floor(lo);
                minv = sc_h2f(mh);
                uint16_t sh = sc_f2h_ceil((hi - minv) / (float)span);
                scale = sc_h2f(sh);
                ((uint16_t *)st->zeros)[cell0 + cell] = mh;
                ((uint16_t *)st->scales)[cell0 + cell] = sh;
            } else {
                minv = lo;
                scale = (hi - lo) / (float)span;
                ((float *)st->zeros)[cell0 + cell] = minv;
                ((float *)st->scales)[cell0 + cell] = scale;
            }
        } else if (f->scale_dtype == SC_DTYPE_F16) {
            uint16_t sh = sc_f2h_ceil(hi / (float)span);
            scale = sc_h2f(sh);
            ((uint16_t *)st->scales)[cell0 + cell] = sh;
        } else {
            scale = hi / (float)span;
            ((float *)st->scales)[cell0 + cell] = scale;
        }
        float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int64_t j = 0; j < G; j++) { c->inv[cell * G + j] = inv; c->m[cell * G + j] = minv; }
    }

    /* encode rows (k16: as rows into krows, then interleaved into place) */
    uint8_t *const dst0 = (uint8_t *)st->data + (row * st->capacity + g * T) * c->rb;
    uint8_t *data = c->krows ? c->krows : dst0;
    for (int64_t t = 0; t < nt; t++) {
        const float *xr = c->x + t * D;
        uint8_t *dst = data + t * c->rb;
        if (f->encoding == SC_ENC_INT8) {
            c->k->quant_i8(xr, f->zero_point ? c->m : NULL, c->inv, (int8_t *)dst, D, c->lo, c->hi);
            /* zero-point int8 codes in [0,255] were clamped as int32 then
             * narrowed: stored as uint8 bits, read back with is_u8. */
        } else {
            c->k->quant_i8(xr, f->zero_point ? c->m : NULL, c->inv, c->codes, D, c->lo, c->hi);
            const int bias = f->zero_point ? 0 : 8;
            for (int64_t i = 0; i < D; i += 2)
                dst[i / 2] = (uint8_t)(((c->codes[i] + bias) & 0xF) | (((c->codes[i + 1] + bias) & 0xF) << 4));
        }
    }
    if (c->krows) sc_k16_scatter(c->krows, 0, nt, c->rb, dst0);
    return SC_OK;
}

/* Decode group g of row into xo [nt][D] (transformed domain, outliers restored). */
static void decode_group(group_ctx *c, int64_t row, int64_t g, int64_t nt, float *xo) {
    const sc_format *f = c->f;
    const sc_store *st = c->st;
    const int64_t D = c->D, G = c->G, T = c->T, ncell = c->ncell;
    const int64_t cell0 = (row * (st->capacity / T) + g) * ncell;
    for (int64_t cell = 0; cell < ncell; cell++) {
        float s = load_scale(f, st->scales, cell0 + cell);
        float m = f->zero_point ? load_scale(f, st->zeros, cell0 + cell)
                                : (f->encoding == SC_ENC_INT4 ? -8.0f * s : 0.0f);
        for (int64_t j = 0; j < G; j++) { c->s[cell * G + j] = s; c->m[cell * G + j] = m; }
    }
    const int has_m = f->zero_point || f->encoding == SC_ENC_INT4;
    const uint8_t *data = (const uint8_t *)st->data + (row * st->capacity + g * T) * c->rb;
    const int in_place = c->krows && f->encoding == SC_ENC_INT8 && c->k->dequant_i8_k16;
    if (in_place) /* k16 words read where they are */
        for (int64_t t = 0; t < nt; t++)
            c->k->dequant_i8_k16(data + (t & ~(int64_t)15) * c->rb, t & 15, f->zero_point, c->s, has_m ? c->m : NULL,
                                 xo + t * D, D);
    else if (c->krows) {
        sc_k16_gather(data, 0, nt, c->rb, c->krows);
        data = c->krows;
    }
    for (int64_t t = 0; t < (in_place ? 0 : nt); t++) {
        const uint8_t *src = data + t * c->rb;
        float *xr = xo + t * D;
        if (f->encoding == SC_ENC_INT8) {
            c->k->dequant_i8((const int8_t *)src, f->zero_point, c->s, has_m ? c->m : NULL, xr, D);
        } else {
            for (int64_t i = 0; i < D; i += 2) {
                c->codes[i] = (int8_t)(src[i / 2] & 0xF);
                c->codes[i + 1] = (int8_t)(src[i / 2] >> 4);
            }
            c->k->dequant_i8(c->codes, 1, c->s, c->m, xr, D);
        }
    }
    if (c->k_out) {
        for (int64_t cell = 0; cell < ncell; cell++) {
            const uint16_t *idx = st->out_idx + (cell0 + cell) * c->k_out;
            const uint16_t *val = st->out_val + (cell0 + cell) * c->k_out;
            for (int64_t j = 0; j < c->k_out; j++) {
                if (idx[j] == 0xFFFFu || idx[j] / G >= nt) continue;
                xo[(idx[j] / G) * D + cell * G + idx[j] % G] = sc_h2f(val[j]);
            }
        }
    }
}

/* ======================================================= argument checks */
static sc_status check_tensor(const sc_tensor *t, const char *name, int64_t D) {
    if (!t || !t->ptr) return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s is NULL", name);
    if (t->dtype != SC_DTYPE_F16 && t->dtype != SC_DTYPE_F32)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s dtype %d must be f32(0) or f16(1)", name, t->dtype);
    if (t->batch < 1 || t->heads < 1 || t->tokens < 0)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s has an empty batch or head axis", name);
    if (D >= 0 && t->dim != D)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s last dimension %lld must equal head_dim %lld", name,
                       (long long)t->dim, (long long)D);
    return SC_OK;
}

static sc_status check_store_args(const sc_format *f, const sc_store *st, const sc_tensor *t,
                                  int64_t t0, const char *name) {
    sc_status s = sc_format_check(f);
    if (s) return s;
    if ((s = check_tensor(t, name, f->head_dim))) return s;
    if (!st || !st->data) return sc_fail(SC_ERR_INVALID_ARGUMENT, "store data is NULL");
    if (t->batch * t->heads != st->rows)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s has %lld rows (batch*heads), the store %lld", name,
                       (long long)(t->batch * t->heads), (long long)st->rows);
    const int64_t T = f->encoding == SC_ENC_FP16 ? 1 : f->token_group;
    if (st->capacity % T)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "store capacity %lld is not a multiple of token_group %lld",
                       (long long)st->capacity, (long long)T);
    if (t0 < 0 || t0 % T || t0 + t->tokens > st->capacity)
        return sc_fail(SC_ERR_INVALID_ARGUMENT,
                       "token range [%lld, %lld) must start at a multiple of %lld and fit capacity %lld",
                       (long long)t0, (long long)(t0 + t->tokens), (long long)T, (long long)st->capacity);
    if (f->encoding != SC_ENC_FP16 && !st->scales)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "store scales are NULL");
    if (f->zero_point && f->encoding != SC_ENC_FP16 && !st->zeros)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "store zeros are NULL for a zero-point format");
    if (f->outliers && f->encoding != SC_ENC_FP16 && (!st->out_idx || !st->out_val))
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "store outlier tables are NULL");
    if (f->smooth && !st->mean) return sc_fail(SC_ERR_INVALID_ARGUMENT, "store mean is NULL for a smoothed format");
    return SC_OK;
}

/* ============================================================ entry points */
/* Fused per-token encoding of n tokens of `row` (src tokens src_stride
 * elements apart) into store tokens [t0, t0+n). Returns how many succeeded. */
static int64_t run_tokens(group_ctx *c, const void *src, int64_t src_stride, int64_t n, int mode,
                          const float *mean, int64_t row, int64_t t0) {
    const sc_format *f = c->f;
    const sc_store *st = c->st;
    const size_t sb = f->scale_dtype == SC_DTYPE_F16 ? 2 : 4;
    const int is_int4 = f->encoding == SC_ENC_INT4, sf32 = f->scale_dtype == SC_DTYPE_F32;
    uint8_t *dst = (uint8_t *)st->data + (row * st->capacity + t0) * c->rb;
    char *scales = (char *)st->scales + (size_t)((row * st->capacity + t0) * c->ncell) * sb;
    if (c->k->quant_tokens)
        return c->k->quant_tokens(src, src_stride, n, mode, mean, c->D, c->G, is_int4, sf32, dst, c->rb, scales);
    const size_t es = mode == SC_SRC_F16 ? 2 : 4;
    for (int64_t t = 0; t < n; t++)
        if (c->k->quant_token((const char *)src + (size_t)(t * src_stride) * es, mode, mean, c->D, c->G, is_int4,
                              sf32, dst + t * c->rb, scales + (size_t)(t * c->ncell) * sb))
            return t;
    return n;
}

sc_status sc_quantize(const sc_format *f, const sc_store *st, const sc_tensor *src, int64_t t0) {
    return sc_quantize_ex(f, st, src, t0, 0);
}

sc_status sc_quantize_ex(const sc_format *f, const sc_store *st, const sc_tensor *src, int64_t t0,
                         uint32_t flags) {
    sc_status s = check_store_args(f, st, src, t0, "src");
    if (s) return s;
    const int64_t rows = st->rows, D = f->head_dim, n = src->tokens;
    const int64_t T = f->encoding == SC_ENC_FP16 ? 1 : f->token_group;
    /* The fused kernels validate values while loading them; everything else
     * needs the separate sc_check_values() pass. Same decision for all rows. */
    const sc_row_kernels *rk = sc_row_kernels_active();
    const int plain = f->encoding != SC_ENC_FP16 && !f->outliers && !f->rotate;
    const int tok_path = plain && T == 1 && !f->zero_point && f->channel_group % 16 == 0 &&
                         (rk->quant_token || rk->quant_tokens);
    const int chan_path = plain && f->channel_group == 1 && rk->quant_chan && D % 16 == 0;
    /* rotated per-token formats: scalar load + vector rotation, then the fused
     * encoder on the rotated values (input validated by the pass below) */
    const int rot_tok_path = f->encoding != SC_ENC_FP16 && f->rotate && !f->outliers && T == 1 &&
                             !f->zero_point && f->channel_group % 16 == 0 && (rk->quant_token || rk->quant_tokens);
    /* ... or, with one cell or cells of 32 channels, all of it in registers (quant_rot_tokens) */
    const int rot_fused = rot_tok_path && rk->quant_rot_tokens && sc_rot_fused_dims(D, f->channel_group);
    const int fused = tok_path || chan_path || rot_fused;
    if (!fused && !(flags & SC_QUANTIZE_VALUES_CHECKED) && (s = sc_check_values(src))) return s;
    const int64_t ngroups = (n + T - 1) / T;
    if (n == 0) return SC_OK;
    volatile int failed = 0;
    char msg[512] = "";
    int nthreads = sc_num_threads();
    if ((int64_t)nthreads > rows) nthreads = (int)rows;
#pragma omp parallel num_threads(nthreads)
    {
        group_ctx c;
        int ok = ctx_init(&c, f, st);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; row++) {
            if (!ok || failed) continue;
            const float *mean = f->smooth && f->encoding != SC_ENC_FP16 ? st->mean + row * D : NULL;
            const int rot = f->rotate;
            const char *sbase = tensor_row0(src, row);
            const int64_t stok = token_bytes(src);
            const int use_chan = chan_path;
            if (tok_path || rot_tok_path) {
                /* fused per-token path: same arithmetic as encode_group. Rotated
                 * formats are loaded, smoothed and rotated into the scratch in
                 * chunks first, then encoded from it as they are (SC_SRC_RAW). */
                int64_t done;
                if (tok_path) {
                    done = run_tokens(&c, sbase, src->stride_t, n,
                                      src->dtype == SC_DTYPE_F16 ? SC_SRC_F16 : SC_SRC_F32, mean, row, t0);
                } else if (rot_fused) {
                    const size_t sb = f->scale_dtype == SC_DTYPE_F16 ? 2 : 4;
                    done = rk->quant_rot_tokens(sbase, src->stride_t, n, src->dtype == SC_DTYPE_F16 ? SC_SRC_F16 : SC_SRC_F32,
                                                mean, D, f->channel_group, f->encoding == SC_ENC_INT4,
                                                f->scale_dtype == SC_DTYPE_F32,
                                                (uint8_t *)st->data + (row * st->capacity + t0) * c.rb, c.rb,
                                                (char *)st->scales + (size_t)((row * st->capacity + t0) * c.ncell) * sb);
                } else {
                    for (done = 0; done < n;) {
                        int64_t nt = n - done < c.chunk ? n - done : c.chunk;
                        for (int64_t t = 0; t < nt; t++) {
                            const void *p = sbase + (done + t) * stok;
                            if (src->dtype == SC_DTYPE_F16) c.k->load_f16((const uint16_t *)p, mean, c.x + t * D, D);
                            else c.k->load_f32((const float *)p, mean, c.x + t * D, D);
                        }
                        c.k->rotate(c.x, nt, D, (int32_t)D);
                        int64_t k = run_tokens(&c, c.x, D, nt, SC_SRC_RAW, NULL, row, t0 + done);
                        done += k;
                        if (k < nt) break;
                    }
                }
                if (done < n) {
#pragma omp critical
                    { if (!failed) { snprintf(msg, sizeof msg, "row %lld token %lld: a value is not finite, or "
                                              "after smoothing/rotation the range exceeds what fp16 scales "
                                              "represent (use scale_dtype fp32)",
                                              (long long)row, (long long)(t0 + done)); failed = 1; } }
                }
                continue;
            }
            for (int64_t gi = 0; gi < ngroups; gi++) {
                int64_t tok = gi * T, nt = n - tok < T ? n - tok : T;
                int64_t g = (t0 + tok) / T;
                if (use_chan) {
                    /* fused per-channel path: same arithmetic as load + encode_group */
                    for (int64_t t = 0; t < nt; t++) c.rows[t] = sbase + (tok + t) * stok;
                    const int64_t cell0 = (row * (st->capacity / T) + g) * c.ncell;
                    const size_t sb = f->scale_dtype == SC_DTYPE_F16 ? 2 : 4;
                    uint8_t *gdst = (uint8_t *)st->data + (row * st->capacity + g * T) * c.rb;
                    if (c.k->quant_chan(c.rows, src->dtype == SC_DTYPE_F16, mean, nt, D,
                                        f->encoding == SC_ENC_INT4, f->zero_point, f->scale_dtype == SC_DTYPE_F32,
                                        c.x, c.krows ? c.krows : gdst, c.rb,
                                        (char *)st->scales + cell0 * sb,
                                        f->zero_point ? (char *)st->zeros + cell0 * sb : NULL)) {
#pragma omp critical
                        { if (!failed) { snprintf(msg, sizeof msg, "row %lld token group %lld: after smoothing/"
                                                  "rotation the value range exceeds what fp16 scales and "
                                                  "minimums represent (use scale_dtype fp32)",
                                                  (long long)row, (long long)g); failed = 1; } }
                        break;
                    }
                    if (c.krows) sc_k16_scatter(c.krows, 0, nt, c.rb, gdst);
                    continue;
                }
                for (int64_t t = 0; t < nt; t++) {
                    const void *p = sbase + (tok + t) * stok;
                    if (src->dtype == SC_DTYPE_F16) c.k->load_f16((const uint16_t *)p, mean, c.x + t * D, D);
                    else c.k->load_f32((const float *)p, mean, c.x + t * D, D);
                }
                if (f->encoding == SC_ENC_FP16) {
                    /* fp16 storage keeps the value as is (smoothing/rotation do not apply) */
                    for (int64_t t = 0; t < nt; t++)
                        c.k->store_f16(c.x + t * D, NULL, (uint16_t *)st->data + (row * st->capacity + g * T + t) * D, D);
                    continue;
                }
                if (rot) c.k->rotate(c.x, nt, D, (int32_t)D);
                sc_status es = encode_group(&c, row, g, nt);
                if (es) {
#pragma omp critical
                    { if (!failed) { strncpy(msg, sc_last_error(), sizeof msg - 1); failed = 1; } }
                    break;
                }
            }
        }
        if (!ok) {
#pragma omp critical
            { if (!failed) { strcpy(msg, "out of memory for pack scratch"); failed = 2; } }
        }
        if (ok) ctx_free(&c);
    }
    if (failed == 2) return sc_fail(SC_ERR_NO_MEMORY, "%s", msg);
    /* a fused kernel stopped: name the offending element if there is one */
    if (failed && fused && (s = sc_check_values(src))) return s;
    if (failed) return sc_fail(SC_ERR_NONFINITE, "%s", msg);
    return SC_OK;
}

sc_status sc_dequantize(const sc_format *f, const sc_store *st, const sc_tensor *dst, int64_t t0) {
    sc_status s = check_store_args(f, st, dst, t0, "dst");
    if (s) return s;
    const int64_t rows = st->rows, D = f->head_dim, n = dst->tokens;
    const int64_t T = f->encoding == SC_ENC_FP16 ? 1 : f->token_group;
    const int64_t ngroups = (n + T - 1) / T;
    if (n == 0) return SC_OK;
    volatile int failed = 0;
    int nthreads = sc_num_threads();
    if ((int64_t)nthreads > rows) nthreads = (int)rows;
#pragma omp parallel num_threads(nthreads)
    {
        group_ctx c;
        int ok = ctx_init(&c, f, st);
        if (!ok) failed = 1;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; row++) {
            if (!ok) continue;
            const float *mean = f->smooth && f->encoding != SC_ENC_FP16 ? st->mean + row * D : NULL;
            char *dbase = (char *)tensor_row0(dst, row);
            const int64_t dtok = token_bytes(dst);
            for (int64_t gi = 0; gi < ngroups; gi++) {
                int64_t tok = gi * T, nt = n - tok < T ? n - tok : T;
                int64_t g = (t0 + tok) / T;
                if (f->encoding == SC_ENC_FP16) {
                    for (int64_t t = 0; t < nt; t++)
                        c.k->load_f16((const uint16_t *)st->data + (row * st->capacity + g * T + t) * D, NULL,
                                      c.x + t * D, D);
                } else {
                    decode_group(&c, row, g, nt, c.x);
                    if (f->rotate) c.k->rotate(c.x, nt, D, (int32_t)D);
                }
                for (int64_t t = 0; t < nt; t++) {
                    void *p = (void *)(dbase + (tok + t) * dtok);
                    if (dst->dtype == SC_DTYPE_F16) c.k->store_f16(c.x + t * D, mean, (uint16_t *)p, D);
                    else c.k->store_f32(c.x + t * D, mean, (float *)p, D);
                }
            }
        }
        if (ok) ctx_free(&c);
    }
    if (failed) return sc_fail(SC_ERR_NO_MEMORY, "out of memory for pack scratch");
    return SC_OK;
}

sc_status sc_check_values(const sc_tensor *t) {
    sc_status s = check_tensor(t, "tensor", -1);
    if (s) return s;
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t h = 0; h < t->heads; h++)
            for (int64_t i = 0; i < t->tokens; i++) {
                const char *p = (const char *)t->ptr;
                int64_t off = b * t->stride_b + h * t->stride_h + i * t->stride_t;
                int64_t bad = -1;
                if (t->dtype == SC_DTYPE_F16) {
                    const uint16_t *r = (const uint16_t *)p + off;
                    uint16_t acc = 0;
                    for (int64_t c = 0; c < t->dim; c++) {
                        uint16_t e = (uint16_t)((r[c] & 0x7C00u) == 0x7C00u);
                        acc |= e;
                    }
                    if (acc)
                        for (int64_t c = 0; c < t->dim && bad < 0; c++)
                            if ((r[c] & 0x7C00u) == 0x7C00u) bad = c;
                } else {
                    const float *r = (const float *)p + off;
                    int acc = 0;
                    for (int64_t c = 0; c < t->dim; c++) acc |= !(fabsf(r[c]) <= SC_FP16_MAX);
                    if (acc)
                        for (int64_t c = 0; c < t->dim && bad < 0; c++)
                            if (!(fabsf(r[c]) <= SC_FP16_MAX)) bad = c;
                }
                if (bad >= 0)
                    return sc_fail(SC_ERR_NONFINITE,
                                   "element [%lld, %lld, %lld, %lld] is NaN, infinite or outside the "
                                   "float16 range (|x| <= 65504)",
                                   (long long)b, (long long)h, (long long)i, (long long)bad);
            }
    return SC_OK;
}

sc_status sc_convert(const sc_tensor *src, const sc_tensor *dst) {
    sc_status s;
    if ((s = check_tensor(src, "src", -1)) || (s = check_tensor(dst, "dst", src->dim))) return s;
    if (src->batch != dst->batch || src->heads != dst->heads || src->tokens != dst->tokens)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "src and dst shapes differ");
    for (int64_t b = 0; b < src->batch; b++)
        for (int64_t h = 0; h < src->heads; h++)
            for (int64_t i = 0; i < src->tokens; i++) {
                const char *sp = (const char *)src->ptr;
                char *dp = (char *)dst->ptr;
                int64_t so = b * src->stride_b + h * src->stride_h + i * src->stride_t;
                int64_t dof = b * dst->stride_b + h * dst->stride_h + i * dst->stride_t;
                if (src->dtype == SC_DTYPE_F16 && dst->dtype == SC_DTYPE_F16)
                    memcpy((uint16_t *)dp + dof, (const uint16_t *)sp + so, (size_t)src->dim * 2);
                else if (src->dtype == SC_DTYPE_F32 && dst->dtype == SC_DTYPE_F32)
                    memcpy((float *)dp + dof, (const float *)sp + so, (size_t)src->dim * 4);
                else if (src->dtype == SC_DTYPE_F16)
                    sc_f16_to_f32((const uint16_t *)sp + so, (float *)dp + dof, src->dim);
                else
                    sc_f32_to_f16((const float *)sp + so, (uint16_t *)dp + dof, src->dim);
            }
    return SC_OK;
}

void sc_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    sc_row_kernels_active()->load_f16(src, NULL, dst, n);
}

void sc_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    sc_row_kernels_active()->store_f16(src, NULL, dst, n);
}

/* ============================================================ tile decoder */
struct sc_decoder { group_ctx c; };

sc_decoder *sc_decoder_new(const sc_format *f, const sc_store *st) {
    sc_decoder *d = (sc_decoder *)malloc(sizeof *d);
    if (!d) return NULL;
    if (!ctx_init(&d->c, f, st)) { free(d); return NULL; }
    return d;
}

void sc_decoder_free(sc_decoder *d) {
    if (!d) return;
    ctx_free(&d->c);
    free(d);
}

void sc_decoder_run(sc_decoder *d, int64_t row, int64_t t0, int64_t n, float *dst) {
    group_ctx *c = &d->c;
    const int64_t D = c->D, T = c->T;
    if (c->f->encoding == SC_ENC_FP16) {
        const uint16_t *src = (const uint16_t *)c->st->data + (row * c->st->capacity + t0) * D;
        c->k->load_f16(src, NULL, dst, n * D);
        return;
    }
    if (c->k->decode_fast && c->k->decode_fast(c->f, c->st, row, t0, n, dst)) return;
    for (int64_t t = 0; t < n; t += T) {
        int64_t nt = n - t < T ? n - t : T;
        decode_group(c, row, (t0 + t) / T, nt, dst + t * D);
    }
}
