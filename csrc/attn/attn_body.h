/*
 * attn_body.h -- internal to csrc/attn: what every ISA instance of the
 * attention kernels shares. The work item (attn_item_body) and the split-K
 * reduce are always-inline templates over the microkernel hooks; each ISA
 * file instantiates them inside functions with its target attributes:
 *   attention.c        portable C instance, workspaces, the entry point
 *   attention_x86.c    AVX2, AVX-512 (+ in-place int8/int4), AMX tiles
 *   attention_arm64.c  NEON, NEON + dotprod
 */
#ifndef SC_ATTN_BODY_H
#define SC_ATTN_BODY_H

#include <float.h>
#include <stdlib.h>

#include "../sc_internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define SC_LOG2E 1.4426950408889634f
#define SC_LN2 0.6931471805599453f
/* Lazy rescaling in the AVX-512 and AMX softmax steps: a row's reference max
 * moves only when a tile's max exceeds it by more than this (log2 units), so
 * p = 2^(s - m) <= 2^SM_LAZY (exact in fp32/bf16) and O is rescaled rarely. */
#define SM_LAZY 8.0f
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
#ifndef TILE_KEYS_INPLACE
#define TILE_KEYS_INPLACE 128 /* keys per tile of few-row items reading K and V in place (attention.c) */
#endif
#ifndef TILE_KEYS_INT4B8
#define TILE_KEYS_INT4B8 256 /* the same for int4 K and V at precision="int8" (attention.c) */
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

/* Non-finite values that reached a call's arithmetic (attn_ws.nf bits):
 * sc_attention reports them as SC_ERR_NONFINITE instead of a result in which
 * softmax silently dropped them (a NaN score compares false everywhere) */
#define NF_Q 1   /* a query element */
#define NF_S 2   /* a visible score: NaN/Inf in K, or q.k beyond float32 */
#define NF_O 4   /* an output element: NaN/Inf in V, or beyond float32 */
/* 1 if |x[0..n)| <= lim (so none is NaN); branch-free so the loop vectorises */
static inline int all_within(const float *x, int64_t n, float lim) {
    int ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= fabsf(x[i]) <= lim; /* false for NaN */
    return ok;
}
static inline int all_finite(const float *x, int64_t n) { return all_within(x, n, FLT_MAX); }
#define F16_LIMIT 65519.99f /* below 65520: rounds to a finite float16 */

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
 * then zeroed and m, l are unchanged). *bad is set to 1 when a visible score
 * is NaN or +-Inf (checked in the maximum's pass, which loads every score
 * anyway: a separate all_finite pass cost ~2.5% of the int4 decode). */
typedef float (*sm_fn)(float *sr, int64_t vis, int64_t nt, float *m, float *l, int *bad);

/* Direct microkernels read fp16 or fp32 K/V rows in place (row stride ks in
 * elements; k points at the tile's first key), converting in registers: no
 * fp32 tile is written. Used for plain tensors and fp16 stores where the ISA
 * provides them; other formats go through the tile decoder. end: the first
 * byte past the item's rows (bounds the prefetch of rows ahead). */
typedef void (*qkd_fn)(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R, int64_t nt,
                       int64_t D, int64_t TL, const char *end);
/* one query row from fp16: q0 = q, qr = q * scale (NULL: the generic loops) */
typedef void (*ldq_fn)(const uint16_t *src, float *q0, float *qr, float scale, int64_t D);
struct attn_ctx;
/* int8 K scores / int8 V accumulation read in place (mode: see q8_mode) */
typedef void (*qk8_fn)(const struct attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                       int64_t j0, int64_t nt, float *s);
typedef void (*pv8_fn)(const struct attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                       float *o);
typedef void (*pvd_fn)(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R, int64_t nt,
                       int64_t D, int64_t TL, const char *end);
/* Matrix-engine (AMX) hooks for items of many rows. The engine works on
 * transposed scores and output (S^T, P^T: [row block of 16][key][16 rows];
 * O^T: [D][rows]) so that the softmax runs across 16 rows per vector:
 * prep packs the item's scaled queries once and zeroes O^T; pack_k / pack_v
 * turn fp32 K / V tiles into the operand layouts (per item, or once per call
 * into c->mxpk / c->mxpv); qk writes S^T of a packed K tile; sm turns it into
 * P^T for keys j < vis[row] - j0, updates m, l and rescales O^T (returns 0
 * when no row sees a key of the tile); pv adds V^T P^T of a packed V tile to
 * O^T; done releases the engine; rows turns O^T back into rows. NULL where
 * the ISA has none. */
struct attn_ws;
typedef struct mx_hooks {
    void (*prep)(struct attn_ws *w, int64_t R, int64_t D);
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
    /* items of more than Q8_MAX_ROWS rows use the matrix engine (mx_hooks):
     * 0 no, else the operand subtiles per 32 elements, MX_NS (bf16x3) or 1
     * (sc_attention_args.precision SC_PRECISION_BF16) */
    int mx;
    /* K and V^T of every tile packed once per call for the engine, when several
     * row blocks share them: [kv row][tile][mx_tile_words] each (NULL: per item) */
    uint16_t *mxpk, *mxpv;
    int64_t mx_tiles, mx_tile_words;
    /* the same for the bf16 dot-product prefill items (AVX512-BF16 without the
     * engine): K^T and V pair chunks of every tile, converted once per call,
     * [kv row][tile][bf_tile_words], read through bf_qk / bf_pv (NULL: per item) */
    uint32_t *bfk, *bfv;
    int64_t bf_tiles, bf_tile_words;
    /* prefill items whose K scores run in integers all the same (int4 k16
     * codes at precision="int8" on AVX512-VNNI: qk8 with 8-bit q', 64 products
     * per instruction against VDPBF16PS's 32; bfk is then NULL) */
    int k_q8_rows;
    /* and V in integers (symmetric int4 V with one scale per token at "int8":
     * pv4b_vnni's 8-bit P'; bfv is then NULL) */
    int v_q8_rows;
    void (*bf_q)(const float *q, uint32_t *qb, int64_t n); /* the item's queries as bf16 pairs, once per item */
    void (*bf_qk)(const uint32_t *qb, const uint32_t *kT, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL);
    void (*bf_pv)(const float *p, const uint32_t *vp, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL);
} attn_ctx;
#ifndef BF_TILE_KEYS
#define BF_TILE_KEYS 128 /* keys per tile of the AVX512-BF16 prefill items (attention.c) */
#endif
#ifndef BF_PREPACK_MIN_BLOCKS
#define BF_PREPACK_MIN_BLOCKS 16 /* row blocks per kv head from which bfk / bfv are packed (attention.c) */
#endif
/* dwords of one packed bf16 chunk of BF_KEYS (32) keys: K^T [D/2][32], V pairs [16][D] */
#define BF_CHUNK_WORDS(D) (16 * (D))

/* How an int8/int4 store can be read in place: 0 (use the tile decoder), 1 or
 * 2 (see attn_ctx). Outlier tables go through the decoder, and so do zero
 * points except for per-channel K (their minimums add a per-row constant to
 * each token group's scores). Rotation and smoothing are handled around the
 * kernel (q rotated, output rotated back / mean added) as for the tile. */
static inline int q8_mode(const sc_format *f, int is_k) {
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
    /* matrix-engine operands (c->mx), bf16 (hi/lo) subtiles: the queries and
     * P^T as B tiles, the K tile and V^T as A tiles (used when not packed per call) */
    uint16_t *mxq, *mxk, *mxv, *mxp;
    float *mxt;   /* S^T / P^T of the tile: [row block][key][16] */
    uint16_t *mxc; /* column staging for the V^T transposes */
    int32_t *mxvis; /* per row: keys visible from key 0 (causal limit; < 0: padding row) */
    int64_t mxs; /* c->mx, for the hooks (which see only the workspace) */
    int nf;      /* NF_* bits seen by this thread (merged by sc_attention) */
} attn_ws;

#define MX_RP(R) (((R) + 31) / 32 * 32)  /* rows padded for pairs of 16-row tiles */
#define MX_TP(T) (((T) + 31) / 32 * 32)  /* keys padded for 32-key steps */
#define MX_NS 3 /* AMX operand subtiles per 32 elements of the K dimension (bf16x3) */

static inline const char *q_row(const sc_tensor *t, int64_t b, int64_t h, int64_t i) {
    size_t es = t->dtype == SC_DTYPE_F16 ? 2 : 4;
    return (const char *)t->ptr + (size_t)(b * t->stride_b + h * t->stride_h + i * t->stride_t) * es;
}

/* Tokens [j0, j0+nt) of kv head hk as fp32 rows: from a plain tensor (read in
 * place, any strides) or through the store's tile decoder. */
static inline void load_tile(const sc_row_kernels *rk, const sc_tensor *t, sc_decoder *dec, int64_t b, int64_t hk,
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
static inline __attribute__((always_inline)) int finish_row(const attn_ctx *c, int64_t b, int64_t hk,
                                                            int64_t g, int64_t i, const float *O, float m,
                                                            float l, const float *q0, float *tmp) {
    const sc_attention_args *a = c->a;
    const int64_t D = c->D, h = hk * c->group + g, kr = b * c->Hkv + hk;
    int bad = 0;
    if (l > 0.0f) {
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < D; d++) tmp[d] = O[d] * inv;
        if (c->v_rotate) sc_rotate_f32(tmp, 1, D, (int32_t)D);
        if (c->v_smooth)
            for (int64_t d = 0; d < D; d++) tmp[d] += a->v->mean[kr * D + d];
        bad = all_within(tmp, D, a->out.dtype == SC_DTYPE_F16 ? F16_LIMIT : FLT_MAX) ? 0 : NF_O;
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
    return bad;
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
            if (!all_finite(q0, D)) w->nf |= NF_Q;
            wm[r] = -INFINITY;
            wl[r] = 0.0f;
            for (int64_t d = 0; d < D; d++) wo[r * D + d] = 0.0f;
        }
    if (c->k_rotate) sc_rotate_f32(wq, R, D, (int32_t)D);
    if (c->bfk) c->bf_q(wq, (uint32_t *)w->qf, R * D); /* w->qf: free on that path */
    const int use_mx = mx && c->mx;

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
                w->nf |= finish_row(c, b, hk, r / mb, i0 + r % mb, orow, wm[r], wl[r], wq0 + r * D, wkt);
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
     * 379 ms in place vs 263 ms through the tile), except for the 8-bit
     * kernels at "int8" (k_q8_rows, v_q8_rows: 64 products per instruction) */
    const int few_rows = R <= Q8_MAX_ROWS;
    const int kq8 = qk8 && (few_rows || c->k_q8_rows) ? c->k_q8 : 0;
    const int vq8 = pv8 && (few_rows || c->v_q8_rows) ? c->v_q8 : 0;
    int64_t kst = 0, vst = 0;
    int kf16 = 0, vf16 = 0;
    const char *kbase = kdirect ? direct_rows(c, 0, b, hk, &kst, &kf16) : NULL;
    const char *vbase = vdirect ? direct_rows(c, 1, b, hk, &vst, &vf16) : NULL;
    /* the keys' rows end at key hi - 1 */
    const char *kend = kbase && hi > 0 ? kbase + (size_t)((hi - 1) * kst + D) * (kf16 ? 2 : 4) : kbase;
    const char *vend = vbase && hi > 0 ? vbase + (size_t)((hi - 1) * vst + D) * (vf16 ? 2 : 4) : vbase;
    for (int64_t j0 = lo; j0 < hi; j0 += TL) {
        const int64_t nt = hi - j0 < TL ? hi - j0 : TL;
        if (c->bfk) {
            c->bf_qk((const uint32_t *)w->qf, c->bfk + (size_t)(kr * c->bf_tiles + j0 / TL) * c->bf_tile_words, ws, R,
                     nt, D, TL);
        } else if (kdirect) {
            qkd(wq, kbase + (size_t)(j0 * kst) * (kf16 ? 2 : 4), kst, kf16, ws, R, nt, D, TL, kend);
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
            int bad = 0;
            const float alpha = sm(sr, vis, nt, &wm[r], &wl[r], &bad);
            if (bad) w->nf |= NF_S;
            if (alpha < 0.0f) continue; /* no visible key: p = 0 */
            any = 1;
            if (alpha != 1.0f)
                for (int64_t d = 0; d < D; d++) wo[r * D + d] *= alpha;
        }
        if (!any) continue;
        /* rows without mass hold p = 0 */
        if (c->bfv) {
            c->bf_pv(ws, c->bfv + (size_t)(kr * c->bf_tiles + j0 / TL) * c->bf_tile_words, wo, R, nt, D, TL);
        } else if (vdirect) {
            pvd(ws, vbase + (size_t)(j0 * vst) * (vf16 ? 2 : 4), vst, vf16, wo, R, nt, D, TL, vend);
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
                w->nf |= finish_row(c, b, hk, g, i0 + ii, wo + r * D, wm[r], wl[r], wq0 + r * D, wkt);
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
            w->nf |= finish_row(c, b, hk, g, i0 + ii, O, mx, L, q0, w->kt);
        }
}

/* ------------------------------------------------------- ISA instances */
typedef void (*item_fn)(const attn_ctx *, int64_t, attn_ws *);
#ifdef SC_X86
void sc_attn_item_avx2(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_avxvnni(const attn_ctx *c, int64_t i, attn_ws *w);    /* avx2 + AVX-VNNI scores */
void sc_attn_item_avxvnni_ev(const attn_ctx *c, int64_t i, attn_ws *w); /* its EVEX twin (testing) */
void sc_attn_reduce_avx2(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_avx512(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_avx512vnni(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_avx512bf16(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_reduce_avx512(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_amx(const attn_ctx *c, int64_t i, attn_ws *w);
/* pre-pass task t of the AMX path: one tile's K and V^T packed for the call */
void sc_attn_mx_prepack(const attn_ctx *c, int64_t t, attn_ws *w);
void sc_attn_bf_prepack(const attn_ctx *c, int64_t t, attn_ws *w); /* AVX512-BF16 prefill tiles */
void sc_attn_bf_q(const float *q, uint32_t *qb, int64_t n);
void sc_attn_bf_qk(const uint32_t *qb, const uint32_t *kT, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL);
void sc_attn_bf_pv(const float *p, const uint32_t *vp, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL);
#endif
#ifdef SC_ARM64
void sc_attn_item_neon(const attn_ctx *c, int64_t i, attn_ws *w);
void sc_attn_item_neondot(const attn_ctx *c, int64_t i, attn_ws *w);
#endif

#endif /* SC_ATTN_BODY_H */
