/*
 * attention.c -- streaming-softmax attention over packed K/V stores.
 *
 * Work item = (batch, kv head, block of query rows, key split). A block holds
 * the query rows of *all* query heads of one kv head (GQA-aware: each K/V tile
 * is decoded once for the whole group). Per key tile:
 *   decode K tile -> fp32 scratch (transformed domain: rotated, smoothed)
 *   S = Q' K^T        Q' = q * scale * log2(e), rotated like K
 *   online softmax in base 2 (running max m, sum l per row)
 *   decode V tile; O += P V
 * With one split the item finalises its rows (O / l, inverse V rotation, V
 * mean); with several, each split writes (O, m, l) partials and a reduce pass
 * merges them with the rescaling 2^(m_s - max m).
 *
 * The item body is compiled three times (portable, AVX2, AVX-512) through
 * always-inline wrappers with target attributes; cpu.c's active ISA picks one.
 * Results agree across ISAs to rounding (not bitwise: vector widths change the
 * summation order of dot products).
 */
#include <float.h>
#include <stdlib.h>

#include "../sc_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define SC_LOG2E 1.4426950408889634f
#define SC_LN2 0.6931471805599453f
/* query-row x key x channel products below which one thread does the call */
#ifndef SMALL_WORK
#define SMALL_WORK 131072.0
#endif
#define ROWS_MAX 64
/* query rows per item up to which int8/int4 codes are read in place */
#ifndef Q8_MAX_ROWS
#define Q8_MAX_ROWS 16
#endif /* query rows per work item (group * rows per head) */
#ifndef MX_ROWS_MAX
#define MX_ROWS_MAX 256 /* rows per item on the matrix engine (AMX) */
#endif
#ifndef MX_PREPACK_MAX
#define MX_PREPACK_MAX (128.0 * 1048576) /* bytes of K + V^T packed once per call, at most */
#endif
#ifndef MX_TILE_KEYS
#define MX_TILE_KEYS 128
#endif
#ifndef TILE_KEYS
#define TILE_KEYS 32 /* keys per tile: fp32 K and V tiles of d128 fill 2 x 16 KB of L1 */
#endif

/* ---------------------------------------------------------------- helpers */
/* 2^x for x <= 0 (scores minus the running max), ~1e-7 relative error;
 * exactly 0 below -126 and for -inf. Branch-free so loops vectorise. */
static inline float exp2_neg(float x) {
    x = x < -127.0f ? -127.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: round to nearest */
    float xi = (x + magic) - magic;
    float f = x - xi; /* [-0.5, 0.5] */
    float p = 1.5403530393381606e-4f;
    p = p * f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    p = p * f + 1.0f;
    int32_t e = (int32_t)xi + 127;
    uint32_t bits = (uint32_t)(e > 0 ? e : 0) << 23;
    return x <= -127.0f ? 0.0f : p * sc_bits_f32(bits);
}

static inline float dot(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    for (int64_t d = 0; d < n; d += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[d + k] * b[d + k];
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    return s;
}

/* ------------------------------------------------------- microkernels */
/* S[r][j] = q_r . k_j for R rows and nt keys (scores unmasked). */
typedef void (*qk_fn)(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL);
/* O[r] += sum_j P[r][j] v_j. */
typedef void (*pv_fn)(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL);

static inline __attribute__((always_inline)) void qk_generic(const float *q, const float *kt, float *s, int64_t R,
                                                             int64_t nt, int64_t D, int64_t TL) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < nt; j++) s[r * TL + j] = dot(q + r * D, kt + j * D, D);
}

static inline __attribute__((always_inline)) void pv_generic(const float *p, const float *vt, float *o, int64_t R,
                                                             int64_t nt, int64_t D, int64_t TL) {
    for (int64_t r = 0; r < R; r++) {
        float *orow = o + r * D;
        for (int64_t j = 0; j < nt; j++) {
            const float pj = p[r * TL + j];
            if (pj == 0.0f) continue;
            const float *vr = vt + j * D;
            for (int64_t d = 0; d < D; d++) orow[d] += pj * vr[d];
        }
    }
}

/* Softmax step of one row over a tile: sr[0..vis) are scores (log2 units),
 * keys from vis on are masked. On return sr[j] = 2^(s_j - m_new) (0 where
 * masked), *m and *l are updated, and the result is the factor alpha by which
 * the row's O must be rescaled; -1 when no key of the tile is visible (sr is
 * then zeroed and m, l are unchanged). */
typedef float (*sm_fn)(float *sr, int64_t vis, int64_t nt, float *m, float *l);

/* Direct microkernels read fp16 or fp32 K/V rows in place (row stride ks in
 * elements; k points at the tile's first key), converting in registers: no
 * fp32 tile is written. Used for plain tensors and fp16 stores where the ISA
 * provides them; other formats go through the tile decoder. */
typedef void (*qkd_fn)(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R, int64_t nt,
                       int64_t D, int64_t TL);
/* one query row from fp16: q0 = q, qr = q * scale (NULL: the generic loops) */
typedef void (*ldq_fn)(const uint16_t *src, float *q0, float *qr, float scale, int64_t D);
struct attn_ctx;
/* int8 K scores / int8 V accumulation read in place (mode: see q8_mode) */
typedef void (*qk8_fn)(const struct attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                       int64_t j0, int64_t nt, float *s);
typedef void (*pv8_fn)(const struct attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                       float *o);
typedef void (*pvd_fn)(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R, int64_t nt,
                       int64_t D, int64_t TL);
/* Matrix-engine (AMX) hooks for items of many rows. The engine works on
 * transposed scores and output (S^T, P^T: [row block of 16][key][16 rows];
 * O^T: [D][rows]) so that the softmax runs across 16 rows per vector:
 * prep packs the item's scaled queries once and zeroes O^T; qk writes S^T of
 * an fp32 K tile; sm turns it into P^T for keys j < vis[row] - j0, updates
 * m, l and rescales O^T (returns 0 when no row sees a key of the tile); pv
 * adds V^T P^T of an fp32 V tile to O^T; done releases the engine. NULL
 * where the ISA has none. */
struct attn_ws;
typedef struct mx_hooks {
    void (*prep)(struct attn_ws *w, int64_t R, int64_t D);
    /* K / V tiles (fp32 rows) to the engine's operand layouts (per item, or once per call: c->mxpk) */
    void (*pack_k)(const float *kt, int64_t nt, int64_t D, int64_t ns, uint16_t *dst);
    void (*pack_v)(const float *vt, int64_t nt, int64_t D, int64_t ns, uint16_t *dst, uint32_t *col);
    void (*qk)(struct attn_ws *w, const uint16_t *kp, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL);
    int (*sm)(struct attn_ws *w, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL);
    void (*pv)(struct attn_ws *w, const uint16_t *va, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL);
    void (*done)(void);
    void (*rows)(struct attn_ws *w, int64_t R, int64_t D, float *dst); /* O^T -> dst [Rp][D] */
} mx_hooks;

static inline __attribute__((always_inline)) float softmax_generic(float *sr, int64_t vis, int64_t nt, float *m,
                                                                   float *l) {
    float mt = -INFINITY;
    for (int64_t j = 0; j < vis; j++) mt = sr[j] > mt ? sr[j] : mt;
    if (mt == -INFINITY) {
        for (int64_t j = 0; j < nt; j++) sr[j] = 0.0f;
        return -1.0f;
    }
    const float mnew = mt > *m ? mt : *m;
    const float alpha = exp2_neg(*m - mnew);
    float sum = 0.0f;
    for (int64_t j = 0; j < vis; j++) {
        float p = exp2_neg(sr[j] - mnew);
        sr[j] = p;
        sum += p;
    }
    for (int64_t j = vis; j < nt; j++) sr[j] = 0.0f;
    *l = *l * alpha + sum;
    *m = mnew;
    return alpha;
}

typedef struct attn_ctx {
    const sc_attention_args *a;
    int64_t B, Hq, Hkv, group, M, D, N;
    int64_t mb, nrb, rows; /* query rows per head per block, blocks, rows per item (group * mb) */
    int64_t S, chunk, tile;
    float qscale;
    float *part_o, *part_ml; /* split partials */
    /* what the formats ask of the kernel, resolved once (all 0 for plain tensors) */
    int k_rotate, v_rotate, k_smooth, v_smooth;
    const sc_row_kernels *rk; /* the active row kernels, fetched once per call */
    int k_direct, v_direct;   /* fp16/fp32 rows readable in place (tensors or fp16 stores) */
    /* int8/int4 codes read in place, dequantized in registers (0: no; see q8_mode()):
     * K 1 = per-channel scales (G 1) folded into q per token group (+ the
     *       minimums' dot with q per group for zero points),
     * K/V 2 = per-token cell scales (T 1, G a multiple of 16) applied per 16 codes */
    int k_q8, v_q8;
    int mx; /* items of more than Q8_MAX_ROWS rows use the matrix engine (mx_hooks) */
    /* K and V^T of every tile packed once per call for the engine, when several
     * row blocks share them: [kv row][tile][mx_tile_words] each (NULL: per item) */
    uint16_t *mxpk, *mxpv;
    int64_t mx_tiles, mx_tile_words;
} attn_ctx;

/* How an int8/int4 store can be read in place: 0 (use the tile decoder), 1 or
 * 2 (see attn_ctx). Outlier tables go through the decoder, and so do zero
 * points except for per-channel K (their minimums add a per-row constant to
 * each token group's scores). Rotation and smoothing are handled around the
 * kernel (q rotated, output rotated back / mean added) as for the tile. */
static int q8_mode(const sc_format *f, int is_k) {
    if (!f || (f->encoding != SC_ENC_INT8 && f->encoding != SC_ENC_INT4) || f->outliers) return 0;
    if (is_k && f->channel_group == 1 && f->token_group >= 4) return 1;
    if (f->zero_point) return 0;
    if (f->token_group == 1 && f->channel_group % 16 == 0) return 2;
    return 0;
}

/* Where kv head (b, hk)'s K or V rows start, their stride (elements) and dtype, for direct reads. */
static inline const char *direct_rows(const attn_ctx *c, int which, int64_t b, int64_t hk, int64_t *stride,
                                      int *f16) {
    const sc_tensor *t = which ? c->a->v_tensor : c->a->k_tensor;
    if (t) {
        const size_t es = t->dtype == SC_DTYPE_F16 ? 2 : 4;
        *stride = t->stride_t;
        *f16 = t->dtype == SC_DTYPE_F16;
        return (const char *)t->ptr + (size_t)(b * t->stride_b + hk * t->stride_h) * es;
    }
    const sc_store *st = which ? c->a->v : c->a->k;
    *stride = c->D;
    *f16 = 1;
    return (const char *)st->data + (size_t)((b * c->Hkv + hk) * st->capacity) * (size_t)c->D * 2;
}

typedef struct attn_ws {
    float *q, *q0, *s, *kt, *vt, *o, *m, *l;
    float *qf; /* q with K's per-channel scales folded in (k_q8 1) */
    float *sc; /* per-key cell scales of the current tile (k_q8 / v_q8 2) */
    sc_decoder *kd, *vd;
    /* matrix-engine operands (c->mx), bf16 hi/lo pairs: queries packed as B
     * tiles, the K tile and P as A tiles, the V tile as B tiles */
    uint16_t *mxq, *mxk, *mxv, *mxp;
    float *mxt;   /* S^T / P^T of the tile: [row block][key][16] */
    uint16_t *mxc; /* column staging for the V^T transposes */
    int32_t *mxvis; /* per row: keys visible from key 0 (causal limit; < 0: padding row) */
    int64_t mxs; /* operand subtiles per 32 elements: 3 (bf16x3) or 1 (bf16 precision) */
} attn_ws;

#define MX_RP(R) (((R) + 31) / 32 * 32)  /* rows padded for pairs of 16-row tiles */
#define MX_TP(T) (((T) + 31) / 32 * 32)  /* keys padded for 32-key steps */
#define MX_NS 3 /* AMX operand subtiles per 32 elements of the K dimension (bf16x3) */
static int ws_init(attn_ws *w, const attn_ctx *c) {
    /* the matrix engine stores whole O tiles: its rows are padded */
    const int64_t R = c->mx ? MX_RP(c->rows) : c->rows, D = c->D, TL = c->tile;
    size_t nf = (size_t)(4 * R * D + R * TL + 2 * TL * D + 2 * R + TL * (D / 16 + 1));
    memset(w, 0, sizeof *w);
    w->q = (float *)malloc(nf * sizeof(float));
    if (!c->a->k_tensor) {
        w->kd = sc_decoder_new(c->a->kf, c->a->k);
        w->vd = sc_decoder_new(c->a->vf, c->a->v);
        if (!w->kd || !w->vd) return 0;
    }
    if (!w->q) return 0;
    w->q0 = w->q + R * D;
    w->o = w->q0 + R * D;
    w->s = w->o + R * D;
    w->kt = w->s + R * TL;
    w->vt = w->kt + TL * D;
    w->m = w->vt + TL * D;
    w->l = w->m + R;
    w->qf = w->l + R;
    w->sc = w->qf + R * D;
    if (c->mx) {
        w->mxs = c->a->precision == SC_PRECISION_BF16 ? 1 : MX_NS;
        const int64_t TP = MX_TP(TL);
        const size_t nq = (size_t)(MX_NS * R * D), nk = (size_t)(MX_NS * TP * D), np = (size_t)(MX_NS * R * TP);
        const size_t nt = (size_t)(R * TP), ncol = (size_t)(2 * MX_NS * 512);
        w->mxq = (uint16_t *)aligned_alloc(64, ((nq + 2 * nk + np + ncol) * 2 + nt * 4 + (size_t)R * 4 + 63) / 64 * 64);
        if (!w->mxq) return 0;
        w->mxk = w->mxq + nq;
        w->mxv = w->mxk + nk;
        w->mxp = w->mxv + nk;
        w->mxc = w->mxp + np;
        w->mxt = (float *)(w->mxc + ncol);
        w->mxvis = (int32_t *)(w->mxt + nt);
    }
    return 1;
}

static void ws_free(attn_ws *w) {
    free(w->mxq);
    free(w->q);
    sc_decoder_free(w->kd);
    sc_decoder_free(w->vd);
}

static inline const char *q_row(const sc_tensor *t, int64_t b, int64_t h, int64_t i) {
    size_t es = t->dtype == SC_DTYPE_F16 ? 2 : 4;
    return (const char *)t->ptr + (size_t)(b * t->stride_b + h * t->stride_h + i * t->stride_t) * es;
}

/* Tokens [j0, j0+nt) of kv head hk as fp32 rows: from a plain tensor (read in
 * place, any strides) or through the store's tile decoder. */
static void load_tile(const sc_row_kernels *rk, const sc_tensor *t, sc_decoder *dec, int64_t b, int64_t hk,
                      int64_t kr, int64_t j0, int64_t nt, float *dst) {
    if (!t) {
        sc_decoder_run(dec, kr, j0, nt, dst);
        return;
    }
    const int64_t D = t->dim;
    for (int64_t j = 0; j < nt; j++) {
        const char *src = q_row(t, b, hk, j0 + j);
        if (t->dtype == SC_DTYPE_F16) rk->load_f16((const uint16_t *)src, NULL, dst + j * D, D);
        else memcpy(dst + j * D, src, (size_t)D * sizeof(float));
    }
}

/* Output of one row: o = O/l (then V's inverse rotation and mean), or zeros. */
static inline __attribute__((always_inline)) void finish_row(const attn_ctx *c, int64_t b, int64_t hk,
                                                             int64_t g, int64_t i, const float *O, float m,
                                                             float l, const float *q0, float *tmp) {
    const sc_attention_args *a = c->a;
    const int64_t D = c->D, h = hk * c->group + g, kr = b * c->Hkv + hk;
    if (l > 0.0f) {
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < D; d++) tmp[d] = O[d] * inv;
        if (c->v_rotate) sc_rotate_f32(tmp, 1, D, (int32_t)D);
        if (c->v_smooth)
            for (int64_t d = 0; d < D; d++) tmp[d] += a->v->mean[kr * D + d];
    } else {
        for (int64_t d = 0; d < D; d++) tmp[d] = 0.0f;
    }
    char *dst = (char *)q_row(&a->out, b, h, i);
    if (a->out.dtype == SC_DTYPE_F16) c->rk->store_f16(tmp, NULL, (uint16_t *)dst, D);
    else memcpy(dst, tmp, (size_t)D * sizeof(float));
    if (a->lse) {
        float v = -INFINITY;
        if (l > 0.0f) {
            v = (m + log2f(l)) * SC_LN2;
            /* K smoothing shifted every score of the row by scale * q.mean */
            if (c->k_smooth) v += a->scale * dot(q0, a->k->mean + kr * D, D);
        }
        a->lse[(b * c->Hq + h) * c->M + i] = v;
    }
}

/* --------------------------------------------------------------- the item */
static inline __attribute__((always_inline)) void attn_item_body(const attn_ctx *c, int64_t item, attn_ws *w,
                                                                 qk_fn qk, pv_fn pv, sm_fn sm, qkd_fn qkd,
                                                                 pvd_fn pvd, ldq_fn ldq, qk8_fn qk8,
                                                                 pv8_fn pv8, const mx_hooks *mx) {
    /* workspace pointers as locals: with -fno-strict-aliasing, every float
     * store could alias w->o etc., which kept loops scalar and reloading */
    float *const wq = w->q, *const wq0 = w->q0, *const wo = w->o, *const ws = w->s;
    float *const wm = w->m, *const wl = w->l, *const wkt = w->kt, *const wvt = w->vt;
    const sc_attention_args *a = c->a;
    const int64_t D = c->D, R = c->rows, TL = c->tile, mb = c->mb, M = c->M;
    const int64_t s_idx = item % c->S;
    int64_t rest = item / c->S;
    const int64_t rb = rest % c->nrb;
    rest /= c->nrb;
    const int64_t hk = rest % c->Hkv, b = rest / c->Hkv;
    const int64_t kr = b * c->Hkv + hk;
    const int64_t n_b = a->kv_lens ? a->kv_lens[b] : c->N;
    const int64_t i0 = rb * mb, mrows = M - i0 < mb ? M - i0 : mb;

    /* queries: fp32, scaled into log2 units, rotated like K */
    const float qscale = c->qscale; /* a local: float stores below could alias c->qscale */
    for (int64_t g = 0; g < c->group; g++)
        for (int64_t ii = 0; ii < mb; ii++) {
            const int64_t r = g * mb + ii;
            float *qr = wq + r * D, *q0 = wq0 + r * D;
            if (ii < mrows) {
                const char *src = q_row(&a->q, b, hk * c->group + g, i0 + ii);
                if (a->q.dtype == SC_DTYPE_F16 && ldq) {
                    ldq((const uint16_t *)src, q0, qr, qscale, D);
                    goto row_init;
                }
                if (a->q.dtype == SC_DTYPE_F16) c->rk->load_f16((const uint16_t *)src, NULL, q0, D);
                else memcpy(q0, src, (size_t)D * sizeof(float));
            } else {
                for (int64_t d = 0; d < D; d++) q0[d] = 0.0f;
            }
            for (int64_t d = 0; d < D; d++) qr[d] = q0[d] * qscale;
        row_init:
            wm[r] = -INFINITY;
            wl[r] = 0.0f;
            for (int64_t d = 0; d < D; d++) wo[r * D + d] = 0.0f;
        }
    if (c->k_rotate) sc_rotate_f32(wq, R, D, (int32_t)D);
    const int use_mx = mx && c->mx; /* c->mx: every item has more than Q8_MAX_ROWS rows */

    /* key range of this split, cut by the causal limit of the block's last row */
    int64_t lo = s_idx * c->chunk, hi = lo + c->chunk < n_b ? lo + c->chunk : n_b;
    if (a->causal) {
        int64_t lim = n_b - M + i0 + mrows; /* exclusive */
        hi = hi < lim ? hi : lim;
    }
    if (use_mx) {
        const int64_t Rp = MX_RP(R);
        for (int64_t r = 0; r < Rp; r++) {
            const int64_t ii = r % mb;
            w->mxvis[r] = r < R && ii < mrows ? (int32_t)(a->causal ? n_b - M + i0 + ii + 1 : INT32_MAX / 2)
                                              : INT32_MIN / 2;
            if (r >= R) {
                wm[r] = -INFINITY;
                wl[r] = 0.0f;
            }
        }
        mx->prep(w, R, D);
        for (int64_t j0 = lo; j0 < hi; j0 += TL) {
            const int64_t nt = hi - j0 < TL ? hi - j0 : TL;
            const size_t pre = (size_t)((kr * c->mx_tiles + j0 / TL) * c->mx_tile_words);
            const uint16_t *kp = c->mxpk ? c->mxpk + pre : w->mxk;
            if (!c->mxpk) {
                load_tile(c->rk, a->k_tensor, w->kd, b, hk, kr, j0, nt, wkt);
                mx->pack_k(wkt, nt, D, w->mxs, w->mxk);
            }
            mx->qk(w, kp, R, j0, nt, D, TL);
            if (!mx->sm(w, R, j0, nt, D, TL)) continue;
            const uint16_t *va = c->mxpv ? c->mxpv + pre : w->mxv;
            if (!c->mxpv) {
                load_tile(c->rk, a->v_tensor, w->vd, b, hk, kr, j0, nt, wvt);
                mx->pack_v(wvt, nt, D, w->mxs, w->mxv, (uint32_t *)w->mxc);
            }
            mx->pv(w, va, R, j0, nt, D, TL);
        }
        mx->done();
        /* O^T [D][Rp] back to rows (w->qf: free on this path) */
        mx->rows(w, R, D, w->qf);
        const int64_t base = (item / c->S) * c->S + s_idx;
        for (int64_t r = 0; r < R; r++) {
            if (r % mb >= mrows) continue;
            float *orow = w->qf + r * D;
            if (c->S > 1) memcpy(c->part_o + (base * R + r) * D, orow, (size_t)D * sizeof(float));
            if (c->S == 1) {
                finish_row(c, b, hk, r / mb, i0 + r % mb, orow, wm[r], wl[r], wq0 + r * D, wkt);
            } else {
                c->part_ml[(base * R + r) * 2] = wm[r];
                c->part_ml[(base * R + r) * 2 + 1] = wl[r];
            }
        }
        if (c->S > 1)
            for (int64_t r = 0; r < R; r++)
                if (r % mb >= mrows) { /* rows past M: empty partials */
                    memset(c->part_o + (base * R + r) * D, 0, (size_t)D * sizeof(float));
                    c->part_ml[(base * R + r) * 2] = -INFINITY;
                    c->part_ml[(base * R + r) * 2 + 1] = 0.0f;
                }
        return;
    }
    const int kdirect = c->k_direct && qkd, vdirect = c->v_direct && pvd;
    /* in-place int8/int4 reads convert each code once per 4 query rows: for
     * decode-sized items that beats a tile decode; for prefill items (many
     * rows) decoding the tile once wins (measured: int4 prefill 2048 causal
     * 379 ms in place vs 263 ms through the tile) */
    const int few_rows = R <= Q8_MAX_ROWS;
    const int kq8 = qk8 && few_rows ? c->k_q8 : 0, vq8 = pv8 && few_rows ? c->v_q8 : 0;
    int64_t kst = 0, vst = 0;
    int kf16 = 0, vf16 = 0;
    const char *kbase = kdirect ? direct_rows(c, 0, b, hk, &kst, &kf16) : NULL;
    const char *vbase = vdirect ? direct_rows(c, 1, b, hk, &vst, &vf16) : NULL;
    for (int64_t j0 = lo; j0 < hi; j0 += TL) {
        const int64_t nt = hi - j0 < TL ? hi - j0 : TL;
        if (kdirect) {
            qkd(wq, kbase + (size_t)(j0 * kst) * (kf16 ? 2 : 4), kst, kf16, ws, R, nt, D, TL);
        } else if (kq8) {
            qk8(c, kq8, wq, w->qf, w->sc, kr, j0, nt, ws);
        } else {
            load_tile(c->rk, a->k_tensor, w->kd, b, hk, kr, j0, nt, wkt);
            qk(wq, wkt, ws, R, nt, D, TL);
        }
        int any = 0;
        for (int64_t r = 0; r < R; r++) {
            const int64_t ii = r % mb;
            float *sr = ws + r * TL;
            if (ii >= mrows) { for (int64_t j = 0; j < nt; j++) sr[j] = 0.0f; continue; }
            /* keys visible to row i: j < n_b, and j <= n_b - M + i when causal */
            int64_t vis = a->causal ? n_b - M + i0 + ii + 1 - j0 : nt;
            vis = vis < 0 ? 0 : (vis > nt ? nt : vis);
            const float alpha = sm(sr, vis, nt, &wm[r], &wl[r]);
            if (alpha < 0.0f) continue; /* no visible key: p = 0 */
            any = 1;
            if (alpha != 1.0f)
                for (int64_t d = 0; d < D; d++) wo[r * D + d] *= alpha;
        }
        if (!any) continue;
        /* rows without mass hold p = 0 */
        if (vdirect) {
            pvd(ws, vbase + (size_t)(j0 * vst) * (vf16 ? 2 : 4), vst, vf16, wo, R, nt, D, TL);
        } else if (vq8) {
            pv8(c, w->sc, kr, j0, nt, ws, wo);
        } else {
            load_tile(c->rk, a->v_tensor, w->vd, b, hk, kr, j0, nt, wvt);
            pv(ws, wvt, wo, R, nt, D, TL);
        }
    }

    if (c->S == 1) {
        for (int64_t g = 0; g < c->group; g++)
            for (int64_t ii = 0; ii < mrows; ii++) {
                const int64_t r = g * mb + ii;
                finish_row(c, b, hk, g, i0 + ii, wo + r * D, wm[r], wl[r], wq0 + r * D, wkt);
            }
    } else {
        const int64_t base = (item / c->S) * c->S + s_idx;
        memcpy(c->part_o + base * R * D, wo, (size_t)(R * D) * sizeof(float));
        for (int64_t r = 0; r < R; r++) {
            c->part_ml[(base * R + r) * 2] = wm[r];
            c->part_ml[(base * R + r) * 2 + 1] = wl[r];
        }
    }
}

/* Merge the splits of one (batch, kv head, row block). */
static inline __attribute__((always_inline)) void attn_reduce_body(const attn_ctx *c, int64_t blk, attn_ws *w) {
    const sc_attention_args *a = c->a;
    const int64_t D = c->D, R = c->rows, mb = c->mb, M = c->M, S = c->S;
    const int64_t rb = blk % c->nrb, hk = (blk / c->nrb) % c->Hkv, b = blk / c->nrb / c->Hkv;
    const int64_t i0 = rb * mb, mrows = M - i0 < mb ? M - i0 : mb;
    for (int64_t g = 0; g < c->group; g++)
        for (int64_t ii = 0; ii < mrows; ii++) {
            const int64_t r = g * mb + ii;
            float mx = -INFINITY;
            for (int64_t s = 0; s < S; s++) {
                float ms = c->part_ml[((blk * S + s) * R + r) * 2];
                mx = ms > mx ? ms : mx;
            }
            float *O = w->o;
            for (int64_t d = 0; d < D; d++) O[d] = 0.0f;
            float L = 0.0f;
            if (mx != -INFINITY)
                for (int64_t s = 0; s < S; s++) {
                    const float ms = c->part_ml[((blk * S + s) * R + r) * 2];
                    const float ls = c->part_ml[((blk * S + s) * R + r) * 2 + 1];
                    if (ms == -INFINITY) continue;
                    const float f = exp2_neg(ms - mx);
                    L += ls * f;
                    const float *po = c->part_o + ((blk * S + s) * R + r) * D;
                    for (int64_t d = 0; d < D; d++) O[d] += po[d] * f;
                }
            /* the row's original query, for the lse smoothing term */
            float *q0 = w->q0;
            if (a->lse && c->k_smooth) {
                const char *src = q_row(&a->q, b, hk * c->group + g, i0 + ii);
                if (a->q.dtype == SC_DTYPE_F16) c->rk->load_f16((const uint16_t *)src, NULL, q0, D);
                else memcpy(q0, src, (size_t)D * sizeof(float));
            }
            finish_row(c, b, hk, g, i0 + ii, O, mx, L, q0, w->kt);
        }
}

/* ------------------------------------------------------- ISA instances */
typedef void (*item_fn)(const attn_ctx *, int64_t, attn_ws *);

static void qk_portable(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    qk_generic(q, kt, s, R, nt, D, TL);
}
static void pv_portable(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    pv_generic(p, vt, o, R, nt, D, TL);
}
static float sm_portable(float *sr, int64_t vis, int64_t nt, float *m, float *l) {
    return softmax_generic(sr, vis, nt, m, l);
}
static void item_portable(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_portable, pv_portable, sm_portable, NULL, NULL, NULL, NULL, NULL, NULL);
}
static void reduce_portable(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }
#ifdef SC_X86
#include <immintrin.h>
#define SC_T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SC_T_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

SC_T_AVX2 static void qk_avx2(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    qk_generic(q, kt, s, R, nt, D, TL);
}
SC_T_AVX2 static void pv_avx2(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    pv_generic(p, vt, o, R, nt, D, TL);
}
SC_T_AVX2 static float sm_avx2(float *sr, int64_t vis, int64_t nt, float *m, float *l) {
    return softmax_generic(sr, vis, nt, m, l);
}
SC_T_AVX2 static void item_avx2(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_avx2, pv_avx2, sm_avx2, NULL, NULL, NULL, NULL, NULL, NULL);
}
SC_T_AVX2 static void reduce_avx2(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }

/* 16 vectors -> one vector whose lane k is the sum of a[k]'s lanes. */
SC_T_AVX512 static inline __m512 hsum16(__m512 *a) {
    __m512 b[8], c4[4];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c4[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* c4[i], 128-bit lane L: partial sums of a[4i..4i+3] over lane L */
    __m512 e0 = _mm512_add_ps(_mm512_shuffle_f32x4(c4[0], c4[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c4[0], c4[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 e1 = _mm512_add_ps(_mm512_shuffle_f32x4(c4[2], c4[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c4[2], c4[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 16 K/V elements from fp32 (kind 0), fp16 (1) or int8-code (2) rows; kind is
 * a constant after inlining. */
#define SC_INL static inline __attribute__((always_inline))
SC_T_AVX512 SC_INL __m512 ld16(const void *base, int64_t i, int kind) {
    if (kind == 2) /* int8 codes */
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)base + i))));
    if (kind == 5) /* uint8 codes (zero point) */
        return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)base + i))));
    if (kind == 3 || kind == 4) {
        /* int4: channel 2i is byte i's low nibble, 2i+1 its high one; each
         * byte twice, then shifts of 0 and 4 */
        const __m128i b8 = _mm_loadl_epi64((const __m128i *)((const uint8_t *)base + i / 2));
        __m512i w = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b8, b8));
        w = _mm512_and_si512(_mm512_srlv_epi32(w, _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0)),
                             _mm512_set1_epi32(15));
        const __m512 x = _mm512_cvtepi32_ps(w);
        return kind == 3 ? _mm512_sub_ps(x, _mm512_set1_ps(8.0f)) : x; /* symmetric codes are stored + 8 */
    }
    return kind ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i)))
                : _mm512_loadu_ps((const float *)base + i);
}
/* Cell scales (sc: [keys][D/G], NULL: none): cell_map() fills, once per call,
 * the cell of each 16-channel chunk (no division in the loops: a 64-bit idiv
 * per lookup cost more than the FMAs); cell_scaled() multiplies 16 values of
 * key j, chunk ch by their scale. */
static inline void cell_map(const float *sc, int64_t D, int64_t G, int64_t *ncell, int32_t *cix) {
    if (!sc) return;
    *ncell = D / G;
    for (int64_t ch = 0; ch < D / 16; ch++) cix[ch] = (int32_t)(ch * 16 / G);
}
SC_T_AVX512 SC_INL __m512 cell_scaled(__m512 x, const float *sc, int64_t j, int64_t ch, int64_t ncell,
                                      const int32_t *cix) {
    return sc ? _mm512_mul_ps(x, _mm512_set1_ps(sc[j * ncell + cix[ch]])) : x;
}

/* Scores 16 keys at a time: 16 accumulators per row, one transposing reduction.
 * Keys are rows of k with stride ks elements. */
SC_T_AVX512 SC_INL void qk16_body(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R,
                                  int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    for (int64_t r = 0; r < R; r++) {
        const float *qr = q + r * D;
        for (int64_t j0 = 0; j0 < nt; j0 += 16) {
            const int64_t nk = nt - j0 < 16 ? nt - j0 : 16;
            __m512 acc[16];
            for (int kk = 0; kk < 16; kk++) acc[kk] = _mm512_setzero_ps();
            for (int64_t c = 0; c < D; c += 16) {
                const __m512 qv = _mm512_loadu_ps(qr + c);
                for (int kk = 0; kk < 16; kk++)
                    if (kk < nk)
                        acc[kk] = _mm512_fmadd_ps(
                            qv, cell_scaled(ld16(k, (j0 + kk) * ks + c, f16), sc, j0 + kk, c / 16, ncell, cix), acc[kk]);
            }
            _mm512_mask_storeu_ps(s + r * TL + j0, (__mmask16)((1u << nk) - 1), hsum16(acc));
        }
    }
}

/* One 4-row x nk-key block of qk44_body */
SC_T_AVX512 SC_INL void qk44_block(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t r0,
                                   int64_t j0, int64_t nk, int64_t D, int64_t TL, const float *sc, int64_t ncell,
                                   const int32_t *cix) {
    __m512 acc[16];
    for (int kk = 0; kk < 16; kk++) acc[kk] = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; c += 16) {
        __m512 kv[4];
        for (int kk = 0; kk < 4; kk++)
            kv[kk] = kk < nk ? cell_scaled(ld16(k, (j0 + kk) * ks + c, f16), sc, j0 + kk, c / 16, ncell, cix)
                             : _mm512_setzero_ps();
        for (int rr = 0; rr < 4; rr++) {
            const __m512 qv = _mm512_loadu_ps(q + (r0 + rr) * D + c);
            for (int kk = 0; kk < 4; kk++) acc[rr * 4 + kk] = _mm512_fmadd_ps(qv, kv[kk], acc[rr * 4 + kk]);
        }
    }
    float out[16];
    _mm512_storeu_ps(out, hsum16(acc)); /* lane rr*4 + kk */
    for (int rr = 0; rr < 4; rr++)
        for (int kk = 0; kk < nk; kk++) s[(r0 + rr) * TL + j0 + kk] = out[rr * 4 + kk];
}

/* Rows in fours: 4 rows x 4 keys of accumulators share every load (8 loads
 * feed 16 FMAs instead of 17 loads feeding 16), and one transposing
 * reduction yields all 16 (row, key) scores. */
SC_T_AVX512 SC_INL void qk44_body(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R,
                                  int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    int64_t r0 = 0;
    for (; r0 + 4 <= R; r0 += 4) {
        int64_t j0 = 0;
        /* whole blocks with the key count a constant (a variable one left a
         * compare-and-branch per key and chunk in the loop) */
        for (; j0 + 4 <= nt; j0 += 4) qk44_block(q, k, ks, f16, s, r0, j0, 4, D, TL, sc, ncell, cix);
        if (j0 < nt) qk44_block(q, k, ks, f16, s, r0, j0, nt - j0, D, TL, sc, ncell, cix);
    }
    if (r0 < R) qk16_body(q + r0 * D, k, ks, f16, s + r0 * TL, R - r0, nt, D, TL, sc, G);
}

/* One block of pv_body: rows r0..r0+nr, channels c0..c0+16 nv, all nt keys */
SC_T_AVX512 SC_INL void pv_block(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t r0,
                                 int64_t c0, int64_t nr, int64_t nv, int64_t nt, int64_t D, int64_t TL,
                                 const float *sc, int64_t ncell, const int32_t *cix) {
    __m512 acc[4][4];
    /* fixed trip counts, fully unrolled: acc stays in registers (a
     * variable-bound loop here made GCC spill acc and copy it out
     * with rep movsq, ~40% of a short decode) */
#pragma GCC unroll 4
    for (int rr = 0; rr < 4; rr++)
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; kk++)
            acc[rr][kk] = (rr < nr && kk < nv) ? _mm512_loadu_ps(o + (r0 + rr) * D + c0 + 16 * kk)
                                                : _mm512_setzero_ps();
    for (int64_t j = 0; j < nt; j++) {
        __m512 x[4];
        for (int kk = 0; kk < 4; kk++)
            x[kk] = kk < nv ? cell_scaled(ld16(v, j * vs + c0 + 16 * kk, f16), sc, j, c0 / 16 + kk, ncell, cix)
                            : _mm512_setzero_ps();
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const __m512 pj = _mm512_set1_ps(p[(r0 + rr) * TL + j]);
            for (int kk = 0; kk < 4; kk++) acc[rr][kk] = _mm512_fmadd_ps(pj, x[kk], acc[rr][kk]);
        }
    }
#pragma GCC unroll 4
    for (int rr = 0; rr < 4; rr++)
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; kk++)
            if (rr < nr && kk < nv) _mm512_storeu_ps(o + (r0 + rr) * D + c0 + 16 * kk, acc[rr][kk]);
}

/* O += P V with the accumulators of 4 rows x 64 channels in registers. Whole
 * blocks take a constant-shape instance (variable row/channel counts left
 * compare-and-branch chains in the key loop: ~10% of int8 decode). */
SC_T_AVX512 SC_INL void pv_body(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R,
                                int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 64) {
            const int64_t nv = (D - c0) / 16 < 4 ? (D - c0) / 16 : 4;
            if (nr == 4 && nv == 4) pv_block(p, v, vs, f16, o, r0, c0, 4, 4, nt, D, TL, sc, ncell, cix);
            else pv_block(p, v, vs, f16, o, r0, c0, nr, nv, nt, D, TL, sc, ncell, cix);
        }
    }
}

/* fp32 tiles (decoded formats) */
SC_T_AVX512 static void qk44_avx512(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D,
                                    int64_t TL) {
    qk44_body(q, kt, D, 0, s, R, nt, D, TL, NULL, 1);
}
SC_T_AVX512 static void pv_avx512(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D,
                                  int64_t TL) {
    pv_body(p, vt, D, 0, o, R, nt, D, TL, NULL, 1);
}
/* rows read in place */
SC_T_AVX512 static void qkd_avx512(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R,
                                   int64_t nt, int64_t D, int64_t TL) {
    if (f16) qk44_body(q, k, ks, 1, s, R, nt, D, TL, NULL, 1);
    else qk44_body(q, k, ks, 0, s, R, nt, D, TL, NULL, 1);
}
SC_T_AVX512 static void pvd_avx512(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R,
                                   int64_t nt, int64_t D, int64_t TL) {
    if (f16) pv_body(p, v, vs, 1, o, R, nt, D, TL, NULL, 1);
    else pv_body(p, v, vs, 0, o, R, nt, D, TL, NULL, 1);
}

/* ---- int8 stores read in place: codes converted in registers, never to a tile */
/* n scales of a store (fp16 or fp32) from element i0, as fp32 */
SC_T_AVX512 static void scales_f32(const sc_store *st, int f32, int64_t i0, int64_t n, float *dst) {
    if (f32) {
        memcpy(dst, (const float *)st->scales + i0, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = (const uint16_t *)st->scales + i0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
    for (; i < n; i++) dst[i] = sc_h2f(h[i]);
}

/* the ld16 kind of a quantized store's codes */
static inline int code_kind(const sc_format *f) {
    return f->encoding == SC_ENC_INT8 ? (f->zero_point ? 5 : 2) : (f->zero_point ? 4 : 3);
}

SC_T_AVX512 static void qk8_avx512(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                                   int64_t j0, int64_t nt, float *s) {
    const sc_format *f = c->a->kf;
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, G = f->channel_group;
    const int64_t rb = f->encoding == SC_ENC_INT8 ? D : D / 2;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32, kind = code_kind(f);
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    if (mode == 2) { /* k = code * s[j][cell] */
        scales_f32(st, sf32, (kr * st->capacity + j0) * (D / G), nt * (D / G), sc);
        if (kind == 2) qk44_body(q, codes, D, 2, s, R, nt, D, TL, sc, G);
        else qk44_body(q, codes, D, 3, s, R, nt, D, TL, sc, G);
        return;
    }
    /* mode 1: k = code * s[g][c] (+ m[g][c]); fold s into q once per token group */
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t cell0 = (kr * (st->capacity / T) + g) * D;
        scales_f32(st, sf32, cell0, D, sc);
        for (int64_t r = 0; r < R; r++)
            for (int64_t ch = 0; ch < D; ch += 16)
                _mm512_storeu_ps(qf + r * D + ch, _mm512_mul_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_loadu_ps(sc + ch)));
        const uint8_t *ct = codes + t * rb;
        switch (kind) {
        case 2: qk44_body(qf, ct, D, 2, s + t, R, n, D, TL, NULL, 1); break;
        case 3: qk44_body(qf, ct, D, 3, s + t, R, n, D, TL, NULL, 1); break;
        case 4: qk44_body(qf, ct, D, 4, s + t, R, n, D, TL, NULL, 1); break;
        default: qk44_body(qf, ct, D, 5, s + t, R, n, D, TL, NULL, 1); break;
        }
        if (f->zero_point) {
            /* + q . m[g]: the same for every key of the group */
            const sc_store zs = {.scales = st->zeros};
            scales_f32(&zs, sf32, cell0, D, sc);
            for (int64_t r = 0; r < R; r++) {
                __m512 acc = _mm512_setzero_ps();
                for (int64_t ch = 0; ch < D; ch += 16)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_loadu_ps(sc + ch), acc);
                const float bias = _mm512_reduce_add_ps(acc);
                for (int64_t jj = 0; jj < n; jj++) s[r * TL + t + jj] += bias;
            }
        }
        t += n;
    }
}

SC_T_AVX512 static void pv8_avx512(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                                   float *o) {
    const sc_format *f = c->a->vf;
    const sc_store *st = c->a->v;
    const int64_t D = c->D, G = f->channel_group;
    const int64_t rb = f->encoding == SC_ENC_INT8 ? D : D / 2;
    scales_f32(st, f->scale_dtype == SC_DTYPE_F32, (kr * st->capacity + j0) * (D / G), nt * (D / G), sc);
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    if (code_kind(f) == 2) pv_body(p, codes, D, 2, o, c->rows, nt, D, c->tile, sc, G);
    else pv_body(p, codes, D, 3, o, c->rows, nt, D, c->tile, sc, G);
}

/* exp2_neg on 16 lanes: same polynomial, 2^round(x) applied with scalef
 * (valid up to x = 127; the AMX softmax passes x <= MX_LAZY) */
SC_T_AVX512 static inline __m512 exp2_neg16(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-127.0f);
    __mmask16 dead = _mm512_cmp_ps_mask(x, lo, _CMP_NGT_UQ); /* x <= -127 or NaN */
    x = _mm512_max_ps(x, lo);
    const __m512 xi = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(x, xi);
    __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps((__mmask16)~dead, _mm512_scalef_ps(p, xi));
}

SC_T_AVX512 static float sm_avx512(float *sr, int64_t vis, int64_t nt, float *m, float *l) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mx = ninf;
    for (int64_t j = 0; j < vis; j += 16) {
        const __mmask16 k = (__mmask16)(vis - j >= 16 ? 0xFFFF : (1u << (vis - j)) - 1);
        mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, k, sr + j));
    }
    const float mt = _mm512_reduce_max_ps(mx);
    if (mt == -INFINITY) {
        for (int64_t j = 0; j < nt; j++) sr[j] = 0.0f;
        return -1.0f;
    }
    const float mnew = mt > *m ? mt : *m;
    const float alpha = exp2_neg(*m - mnew);
    const __m512 vm = _mm512_set1_ps(mnew);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < nt; j += 16) {
        const __mmask16 kn = (__mmask16)(nt - j >= 16 ? 0xFFFF : (1u << (nt - j)) - 1);
        const int64_t v = vis - j;
        const __mmask16 kv = (__mmask16)(v >= 16 ? 0xFFFF : (v <= 0 ? 0 : (1u << v) - 1));
        __m512 p = _mm512_maskz_mov_ps(kv, exp2_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(kv, sr + j), vm)));
        sum = _mm512_add_ps(sum, p);
        _mm512_mask_storeu_ps(sr + j, kn, p);
    }
    *l = *l * alpha + _mm512_reduce_add_ps(sum);
    *m = mnew;
    return alpha;
}

/* D is a multiple of 16 (head dims 32..256 step 16) */
SC_T_AVX512 static void ldq_avx512(const uint16_t *src, float *q0, float *qr, float scale, int64_t D) {
    const __m512 s = _mm512_set1_ps(scale);
    for (int64_t d = 0; d < D; d += 16) {
        const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + d)));
        _mm512_storeu_ps(q0 + d, x);
        _mm512_storeu_ps(qr + d, _mm512_mul_ps(x, s));
    }
}

SC_T_AVX512 static void item_avx512(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_avx512,
                   pv8_avx512, NULL);
}
SC_T_AVX512 static void reduce_avx512(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }

/* ---- AMX: items of many rows (prefill) on the tile matrix engine ----------
 * Precision: each fp32 operand x is split into hi = bf16(x) and lo =
 * bf16(x - hi) (|x - hi - lo| <= 2^-17 |x|, round-to-nearest both times) and
 * x.y ~ xh.yh + xl.yh + xh.yl, accumulated in fp32 by TDPBF16PS: scores and
 * PV at about fp32 accuracy.
 * Layout: TDPBF16PS sums pairs, C[m][n] += A[m][2i] B[i][2n] + A[m][2i+1]
 * B[i][2n+1]. The three products share pair slots: for a K chunk of 32,
 *   A subtile 0/1, dword i: (xh[16s+i], xl[16s+i])  B row i: (yh[16s+i], yh[16s+i])
 *   A subtile 2,   dword i: (xh[2i], xh[2i+1])      B row i: (yl[2i], yl[2i+1])
 * so one A and one B tile carry all three terms, and 2 A x 2 B tiles feed four
 * independent accumulators (a TDP's latency is ~3x its issue interval; two
 * chains left the engine half idle). Scores are computed transposed, S^T =
 * K Q^T: the K tile is an A operand in its natural row-major layout and only
 * the queries (once per item) take the B layout; each 16x16 result is
 * transposed into the row-major score tile the softmax uses. PV is O += P V
 * with P as A and V as B. Tile registers 0-7, all 16 rows x 64 bytes: C 0-3,
 * A 4-5, B 6-7. */
#define SC_T_AMX                                                                                               \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma,f16c,amx-tile,amx-bf16")))
#define MX_SUB 32 /* uint16 per subtile row (64 bytes) */

/* 32 fp32 values (x0: first 16) -> 32 bf16 hi, 32 bf16 lo */
SC_T_AMX SC_INL void mx_split32(__m512 x0, __m512 x1, __m512i *hi, __m512i *lo) {
    const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
    const __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
    const __m512 h1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
    *hi = h;
    *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));
}
/* word indices: (a[i], b[i]) pairs for i in [0,16) and [16,32); (a[i], a[i]) */
#define MX_IDX_PAIR(o)                                                                                      \
    _mm512_set_epi16(47 + o, 15 + o, 46 + o, 14 + o, 45 + o, 13 + o, 44 + o, 12 + o, 43 + o, 11 + o, 42 + o, \
                     10 + o, 41 + o, 9 + o, 40 + o, 8 + o, 39 + o, 7 + o, 38 + o, 6 + o, 37 + o, 5 + o, 36 + o, \
                     4 + o, 35 + o, 3 + o, 34 + o, 2 + o, 33 + o, 1 + o, 32 + o, 0 + o)
#define MX_IDX_DUP(o)                                                                                        \
    _mm512_set_epi16(15 + o, 15 + o, 14 + o, 14 + o, 13 + o, 13 + o, 12 + o, 12 + o, 11 + o, 11 + o, 10 + o,   \
                     10 + o, 9 + o, 9 + o, 8 + o, 8 + o, 7 + o, 7 + o, 6 + o, 6 + o, 5 + o, 5 + o, 4 + o, 4 + o, \
                     3 + o, 3 + o, 2 + o, 2 + o, 1 + o, 1 + o, 0 + o, 0 + o)

/* One A-operand row chunk (32 values of K dim) -> its three subtile rows, dst[0..95] */
SC_T_AMX SC_INL void mx_pack_a(__m512 x0, __m512 x1, uint16_t *dst, int64_t ns) {
    __m512i h, l;
    mx_split32(x0, x1, &h, &l);
    if (ns == 1) { /* plain bf16: dword i = (xh[2i], xh[2i+1]) */
        _mm512_storeu_si512(dst, h);
        return;
    }
    _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(h, MX_IDX_PAIR(0), l));
    _mm512_storeu_si512(dst + MX_SUB, _mm512_permutex2var_epi16(h, MX_IDX_PAIR(16), l));
    _mm512_storeu_si512(dst + 2 * MX_SUB, h);
}

/* r[i] <- column i of the 16x16 matrix whose rows are r[0..15] */
SC_T_AMX SC_INL void mx_transpose16(__m512 *r) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    /* r[4i+k], 128-bit lane L: rows 4i..4i+3 of column 4L+k */
    for (int k = 0; k < 4; k++) {
        t[k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
        t[8 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
    }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    }
}

/* Our own tile-instruction wrappers: GCC 12's _tile_loadd does not tell the
 * compiler that it reads memory, so stores to the packed operands could be
 * moved past it. Every load/store/config here clobbers memory. */
#define MX_LOAD(t, base, stride) \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"((const void *)(base)), "r"((long)(stride)) : "memory")
#define MX_STORE(t, base, stride) \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"((void *)(base)), "r"((long)(stride)) : "memory")
#define MX_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define MX_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
/* the 2x2 block of products of one subtile step: C(0..3) += A(4,5) x B(6,7) */
#define MX_STEP(a0, a1, astride, b0, b1)                                                                     \
    do {                                                                                                     \
        MX_LOAD(4, a0, astride);                                                                             \
        MX_LOAD(6, b0, 64);                                                                                  \
        MX_DP(0, 4, 6);                                                                                      \
        MX_LOAD(7, b1, 64);                                                                                  \
        MX_DP(1, 4, 7);                                                                                      \
        MX_LOAD(5, a1, astride);                                                                             \
        MX_DP(2, 5, 6);                                                                                      \
        MX_DP(3, 5, 7);                                                                                      \
    } while (0)

typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} mx_cfg;

/* Queries as the B operand of S^T (K dim: channels, n: query rows):
 * [channel chunk][row block of 16][subtile][16 rows][16 dwords]. O^T zeroed. */
SC_T_AMX static void mx_prep(attn_ws *w, int64_t R, int64_t D) {
    mx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
    const int64_t Rp = MX_RP(R), nc = D / 32, nrb = Rp / 16, ns = w->mxs;
    memset(w->o, 0, (size_t)(Rp * D) * sizeof(float));
    uint32_t *qb = (uint32_t *)w->mxq;
    for (int64_t r = 0; r < Rp; r++) {
        for (int64_t cc = 0; cc < nc; cc++) {
            __m512i h = _mm512_setzero_si512(), l = h;
            if (r < R) mx_split32(_mm512_loadu_ps(w->q + r * D + cc * 32), _mm512_loadu_ps(w->q + r * D + cc * 32 + 16),
                                  &h, &l);
            uint16_t hv[32], lv[32];
            _mm512_storeu_si512(hv, h);
            _mm512_storeu_si512(lv, l);
            uint32_t *blk = qb + (cc * nrb + r / 16) * 256 * ns + r % 16;
            for (int i = 0; i < 16; i++) {
                if (ns == 1) { /* plain bf16: row i = (qh[2i], qh[2i+1]) */
                    blk[i * 16] = hv[2 * i] | (uint32_t)hv[2 * i + 1] << 16;
                    continue;
                }
                blk[i * 16] = hv[i] * 0x10001u;
                blk[256 + i * 16] = hv[16 + i] * 0x10001u;
                blk[512 + i * 16] = lv[2 * i] | (uint32_t)lv[2 * i + 1] << 16;
            }
        }
    }
}

/* S^T of the tile into mxt: [row block][key][16 rows], straight from the tiles */
/* Keys of the tile that any row of rows [r0, r0 + 32) sees (causal diagonal): blocks past it are skipped. */
SC_T_AMX SC_INL int64_t mx_pair_keys(const attn_ws *w, int64_t r0, int64_t j0, int64_t nt) {
    const __m512i v = _mm512_max_epi32(_mm512_loadu_si512(w->mxvis + r0), _mm512_loadu_si512(w->mxvis + r0 + 16));
    const int64_t n = (int64_t)_mm512_reduce_max_epi32(v) - j0;
    return n < 0 ? 0 : (n > nt ? nt : n);
}

/* The K tile as A operands: [key][channel chunk][subtile][32], keys past nt
 * (to the next multiple of 32) zero. */
SC_T_AMX static void mx_pack_k(const float *kt, int64_t nt, int64_t D, int64_t ns, uint16_t *kp) {
    const int64_t nc = D / 32, n32 = (nt + 31) / 32, ka = nc * ns * MX_SUB;
    for (int64_t j = 0; j < n32 * 32; j++)
        for (int64_t cc = 0; cc < nc; cc++) {
            if (j < nt) mx_pack_a(_mm512_loadu_ps(kt + j * D + cc * 32), _mm512_loadu_ps(kt + j * D + cc * 32 + 16),
                                  kp + j * ka + cc * ns * MX_SUB, ns);
            else memset(kp + j * ka + cc * ns * MX_SUB, 0, ns * MX_SUB * 2);
        }
}

SC_T_AMX static void mx_qk(attn_ws *w, const uint16_t *kp, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL) {
    const int64_t ns = w->mxs, Rp = MX_RP(R), TP = MX_TP(TL), nc = D / 32, nrb = Rp / 16, ka = nc * ns * MX_SUB;
    const uint16_t *qb = w->mxq;
    /* row blocks outside: a row pair's queries stay in L1 while the tile's
     * keys pass (with bf16 operands both fit L1: 8 + 32 KB at d128) */
    for (int64_t rb = 0; rb < nrb; rb += 2) {
        const int64_t kb_end = 2 * ((mx_pair_keys(w, rb * 16, j0, nt) + 31) / 32); /* masked for the pair past it */
        for (int64_t kb = 0; kb < kb_end; kb += 2) {
            MX_ZERO(0);
            MX_ZERO(1);
            MX_ZERO(2);
            MX_ZERO(3);
            for (int64_t cc = 0; cc < nc; cc++)
                for (int sub = 0; sub < ns; sub++) {
                    const uint16_t *a = kp + kb * 16 * ka + (cc * ns + sub) * MX_SUB;
                    const uint16_t *b = qb + ((cc * nrb + rb) * ns + sub) * 512;
                    MX_STEP(a, a + 16 * ka, ka * 2, b, b + ns * 512);
                }
            /* C(kb + i, rb + j) in tile 2i + j: 16 keys x 16 rows */
            float *st = w->mxt + (rb * TP + kb * 16) * 16;
            MX_STORE(0, st, 64);
            MX_STORE(1, st + TP * 16, 64);
            MX_STORE(2, st + 256, 64);
            MX_STORE(3, st + TP * 16 + 256, 64);
        }
    }
}

/* Online softmax over S^T, 16 rows per vector: no horizontal reductions.
 * Lazy rescaling: a row's reference max only moves when the tile's max
 * exceeds it by more than MX_LAZY (log2 units); below that p = 2^(s - m) may
 * reach 2^MX_LAZY, which fp32/bf16 hold exactly as well, and O^T (strided,
 * all of it in L2) is rescaled only in the rare tiles that move a max.
 * Measured: the eager rescale was the hottest loop of the AMX prefill. */
#define MX_LAZY 8.0f
SC_T_AMX static int mx_sm(attn_ws *w, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL) {
    const int64_t Rp = MX_RP(R), TP = MX_TP(TL), n32p = (nt + 31) / 32 * 32;
    const __m512 ninf = _mm512_set1_ps(-INFINITY), one = _mm512_set1_ps(1.0f);
    const __m512i ntv = _mm512_set1_epi32((int32_t)nt);
    int any = 0;
    for (int64_t rb = 0; rb < Rp / 16; rb++) {
        __m512i vis = _mm512_sub_epi32(_mm512_loadu_si512(w->mxvis + rb * 16), _mm512_set1_epi32((int32_t)j0));
        vis = _mm512_min_epi32(_mm512_max_epi32(vis, _mm512_setzero_si512()), ntv);
        float *st = w->mxt + rb * TP * 16;
        if (!_mm512_cmpgt_epi32_mask(vis, _mm512_setzero_si512())) { /* no row of the block sees the tile */
            memset(st, 0, (size_t)(n32p * 16) * sizeof(float));
            continue;
        }
        any = 1;
        /* four independent chains (one max chain per key was latency-bound);
         * keys past nt are padding, masked off by vis <= nt */
        __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
        const int64_t n4 = (nt + 3) / 4 * 4;
        for (int64_t j = 0; j < n4; j += 4) {
            const __m512i jv = _mm512_set1_epi32((int32_t)j);
            const __mmask16 k0 = _mm512_cmpgt_epi32_mask(vis, jv);
            const __mmask16 k1 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(1)));
            const __mmask16 k2 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(2)));
            const __mmask16 k3 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(3)));
            m0 = _mm512_mask_max_ps(m0, k0, m0, _mm512_load_ps(st + j * 16));
            m1 = _mm512_mask_max_ps(m1, k1, m1, _mm512_load_ps(st + (j + 1) * 16));
            m2 = _mm512_mask_max_ps(m2, k2, m2, _mm512_load_ps(st + (j + 2) * 16));
            m3 = _mm512_mask_max_ps(m3, k3, m3, _mm512_load_ps(st + (j + 3) * 16));
        }
        const __m512 mx = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
        const __m512 mold = _mm512_loadu_ps(w->m + rb * 16);
        /* move the reference where the tile's max exceeds it by > MX_LAZY (or there was none) */
        const __mmask16 move = _mm512_cmp_ps_mask(mx, _mm512_add_ps(mold, _mm512_set1_ps(MX_LAZY)), _CMP_GT_OQ) |
                               (_mm512_cmp_ps_mask(mold, ninf, _CMP_EQ_OQ) & _mm512_cmp_ps_mask(mx, ninf, _CMP_GT_OQ));
        const __m512 mref = _mm512_mask_blend_ps(move, mold, mx);
        const __mmask16 live = _mm512_cmp_ps_mask(mref, ninf, _CMP_GT_OQ);
        /* alpha = 2^(mold - mref) where a reference moved; 1 elsewhere (and for a
         * row's first reference: its O^T and l are still zero) */
        const __m512 alpha = _mm512_mask_blend_ps(move & _mm512_cmp_ps_mask(mold, ninf, _CMP_GT_OQ), one,
                                                  exp2_neg16(_mm512_sub_ps(mold, mref)));
        __m512 s0 = _mm512_setzero_ps(), s1 = s0;
        for (int64_t j = 0; j < n32p; j += 2) {
            const __mmask16 k0 = _mm512_cmpgt_epi32_mask(vis, _mm512_set1_epi32((int32_t)j)) & live;
            const __mmask16 k1 = _mm512_cmpgt_epi32_mask(vis, _mm512_set1_epi32((int32_t)j + 1)) & live;
            const __m512 p0 = _mm512_maskz_mov_ps(k0, exp2_neg16(_mm512_sub_ps(_mm512_load_ps(st + j * 16), mref)));
            const __m512 p1 = _mm512_maskz_mov_ps(k1, exp2_neg16(_mm512_sub_ps(_mm512_load_ps(st + (j + 1) * 16), mref)));
            _mm512_store_ps(st + j * 16, p0);
            _mm512_store_ps(st + (j + 1) * 16, p1);
            s0 = _mm512_add_ps(s0, p0);
            s1 = _mm512_add_ps(s1, p1);
        }
        const __m512 sum = _mm512_add_ps(s0, s1);
        _mm512_storeu_ps(w->l + rb * 16, _mm512_fmadd_ps(_mm512_loadu_ps(w->l + rb * 16), alpha, sum));
        _mm512_storeu_ps(w->m + rb * 16, mref);
        if (_mm512_cmp_ps_mask(alpha, one, _CMP_NEQ_UQ)) {
            float *o = w->o + rb * 16;
            for (int64_t d = 0; d < D; d++) _mm512_storeu_ps(o + d * Rp, _mm512_mul_ps(_mm512_loadu_ps(o + d * Rp), alpha));
        }
    }
    return any;
}

/* word indices: (a[n], a[16+n]) of one vector */
#define MX_IDX_PAIRSELF                                                                                          \
    _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, \
                     3, 18, 2, 17, 1, 16, 0)

/* O^T += V^T P^T: A = V^T [channel block][16 channels][keys], B = P^T [key pairs][16 rows] */
/* The V tile as V^T A operands: [key chunk][channel block][subtile][16 channels][32];
 * keys past nt zero. The columns (one key slot for 16 channels) are staged
 * in col (2 * ns * 1 KB), then transposed. */
SC_T_AMX static void mx_pack_v(const float *vt, int64_t nt, int64_t D, int64_t ns, uint16_t *va, uint32_t *col) {
    const int64_t n32 = (nt + 31) / 32, ncb = D / 16;
    for (int64_t kc = 0; kc < n32; kc++)
        for (int64_t cc = 0; cc < D / 32; cc++) {
            for (int64_t u = 0; u < 16; u++) {
                const int64_t j0 = kc * 32 + 2 * u, j1 = j0 + 1;
                __m512i ah = _mm512_setzero_si512(), al = ah, bh = ah, bl = ah;
                if (j0 < nt) mx_split32(_mm512_loadu_ps(vt + j0 * D + cc * 32), _mm512_loadu_ps(vt + j0 * D + cc * 32 + 16), &ah, &al);
                if (j1 < nt) mx_split32(_mm512_loadu_ps(vt + j1 * D + cc * 32), _mm512_loadu_ps(vt + j1 * D + cc * 32 + 16), &bh, &bl);
                for (int half = 0; half < 2; half++) {
                    const __m512i pair = half ? MX_IDX_PAIR(16) : MX_IDX_PAIR(0);
                    uint32_t *ch = col + half * ns * 256;
                    if (ns == 1) { /* column u: (vh[2u][c], vh[2u+1][c]) */
                        _mm512_storeu_si512(ch + u * 16, _mm512_permutex2var_epi16(ah, pair, bh));
                        continue;
                    }
                    /* subtile (2u)/16, columns (2u)%16 and +1: (vh, vl) of keys 2u, 2u+1; subtile 2 column u */
                    uint32_t *c01 = ch + ((2 * u) / 16) * 256 + ((2 * u) % 16) * 16;
                    _mm512_storeu_si512(c01, _mm512_permutex2var_epi16(ah, pair, al));
                    _mm512_storeu_si512(c01 + 16, _mm512_permutex2var_epi16(bh, pair, bl));
                    _mm512_storeu_si512(ch + 2 * 256 + u * 16, _mm512_permutex2var_epi16(ah, pair, bh));
                }
            }
            for (int half = 0; half < 2; half++)
                for (int sub = 0; sub < ns; sub++) {
                    __m512 x[16];
                    const uint32_t *ch = col + (half * ns + sub) * 256;
                    for (int i = 0; i < 16; i++) x[i] = _mm512_castsi512_ps(_mm512_loadu_si512(ch + i * 16));
                    mx_transpose16(x);
                    uint16_t *dst = va + ((kc * ncb + 2 * cc + half) * ns + sub) * 512;
                    for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + i * MX_SUB, _mm512_castps_si512(x[i]));
                }
        }
}

SC_T_AMX static void mx_pv(attn_ws *w, const uint16_t *va, int64_t R, int64_t j0, int64_t nt, int64_t D, int64_t TL) {
    const int64_t ns = w->mxs, Rp = MX_RP(R), TP = MX_TP(TL), n32 = (nt + 31) / 32, ncb = D / 16, nrb = Rp / 16;
    /* P^T as B operands: [key chunk][row block][subtile][16][32] (padding keys are zero in mxt) */
    uint16_t *pb = w->mxp;
    for (int64_t kc = 0; kc < n32; kc++)
        for (int64_t rb = 0; rb < nrb; rb++) {
            const float *st = w->mxt + (rb * TP + kc * 32) * 16;
            uint16_t *blk = pb + (kc * nrb + rb) * ns * 512;
            for (int64_t u = 0; u < 16; u++) {
                __m512i h, l;
                mx_split32(_mm512_load_ps(st + 2 * u * 16), _mm512_load_ps(st + (2 * u + 1) * 16), &h, &l);
                if (ns == 1) { /* row u: (p[2u][n], p[2u+1][n]) */
                    _mm512_storeu_si512(blk + u * MX_SUB, _mm512_permutexvar_epi16(MX_IDX_PAIRSELF, h));
                    continue;
                }
                /* keys 2u, 2u+1: rows (2u) % 16, +1 of subtile (2u) / 16, as (ph, ph); subtile 2 row u: (pl, pl') */
                uint16_t *s01 = blk + ((2 * u) / 16) * 512 + ((2 * u) % 16) * MX_SUB;
                _mm512_storeu_si512(s01, _mm512_permutexvar_epi16(MX_IDX_DUP(0), h));
                _mm512_storeu_si512(s01 + MX_SUB, _mm512_permutexvar_epi16(MX_IDX_DUP(16), h));
                _mm512_storeu_si512(blk + 2 * 512 + u * MX_SUB, _mm512_permutexvar_epi16(MX_IDX_PAIRSELF, l));
            }
        }
    float *o = w->o;
    for (int64_t rb = 0; rb < nrb; rb += 2) { /* a row pair's P^T stays in L1 while V^T passes */
        const int64_t kc_end = (mx_pair_keys(w, rb * 16, j0, nt) + 31) / 32; /* P^T is zero past it */
        if (!kc_end) continue;
        for (int64_t cb = 0; cb < ncb; cb += 2) {
            float *o0 = o + cb * 16 * Rp + rb * 16, *o1 = o0 + 16 * Rp;
            MX_LOAD(0, o0, Rp * 4);
            MX_LOAD(1, o0 + 16, Rp * 4);
            MX_LOAD(2, o1, Rp * 4);
            MX_LOAD(3, o1 + 16, Rp * 4);
            for (int64_t kc = 0; kc < kc_end; kc++)
                for (int sub = 0; sub < ns; sub++) {
                    const uint16_t *a = va + ((kc * ncb + cb) * ns + sub) * 512;
                    const uint16_t *b = pb + ((kc * nrb + rb) * ns + sub) * 512;
                    MX_STEP(a, a + ns * 512, 64, b, b + ns * 512);
                }
            MX_STORE(0, o0, Rp * 4);
            MX_STORE(1, o0 + 16, Rp * 4);
            MX_STORE(2, o1, Rp * 4);
            MX_STORE(3, o1 + 16, Rp * 4);
        }
    }
}

SC_T_AMX static void mx_done(void) { __asm__ volatile("tilerelease" ::: "memory"); }

SC_T_AMX static void mx_rows(attn_ws *w, int64_t R, int64_t D, float *dst) {
    const int64_t Rp = MX_RP(R);
    for (int64_t cb = 0; cb < D / 16; cb++)
        for (int64_t rb = 0; rb < Rp / 16; rb++) {
            __m512 x[16];
            for (int i = 0; i < 16; i++) x[i] = _mm512_loadu_ps(w->o + (cb * 16 + i) * Rp + rb * 16);
            mx_transpose16(x);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + (rb * 16 + i) * D + cb * 16, x[i]);
        }
}

/* Pre-pass task t = kr * tiles + tile: K and V^T of one tile, packed once for
 * every row block of the call (keys past the batch item's length excluded). */
SC_T_AMX static void mx_prepack(const attn_ctx *c, int64_t t, attn_ws *w) {
    const sc_attention_args *a = c->a;
    const int64_t kr = t / c->mx_tiles, j0 = (t % c->mx_tiles) * c->tile, b = kr / c->Hkv, hk = kr % c->Hkv;
    const int64_t n_b = a->kv_lens ? a->kv_lens[b] : c->N;
    if (j0 >= n_b) return; /* no item reads it */
    const int64_t nt = n_b - j0 < c->tile ? n_b - j0 : c->tile;
    load_tile(c->rk, a->k_tensor, w->kd, b, hk, kr, j0, nt, w->kt);
    mx_pack_k(w->kt, nt, c->D, w->mxs, c->mxpk + (size_t)(t * c->mx_tile_words));
    load_tile(c->rk, a->v_tensor, w->vd, b, hk, kr, j0, nt, w->vt);
    mx_pack_v(w->vt, nt, c->D, w->mxs, c->mxpv + (size_t)(t * c->mx_tile_words), (uint32_t *)w->mxc);
}

static const mx_hooks mx_amx = {mx_prep, mx_pack_k, mx_pack_v, mx_qk, mx_sm, mx_pv, mx_done, mx_rows};

SC_T_AMX static void item_amx(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_avx512,
                   pv8_avx512, &mx_amx);
}
#endif

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

static float sm_neon(float *sr, int64_t vis, int64_t nt, float *m, float *l) {
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

static void item_neon(const attn_ctx *c, int64_t i, attn_ws *w) { attn_item_body(c, i, w, qk_neon, pv_neon, sm_neon, NULL, NULL, NULL, NULL, NULL, NULL); }

/* ---- dotprod: scores of int8 K codes in integer arithmetic (sdot).
 * Each query row (K's per-channel scales folded in, for per-channel formats)
 * is split into three int8 parts, x ~ a0 p0 + a1 p1 + a2 p2: every part
 * holds the previous one's rounding residual, so the split is exact to about
 * 2^-21 of max|x| -- fp32-level scores, unlike one int8 q (SageAttention's
 * choice, which missed our int8 accuracy targets). Three sdot per 16 codes
 * per row against four fp32 FMAs plus the code conversions. */
#define SC_T_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

static void split3(const float *x, int64_t D, int8_t *p, float *a) {
    float r[512];
    memcpy(r, x, (size_t)D * sizeof(float));
    for (int part = 0; part < 3; part++) {
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

/* the three partial dots of one query row's parts with 16*n codes */
SC_T_DOTPROD static inline float dot3(const int8_t *pq, int64_t D, const float *a, const int8_t *k, int64_t n16) {
    int32x4_t h0 = vdupq_n_s32(0), h1 = vdupq_n_s32(0), h2 = vdupq_n_s32(0);
    for (int64_t i = 0; i < n16; i++) {
        const int8x16_t kv = vld1q_s8(k + 16 * i);
        h0 = vdotq_s32(h0, vld1q_s8(pq + 16 * i), kv);
        h1 = vdotq_s32(h1, vld1q_s8(pq + D + 16 * i), kv);
        h2 = vdotq_s32(h2, vld1q_s8(pq + 2 * D + 16 * i), kv);
    }
    return a[0] * (float)vaddvq_s32(h0) + a[1] * (float)vaddvq_s32(h1) + a[2] * (float)vaddvq_s32(h2);
}

SC_T_DOTPROD static void qk8_neondot(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                                     int64_t j0, int64_t nt, float *s) {
    const sc_format *f = c->a->kf; /* int8, symmetric (checked by sc_attention) */
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, G = f->channel_group;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32;
    const int8_t *codes = (const int8_t *)st->data + (kr * st->capacity + j0) * D;
    int8_t *parts = (int8_t *)qf;                    /* [R][3][D] */
    float *pa = (float *)(parts + ((3 * R * D + 3) & ~(int64_t)3)); /* [R][3] */
    if (mode == 2) { /* k = code * s[j][cell] */
        const int64_t ncell = D / G;
        for (int64_t i = 0; i < nt * ncell; i++) {
            const int64_t at = (kr * st->capacity + j0) * ncell + i;
            sc[i] = sf32 ? ((const float *)st->scales)[at] : sc_h2f(((const uint16_t *)st->scales)[at]);
        }
        for (int64_t r = 0; r < R; r++) split3(q + r * D, D, parts + r * 3 * D, pa + 3 * r);
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < nt; j++) {
                float acc = 0.0f;
                for (int64_t cell = 0; cell < ncell; cell++)
                    acc += sc[j * ncell + cell] *
                           dot3(parts + r * 3 * D + cell * G, D, pa + 3 * r, codes + j * D + cell * G, G / 16);
                s[r * TL + j] = acc;
            }
        return;
    }
    /* mode 1: k = code * s[g][c]; fold s into q per token group, then split */
    float xr[512];
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t at = (kr * (st->capacity / T) + g) * D;
        for (int64_t r = 0; r < R; r++) {
            for (int64_t ch = 0; ch < D; ch++)
                xr[ch] = q[r * D + ch] *
                         (sf32 ? ((const float *)st->scales)[at + ch] : sc_h2f(((const uint16_t *)st->scales)[at + ch]));
            split3(xr, D, parts + r * 3 * D, pa + 3 * r);
        }
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < n; j++)
                s[r * TL + t + j] = dot3(parts + r * 3 * D, D, pa + 3 * r, codes + (t + j) * D, D / 16);
        t += n;
    }
}

SC_T_DOTPROD static void item_neondot(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_neon, pv_neon, sm_neon, NULL, NULL, NULL, qk8_neondot, NULL, NULL);
}
#endif

/* ------------------------------------------------------------ entry point */
static int64_t lcm64(int64_t a, int64_t b) {
    int64_t x = a, y = b;
    while (y) { int64_t t = x % y; x = y; y = t; }
    return a / x * b;
}

int32_t sc_attention_auto_splits(int64_t batch, int64_t kv_heads, int64_t q_heads, int64_t q_len,
                                 int64_t kv_len, int32_t threads) {
    const int64_t group = kv_heads > 0 ? q_heads / kv_heads : 1;
    int64_t mb = q_len;
    if (group * mb > ROWS_MAX) mb = ROWS_MAX / group > 0 ? ROWS_MAX / group : 1;
    const int64_t items = batch * kv_heads * ((q_len + mb - 1) / mb);
    /* enough items to keep every thread busy, or too few keys to split */
    if (items >= 2 * (int64_t)threads || kv_len < 2048) return 1;
    int64_t s = (4 * (int64_t)threads + items - 1) / items;
    int64_t by_len = kv_len / 1024;
    s = s < by_len ? s : by_len;
    return (int32_t)(s < 1 ? 1 : (s > 64 ? 64 : s));
}

static int head_dim_ok(int64_t d) {
    return d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 192 || d == 256;
}

sc_status sc_attention(const sc_attention_args *a) {
    if (!a) return sc_fail(SC_ERR_INVALID_ARGUMENT, "attention arguments are NULL");
    const int tensors = a->k_tensor != NULL || a->v_tensor != NULL;
    if (tensors ? (!a->k_tensor || !a->v_tensor || a->kf || a->vf || a->k || a->v)
                : (!a->kf || !a->vf || !a->k || !a->v))
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "give either K/V stores with their formats, or K/V tensors");
    sc_status st;
    if (!tensors && ((st = sc_format_check(a->kf)) || (st = sc_format_check(a->vf)))) return st;
    const sc_tensor *q = &a->q, *o = &a->out;
    if (!q->ptr || !o->ptr) return sc_fail(SC_ERR_INVALID_ARGUMENT, "q or out is NULL");
    const int64_t B = q->batch, Hq = q->heads, M = q->tokens, D = q->dim, Hkv = a->kv_heads;
    if (!head_dim_ok(D))
        return sc_fail(SC_ERR_UNSUPPORTED, "head_dim %lld is not one the attention kernels are built for "
                       "(32, 64, 80, 96, 128, 192, 256)", (long long)D);
    if (o->batch != B || o->heads != Hq || o->tokens != M || o->dim != D)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "out must have q's shape");
    if (Hkv < 1 || Hq % Hkv)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "q heads %lld must be a multiple of kv heads %lld",
                       (long long)Hq, (long long)Hkv);
    if (tensors) {
        for (int i = 0; i < 2; i++) {
            const sc_tensor *t = i ? a->v_tensor : a->k_tensor;
            const char *nm = i ? "v" : "k";
            if (!t->ptr || (t->dtype != SC_DTYPE_F16 && t->dtype != SC_DTYPE_F32))
                return sc_fail(SC_ERR_INVALID_ARGUMENT, "%s tensor must be f16 or f32 data", nm);
            if (t->batch != B || t->heads != Hkv || t->dim != D || t->tokens < a->kv_len)
                return sc_fail(SC_ERR_INVALID_ARGUMENT,
                               "%s tensor is [%lld, %lld, %lld, %lld], expected [%lld, %lld, >= %lld, %lld]", nm,
                               (long long)t->batch, (long long)t->heads, (long long)t->tokens, (long long)t->dim,
                               (long long)B, (long long)Hkv, (long long)a->kv_len, (long long)D);
        }
        if (a->kv_len < 0) return sc_fail(SC_ERR_INVALID_ARGUMENT, "kv_len must be >= 0");
    } else {
        if (a->kf->head_dim != D || a->vf->head_dim != D)
            return sc_fail(SC_ERR_INVALID_ARGUMENT, "q head_dim %lld differs from the K/V formats' (%d, %d)",
                           (long long)D, a->kf->head_dim, a->vf->head_dim);
        if (a->k->rows != B * Hkv || a->v->rows != B * Hkv)
            return sc_fail(SC_ERR_INVALID_ARGUMENT, "K/V stores hold %lld/%lld rows, expected batch*kv_heads = %lld",
                           (long long)a->k->rows, (long long)a->v->rows, (long long)(B * Hkv));
        if (a->kv_len < 0 || a->kv_len > a->k->capacity || a->kv_len > a->v->capacity)
            return sc_fail(SC_ERR_INVALID_ARGUMENT, "kv_len %lld exceeds the stores' capacity", (long long)a->kv_len);
    }
    if (a->kv_lens)
        for (int64_t b = 0; b < B; b++)
            if (a->kv_lens[b] < 0 || a->kv_lens[b] > a->kv_len)
                return sc_fail(SC_ERR_INVALID_ARGUMENT, "kv_lens[%lld] = %lld is outside [0, %lld]", (long long)b,
                               (long long)a->kv_lens[b], (long long)a->kv_len);
    if (a->split_k < 0) return sc_fail(SC_ERR_INVALID_ARGUMENT, "split_k %d must be >= 0", a->split_k);
    if (a->precision != SC_PRECISION_FP32 && a->precision != SC_PRECISION_BF16)
        return sc_fail(SC_ERR_INVALID_ARGUMENT, "precision %d is not SC_PRECISION_FP32 (0) or SC_PRECISION_BF16 (1)",
                       a->precision);
    if (B == 0 || Hq == 0 || M == 0) return SC_OK;

    attn_ctx c;
    memset(&c, 0, sizeof c);
    c.a = a;
    c.rk = sc_row_kernels_active();
    c.B = B; c.Hq = Hq; c.Hkv = Hkv; c.group = Hq / Hkv; c.M = M; c.D = D; c.N = a->kv_len;
    /* the matrix engine takes items of up to MX_ROWS_MAX rows and MX_TILE_KEYS
     * keys per tile: each K/V tile is decoded and packed once per item, and
     * each O tile loaded/stored once per tile, so bigger items amortize both */
    int64_t rows_max = ROWS_MAX, tile_keys = TILE_KEYS;
    int mx = 0;
#ifdef SC_X86
    if (sc_cpu_active_isa() == SC_ISA_AMX && D % 32 == 0 && c.group * M > Q8_MAX_ROWS) {
        mx = 1;
        rows_max = MX_ROWS_MAX;
        tile_keys = MX_TILE_KEYS;
    }
#endif
    c.mb = M;
    if (c.group * c.mb > rows_max) c.mb = rows_max / c.group > 0 ? rows_max / c.group : 1;
    c.nrb = (M + c.mb - 1) / c.mb;
    c.rows = c.group * c.mb;
    const int64_t tk = tensors || a->kf->encoding == SC_ENC_FP16 ? 1 : a->kf->token_group;
    const int64_t tv = tensors || a->vf->encoding == SC_ENC_FP16 ? 1 : a->vf->token_group;
    if (!tensors) {
        c.k_rotate = a->kf->encoding != SC_ENC_FP16 && a->kf->rotate;
        c.k_smooth = a->kf->encoding != SC_ENC_FP16 && a->kf->smooth;
        c.v_rotate = a->vf->encoding != SC_ENC_FP16 && a->vf->rotate;
        c.v_smooth = a->vf->encoding != SC_ENC_FP16 && a->vf->smooth;
    }
    c.k_direct = tensors || a->kf->encoding == SC_ENC_FP16;
    c.v_direct = tensors || a->vf->encoding == SC_ENC_FP16;
    c.k_q8 = tensors ? 0 : q8_mode(a->kf, 1);
    c.v_q8 = tensors ? 0 : q8_mode(a->vf, 0);
    const int64_t unit = lcm64(tk, tv);
    c.tile = unit >= tile_keys ? unit : unit * ((tile_keys + unit - 1) / unit);
    c.mx = mx && c.rows > Q8_MAX_ROWS && c.tile % 32 == 0;
    const int threads = sc_num_threads();
    int64_t S = a->split_k ? a->split_k : sc_attention_auto_splits(B, Hkv, Hq, M, c.N, threads);
    /* splits are whole tiles */
    const int64_t tiles = (c.N + c.tile - 1) / c.tile;
    if (S > tiles) S = tiles > 0 ? tiles : 1;
    c.S = S;
    c.chunk = ((tiles + S - 1) / S) * c.tile;
    c.qscale = a->scale * SC_LOG2E;
    const int64_t items = B * Hkv * c.nrb * S;
    if (S > 1) {
        c.part_o = (float *)malloc((size_t)(items * c.rows * D) * sizeof(float));
        c.part_ml = (float *)malloc((size_t)(items * c.rows * 2) * sizeof(float));
        if (!c.part_o || !c.part_ml) {
            free(c.part_o);
            free(c.part_ml);
            return sc_fail(SC_ERR_NO_MEMORY, "out of memory for split-K partials");
        }
    }
    item_fn item = item_portable, reduce = reduce_portable;
    item_fn prepack = NULL;
    int64_t prepack_tasks = 0;
#ifdef SC_X86
    sc_isa isa = sc_cpu_active_isa();
    if (isa == SC_ISA_AVX512 || isa == SC_ISA_AVX512_VNNI) { item = item_avx512; reduce = reduce_avx512; }
    else if (isa == SC_ISA_AMX) {
        item = item_amx;
        reduce = reduce_avx512;
        /* several row blocks per kv head: pack each K/V tile once for all of them */
        const int64_t ntl = (c.N + c.tile - 1) / c.tile;
        const int64_t words = MX_TP(c.tile) * D * (a->precision == SC_PRECISION_BF16 ? 1 : MX_NS);
        if (c.mx && c.nrb > 1 && ntl > 0 && 4.0 * (double)(B * Hkv * ntl) * (double)words <= MX_PREPACK_MAX) {
            const size_t bytes = (size_t)(B * Hkv * ntl * words) * 2;
            c.mxpk = (uint16_t *)aligned_alloc(64, bytes);
            c.mxpv = (uint16_t *)aligned_alloc(64, bytes);
            if (!c.mxpk || !c.mxpv) {
                free(c.mxpk);
                free(c.mxpv);
                c.mxpk = c.mxpv = NULL; /* per-item packing instead */
            } else {
                c.mx_tiles = ntl;
                c.mx_tile_words = words;
                prepack = mx_prepack;
                prepack_tasks = B * Hkv * ntl;
            }
        }
    }
    else if (isa == SC_ISA_AVX2) { item = item_avx2; reduce = reduce_avx2; }
#elif defined(SC_ARM64)
    sc_isa isa = sc_cpu_active_isa();
    if (isa == SC_ISA_NEON) item = item_neon;
    if (isa == SC_ISA_NEON_DOTPROD) {
        item = item_neondot;
        /* the integer scores take symmetric int8 codes; the rest goes through the tile */
        if (!tensors && (a->kf->encoding != SC_ENC_INT8 || a->kf->zero_point)) c.k_q8 = 0;
    }
#endif
    volatile int failed = 0;
    int nth = threads < items ? threads : (int)items;
    /* Tiny calls run on the calling thread: waking the OpenMP team costs
     * 2-3 us, more than splitting < ~8 us of work saves (measured: decode of
     * 32 heads x 16 keys x d128 was slower on 2 threads than on 1). */
    if ((double)B * (double)Hq * (double)M * (double)c.N * (double)D < SMALL_WORK) nth = 1;
    (void)nth; /* unused without OpenMP */
    if (nth == 1) { /* no team to wake */
        attn_ws w;
        if (!ws_init(&w, &c)) failed = 1;
        for (int64_t t = 0; t < prepack_tasks && !failed; t++) prepack(&c, t, &w);
        for (int64_t it = 0; it < items && !failed; it++) item(&c, it, &w);
        if (S > 1)
            for (int64_t blk = 0; blk < B * Hkv * c.nrb && !failed; blk++) reduce(&c, blk, &w);
        ws_free(&w);
    } else
#pragma omp parallel num_threads(nth)
    {
        attn_ws w;
        if (!ws_init(&w, &c)) failed = 1;
        if (prepack_tasks) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < prepack_tasks; t++)
                if (!failed) prepack(&c, t, &w);
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++)
            if (!failed) item(&c, it, &w);
        if (S > 1) {
#pragma omp for schedule(dynamic, 1)
            for (int64_t blk = 0; blk < B * Hkv * c.nrb; blk++)
                if (!failed) reduce(&c, blk, &w);
        }
        ws_free(&w);
    }
    free(c.part_o);
    free(c.part_ml);
    free(c.mxpk);
    free(c.mxpv);
    if (failed) return sc_fail(SC_ERR_NO_MEMORY, "out of memory for attention workspaces");
    return SC_OK;
}
