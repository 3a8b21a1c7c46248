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
 * The item body (attn_body.h) is compiled once per ISA instance through
 * always-inline templates in functions with target attributes: portable here,
 * AVX2 / AVX-512 / AMX in attention_x86.c, NEON / dotprod in
 * attention_arm64.c; cpu.c's active ISA picks one.
 * Results agree across ISAs to rounding (not bitwise: vector widths change the
 * summation order of dot products).
 */
#include <stdio.h>

#include "attn_body.h"

/* ---------------------------------------------------------- workspaces */
/* n floats rounded up to whole 64-byte lines */
static inline size_t ws_lines(int64_t n) { return (size_t)(n + 15) / 16 * 16; }
static int ws_init(attn_ws *w, const attn_ctx *c) {
    /* the matrix engine stores whole O tiles: its rows are padded */
    const int64_t R = c->mx ? MX_RP(c->rows) : c->rows, D = c->D, TL = c->tile;
    /* every part starts on a 64-byte line, so the kernels' 16-float rows of
     * o, s, qf ... never straddle two lines (a split load or store costs two) */
    const size_t a_q = ws_lines(R * D), a_s = ws_lines(R * TL), a_t = ws_lines(TL * D), a_r = ws_lines(R);
    const size_t nf = 4 * a_q + a_s + 2 * a_t + 2 * a_r + ws_lines(TL * (D / 16 + 1));
    memset(w, 0, sizeof *w);
    w->q = (float *)aligned_alloc(64, nf * sizeof(float));
    if (!c->a->k_tensor) {
        w->kd = sc_decoder_new(c->a->kf, c->a->k);
        w->vd = sc_decoder_new(c->a->vf, c->a->v);
        if (!w->kd || !w->vd) return 0;
    }
    if (!w->q) return 0;
    w->q0 = w->q + a_q;
    w->o = w->q0 + a_q;
    w->s = w->o + a_q;
    w->kt = w->s + a_s;
    w->vt = w->kt + a_t;
    w->m = w->vt + a_t;
    w->l = w->m + a_r;
    w->qf = w->l + a_r;
    w->sc = w->qf + a_q;
    if (c->mx) {
        w->mxs = c->mx;
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

#ifdef SC_X86 /* the pre-passes of the x86 prefill paths (AMX, AVX512-BF16) */
/* The K and V buffers of a pre-pass into kv[0], kv[1] (bytes each; only
 * those wanted, the others NULL). 1 when every wanted one was allocated;
 * else 0 and none is kept: the items then pack their own tiles. */
static int prepack_buffers(size_t bytes, int want_k, int want_v, void *kv[2]) {
    kv[0] = want_k ? aligned_alloc(64, bytes) : NULL;
    kv[1] = want_v ? aligned_alloc(64, bytes) : NULL;
    if ((want_k && !kv[0]) || (want_v && !kv[1])) {
        free(kv[0]);
        free(kv[1]);
        return 0;
    }
    return 1;
}
#endif

static void ws_free(attn_ws *w) {
    free(w->mxq);
    free(w->q);
    sc_decoder_free(w->kd);
    sc_decoder_free(w->vd);
}

/* ------------------------------------------------- the portable instance */

static void qk_portable(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    qk_generic(q, kt, s, R, nt, D, TL);
}
static void pv_portable(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    pv_generic(p, vt, o, R, nt, D, TL);
}
static float sm_portable(float *sr, int64_t vis, int64_t nt, float *m, float *l, int *bad) {
    if (!all_finite(sr, vis)) *bad = 1;
    return softmax_generic(sr, vis, nt, m, l);
}
static void item_portable(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_portable, pv_portable, sm_portable, NULL, NULL, NULL, NULL, NULL, NULL);
}
static void reduce_portable(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }
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

/* The first non-finite element of t's rows [0, n_b) per batch item (n_b:
 * lens[b], or n), written to pos as "[batch b, head h, token t, channel c]
 * = nan" (named: the caller's layout may order the axes otherwise); 0 if none. */
static int first_nonfinite(const sc_tensor *t, const int64_t *lens, int64_t n, char *pos, size_t size) {
    const size_t es = t->dtype == SC_DTYPE_F16 ? 2 : 4;
    for (int64_t b = 0; b < t->batch; b++)
        for (int64_t h = 0; h < t->heads; h++)
            for (int64_t i = 0; i < (lens ? lens[b] : n); i++) {
                const char *row = (const char *)t->ptr + (size_t)(b * t->stride_b + h * t->stride_h + i * t->stride_t) * es;
                for (int64_t d = 0; d < t->dim; d++) {
                    float x;
                    if (es == 2) sc_f16_to_f32((const uint16_t *)row + d, &x, 1);
                    else memcpy(&x, row + 4 * d, 4);
                    if (!(fabsf(x) <= FLT_MAX)) {
                        snprintf(pos, size, "[batch %lld, head %lld, token %lld, channel %lld] = %s", (long long)b, (long long)h, (long long)i,
                                 (long long)d, x != x ? "nan" : (x > 0 ? "inf" : "-inf"));
                        return 1;
                    }
                }
            }
    return 0;
}

/* SC_ERR_NONFINITE for the NF_* bits a call saw, naming the argument first
 * ("q: ...", "k: ...", "v: ..."; the Python layer raises NonFiniteError with
 * that argument) and, where the input is a tensor, the first offending element
 * (found by a scan that runs on this error path only). */
static sc_status nonfinite_error(const sc_attention_args *a, int nf) {
    char pos[128];
    if (nf & NF_Q) {
        if (first_nonfinite(&a->q, NULL, a->q.tokens, pos, sizeof pos))
            return sc_fail(SC_ERR_NONFINITE, "q: element %s (queries must be finite)", pos);
        return sc_fail(SC_ERR_NONFINITE, "q: a non-finite element (queries must be finite)");
    }
    if (nf & NF_S) {
        if (a->k_tensor && first_nonfinite(a->k_tensor, a->kv_lens, a->kv_len, pos, sizeof pos))
            return sc_fail(SC_ERR_NONFINITE, "k: element %s of a visible key (keys must be finite)", pos);
        return sc_fail(SC_ERR_NONFINITE, "k: attention scores are not finite: a NaN/Inf in the keys%s, or q.k x scale "
                       "beyond float32", a->k_tensor ? "" : " (their store or its scales/means)");
    }
    if (a->v_tensor && first_nonfinite(a->v_tensor, a->kv_lens, a->kv_len, pos, sizeof pos))
        return sc_fail(SC_ERR_NONFINITE, "v: element %s of a visible value (values must be finite)", pos);
    return sc_fail(SC_ERR_NONFINITE, "v: the output is not finite: a NaN/Inf in the values%s, or sums beyond "
                   "float32%s", a->v_tensor ? "" : " (their store or its scales/means)",
                   a->out.dtype == SC_DTYPE_F16 ? " (float16 for this float16 out)" : "");
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
    if (a->precision != SC_PRECISION_FP32 && a->precision != SC_PRECISION_BF16 && a->precision != SC_PRECISION_INT8)
        return sc_fail(SC_ERR_INVALID_ARGUMENT,
                       "precision %d is not SC_PRECISION_FP32 (0), SC_PRECISION_BF16 (1) or SC_PRECISION_INT8 (2)",
                       a->precision);
    if (B == 0 || Hq == 0 || M == 0) return SC_OK;

    attn_ctx c;
    memset(&c, 0, sizeof c);
    c.a = a;
    c.rk = sc_row_kernels_active();
    c.B = B; c.Hq = Hq; c.Hkv = Hkv; c.group = Hq / Hkv; c.M = M; c.D = D; c.N = a->kv_len;
    const sc_isa isa = sc_cpu_active_isa();
    /* the matrix engine takes items of more than Q8_MAX_ROWS rows, up to
     * MX_ROWS_MAX, with MX_TILE_KEYS keys per tile: the queries are packed
     * and each O tile loaded/stored once per item / tile, so bigger items
     * amortize both */
    int64_t rows_max = ROWS_MAX, tile_keys = TILE_KEYS;
    const int mx = isa == SC_ISA_AMX && D % 32 == 0 && c.group * M > Q8_MAX_ROWS;
    if (mx) {
        rows_max = MX_ROWS_MAX;
        tile_keys = MX_TILE_KEYS;
    }
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
    /* Items of few rows that read K and V in place (the x86 levels: fp16 rows,
     * int8/int4 codes) decode nothing into an L1 tile, so their tiles can be
     * longer: per-tile work (softmax reductions, the rounding of q' and P' to
     * int16, the flush of O's integer accumulators) is then spread over more
     * keys. Measured on the int8 decode at the bf16 setting (bench/build_ab.py):
     * 32 -> 128 keys 1.15-1.27x; at the fp32 setting 1.07x; fp16 unchanged. */
    if (isa >= SC_ISA_AVX2 && isa <= SC_ISA_AMX && c.rows <= Q8_MAX_ROWS && (c.k_direct || c.k_q8) &&
        (c.v_direct || c.v_q8))
        tile_keys = TILE_KEYS_INPLACE;
#ifdef SC_X86
    /* prefill items on AVX512-BF16 dot products (sc_attn_item_avx512bf16):
     * tiles of 128 keys spread each row's softmax (two horizontal reductions
     * and a call per row and tile) over more keys. build_ab, 2048 causal:
     * fp16 1.06x (64 keys) / 1.075x (128), int8 (64-key tiles already, its K
     * blocks) 1.02x */
    const int bf_prefill = isa == SC_ISA_AVX512_VNNI && a->precision >= SC_PRECISION_BF16 &&
                           sc_cpu_has_avx512bf16() && c.rows > Q8_MAX_ROWS && c.rows <= ROWS_MAX && D <= 256;
    if (bf_prefill) tile_keys = BF_TILE_KEYS;
#endif
    /* int4 K and V with 8-bit operands (precision="int8" on AVX512-VNNI: the
     * products per key halve, so the per-tile work weighs twice as much):
     * 256 keys. build_ab, int4 at "int8": 1.01-1.04x warm, 1.0-1.02x cold on
     * two threads, 1.09-1.10x cold on one; the int8 decode at "bf16" gains
     * nothing cold from 256 (0.97-1.0x), so it keeps 128. */
    if (tile_keys == TILE_KEYS_INPLACE && c.rows <= Q8_MAX_ROWS && (isa == SC_ISA_AVX512_VNNI || isa == SC_ISA_AMX) &&
        a->precision >= SC_PRECISION_INT8 && c.k_q8 && c.v_q8 && a->kf->encoding == SC_ENC_INT4 &&
        a->vf->encoding == SC_ENC_INT4 && !a->vf->zero_point && c.rows % 4 == 0 &&
        (D % 128 == 0 || a->vf->channel_group == D)) /* pv4b_vnni's cases */
        tile_keys = TILE_KEYS_INT4B8;
    const int64_t unit = lcm64(tk, tv);
    c.tile = unit >= tile_keys ? unit : unit * ((tile_keys + unit - 1) / unit);
    if (mx && c.tile % 32 == 0) c.mx = a->precision >= SC_PRECISION_BF16 ? 1 : MX_NS;
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
    if (isa == SC_ISA_AVX512) { item = sc_attn_item_avx512; reduce = sc_attn_reduce_avx512; }
    else if (isa == SC_ISA_AVX512_VNNI) {
        /* bf16 setting on a CPU with AVX512-BF16: prefill items take VDPBF16PS */
        item = a->precision >= SC_PRECISION_BF16 && sc_cpu_has_avx512bf16() ? sc_attn_item_avx512bf16
                                                                             : sc_attn_item_avx512vnni;
        reduce = sc_attn_reduce_avx512;
        /* At "int8", prefill items (with or without AVX512-BF16) take the
         * decode's integer kernels where the formats allow: int4 K in the k16
         * layout (qk4b_k16, 8-bit q') and symmetric int4 V with one scale per
         * token (pv4b_vnni, 8-bit P'); the other operand as the item computes it */
        const int int_prefill = a->precision >= SC_PRECISION_INT8 && c.rows > Q8_MAX_ROWS && c.rows <= ROWS_MAX &&
                                c.rows % 4 == 0 && D <= 256 && D % 16 == 0;
        c.k_q8_rows = int_prefill && c.k_q8 == 1 && a->kf->encoding == SC_ENC_INT4 && a->kf->layout == SC_LAYOUT_K16;
        c.v_q8_rows = int_prefill && c.v_q8 == 2 && a->vf->encoding == SC_ENC_INT4 && !a->vf->zero_point &&
                      a->vf->channel_group == D && c.tile <= TILE_KEYS_INT4B8; /* pv4b_vnni's scratch */
        /* bf16 prefill items (sc_attn_item_avx512bf16's condition), many row
         * blocks per kv head: convert each K/V tile (those not taken in
         * integers) to bf16 once for all of them. The packed tiles are twice
         * an int8 cache's bytes, so they pay only with enough row blocks to
         * share them (build_ab --m, N 4096: 4 blocks 0.83x, 8 1.0x, 16 1.1x;
         * 2048 causal 1.22-1.26x) */
        const int64_t ntl = (c.N + c.tile - 1) / c.tile;
        const int64_t words = (c.tile + 31) / 32 * BF_CHUNK_WORDS(D);
        if (bf_prefill && !(c.k_q8_rows && c.v_q8_rows) && c.nrb >= BF_PREPACK_MIN_BLOCKS && ntl > 0 &&
            8.0 * (double)(B * Hkv * ntl) * (double)words <= MX_PREPACK_MAX) {
            void *kv[2];
            if (prepack_buffers((size_t)(B * Hkv * ntl * words) * 4, !c.k_q8_rows, !c.v_q8_rows, kv)) {
                c.bfk = (uint32_t *)kv[0];
                c.bfv = (uint32_t *)kv[1];
                c.bf_tiles = ntl;
                c.bf_tile_words = words;
                c.bf_q = sc_attn_bf_q;
                c.bf_qk = sc_attn_bf_qk;
                c.bf_pv = sc_attn_bf_pv;
                prepack = sc_attn_bf_prepack;
                prepack_tasks = B * Hkv * ntl;
            }
        }
    }
    else if (isa == SC_ISA_AMX) {
        item = sc_attn_item_amx;
        reduce = sc_attn_reduce_avx512;
        /* several row blocks per kv head: pack each K/V tile once for all of them */
        const int64_t ntl = (c.N + c.tile - 1) / c.tile;
        const int64_t words = MX_TP(c.tile) * D * c.mx;
        if (c.mx && c.nrb > 1 && ntl > 0 && 4.0 * (double)(B * Hkv * ntl) * (double)words <= MX_PREPACK_MAX) {
            void *kv[2];
            if (prepack_buffers((size_t)(B * Hkv * ntl * words) * 2, 1, 1, kv)) {
                c.mxpk = (uint16_t *)kv[0];
                c.mxpv = (uint16_t *)kv[1];
                c.mx_tiles = ntl;
                c.mx_tile_words = words;
                prepack = sc_attn_mx_prepack;
                prepack_tasks = B * Hkv * ntl;
            }
        }
    }
    else if (isa == SC_ISA_AVX2) {
        /* AVX-VNNI: integer decode scores at the bf16/int8 settings (qk_vnni256.h) */
        const int vn = a->precision >= SC_PRECISION_BF16 ? sc_cpu_avxvnni_mode() : 0;
        item = vn == 1 ? sc_attn_item_avxvnni : vn == 2 ? sc_attn_item_avxvnni_ev : sc_attn_item_avx2;
        reduce = sc_attn_reduce_avx2;
    }
#elif defined(SC_ARM64)
    if (isa == SC_ISA_NEON) item = sc_attn_item_neon;
    if (isa == SC_ISA_NEON_DOTPROD) {
        item = sc_attn_item_neondot;
        /* the integer scores take symmetric int8 codes, and int4 codes with
         * per-channel scales at precision="int8" (8-bit q'); the rest goes
         * through the tile */
        const int i4 = !tensors && a->kf->encoding == SC_ENC_INT4 && c.k_q8 == 1 &&
                       a->precision >= SC_PRECISION_INT8 && D % 32 == 0;
        if (!tensors && !i4 && (a->kf->encoding != SC_ENC_INT8 || a->kf->zero_point)) c.k_q8 = 0;
    }
#endif
    volatile int failed = 0;
    int nf = 0; /* NF_* bits of every thread */
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
        nf = w.nf;
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
        if (w.nf) __atomic_fetch_or(&nf, w.nf, __ATOMIC_RELAXED);
        ws_free(&w);
    }
    free(c.part_o);
    free(c.part_ml);
    free(c.mxpk);
    free(c.mxpv);
    free(c.bfk);
    free(c.bfv);
    if (failed) return sc_fail(SC_ERR_NO_MEMORY, "out of memory for attention workspaces");
    if (nf) return nonfinite_error(a, nf);
    return SC_OK;
}
