/*
 * attention_x86.c -- the x86-64 instances of the attention item: AVX2 + FMA
 * microkernels (QK in 4x2 register blocks, PV with 4 rows x 16 channels in
 * registers, rows and codes read in place), AVX-512 microkernels (QK in 4x4 register
 * blocks, PV with 4 rows x 64 channels in registers, fp16/fp32 and int8/int4
 * codes read in place for decode-sized items) and the AMX tile path for
 * items of many rows (docs/architecture.md, "AMX"). Each function carries its
 * target attributes; cpu.c's run-time ISA choice picks the instance.
 */
#include "attn_body.h"

#ifdef SC_X86
#include <immintrin.h>
#define SC_T_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SC_T_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

#define SC_INL static inline __attribute__((always_inline))

/* Software prefetch of K/V rows read in place (codes, or fp16/fp32 rows),
 * PF_KEYS keys ahead of the row being read, into L2, spread through the
 * loops (a line or two per key and block). From DRAM the kernels otherwise
 * wait on these loads; prefetching a whole tile's lines in one burst
 * measured no gain (the fill buffers overflow and the prefetches are
 * dropped). History (docs/benchmarks.md): 192 keys ahead into L1 cut cold
 * int8 decode by 11-13% (Intel, session 6); fp16 rows went 384 ahead into L2
 * (cold fp16 32k 7.3-9.6 -> 6.0-6.5 ms, AMD, session 7); once the in-place
 * tiles were 128 keys long the codes gained from L2 too: cold int8 decode at
 * the bf16 setting 28-32 -> 20-23 ns per key, int4 1.25x, warm and the fp32
 * setting unchanged (bench/build_ab.py, builds alternated in one process).
 * pfend: the first byte past the kv row's data (NULL: no prefetch, e.g. for
 * L1 tiles). */
#ifndef PF_KEYS
#define PF_KEYS 384
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
/* bytes of n elements of an ld16 kind */
SC_INL int64_t kind_bytes(int kind, int64_t n) {
    return kind == 0 ? 4 * n : kind == 1 ? 2 * n : (kind == 2 || kind == 5) ? n : n / 2;
}
SC_INL void pf_span(const char *p, int64_t n, const char *end) {
    for (int64_t l = 0; l < n; l += 64)
        if (p + l < end) _mm_prefetch(p + l, PF_HINT);
}
/* The k16 score blocks' prefetch: the start of the same block PF_KEYS keys
 * ahead when all of it lies before end, else NULL; the block then issues one
 * line per 64-byte word it reads, spread over its loop. (A burst of 16-32
 * prefetches at the block's start, pf_span, measured 1.035-1.073x slower
 * cold and ~1.04x warm for int4 at "int8": docs/benchmarks.md, session 17.) */
SC_INL const char *pf_ahead(const void *k, int64_t ahead, int64_t span, const char *end) {
    const char *p = (const char *)k + ahead;
    return end && p + span <= end ? p : NULL;
}
/* A second, near prefetch into L1 (T0), PF_NEAR keys ahead, beside the far
 * one into L2: in the int4 loops at "int8" (qkb16_block, pvb_pass), whose
 * loads otherwise wait on L2 (perf: the V loads of pvb_pass held ~17% of its
 * samples). int4 at "int8", bench/build_ab.py: warm 1.034-1.045x, cold 2
 * threads 1.016-1.037x. The int8 loops at "bf16" measured 0.973-0.976x cold
 * with it, and keep the far prefetch alone (docs/benchmarks.md, session 18). */
#ifndef PF_NEAR
#define PF_NEAR 32
#endif
/* Software prefetch of the scale (or zero-point) elements [i0, i0 + n) of
 * the array a, clipped at element iend (the kv row's end). The scale streams
 * run beside the codes (int4: 16 of 144 bytes per key) and were left to the
 * hardware prefetcher until session 14; prefetched PF_KEYS keys ahead with
 * the codes, cold int4 decode (int8 setting) gained 1.03-1.05x
 * (docs/benchmarks.md, session 14). */
SC_INL void pf_scales(const void *a, int f32, int64_t i0, int64_t n, int64_t iend) {
    if (!a || i0 >= iend) return;
    const int64_t eb = f32 ? 4 : 2;
    pf_span((const char *)a + i0 * eb, n * eb, (const char *)a + iend * eb);
}

/* ---- int8/int4 stores read in place: the driver shared by the ISA levels ----
 * (q8 modes: see q8_mode() in attn_body.h). Each level supplies its scale
 * conversion, its int4 -> int8 unpack and bodies that read int8 / uint8 code
 * rows (kinds 2 and 5); int4 codes go through an L1 byte scratch, U4_KEYS keys
 * at a time (see unpack4). */
#define U4_KEYS 64
/* the ld16/ld8 kind of a quantized store's codes */
static inline int code_kind(const sc_format *f) {
    return f->encoding == SC_ENC_INT8 ? (f->zero_point ? 5 : 2) : (f->zero_point ? 4 : 3);
}
/* n scales of a store (fp16 or fp32) from element i0, as fp32: fp16 through
 * the active level's row kernel (load_f32 would round through fp16) */
SC_INL void store_scales(const attn_ctx *c, const sc_store *st, int f32, int64_t i0, int64_t n, float *dst) {
    if (f32) memcpy(dst, (const float *)st->scales + i0, (size_t)n * sizeof(float));
    else c->rk->load_f16((const uint16_t *)st->scales + i0, NULL, dst, n);
}
/* the per-token scales (ncell per key) of keys j0..j0+nt of kv row kr, as
 * fp32 into dst; the same span PF_KEYS keys ahead prefetched unless the
 * caller spreads that over its loop (pf 0: pv4b_vnni, pf_vscale) */
SC_INL void token_scales(const attn_ctx *c, const sc_store *st, int f32, int64_t kr, int64_t j0, int64_t nt,
                         int64_t ncell, float *dst, const int pf) {
    const int64_t row = kr * st->capacity;
    store_scales(c, st, f32, (row + j0) * ncell, nt * ncell, dst);
    if (pf) pf_scales(st->scales, f32, (row + j0 + PF_KEYS) * ncell, nt * ncell, (row + st->capacity) * ncell);
}
/* token group g's per-channel scales (D) of kv row kr, as fp32 into dst;
 * the scales and zero points PF_KEYS keys ahead prefetched unless the caller
 * spreads that over its blocks (pf 0: group_lines_pf). Returns the group's
 * first element (for its zero points). */
SC_INL int64_t group_scales(const attn_ctx *c, const sc_store *st, int f32, int64_t kr, int64_t g, int64_t T,
                            int64_t D, float *dst, const int pf) {
    const int64_t ng = st->capacity / T, cell0 = (kr * ng + g) * D, cend = (kr + 1) * ng * D;
    store_scales(c, st, f32, cell0, D, dst);
    if (pf) {
        pf_scales(st->scales, f32, cell0 + PF_KEYS / T * D, D, cend);
        pf_scales(st->zeros, f32, cell0 + PF_KEYS / T * D, D, cend);
    }
    return cell0;
}
/* The share of 16-key block b (of T / 16) of the scale and zero-point lines
 * of the token group PF_KEYS keys ahead of group g: group_scales' prefetch
 * spread over the group's blocks instead of a burst at its start. Bursts of
 * prefetches overflow the miss buffers and are dropped (see pvb_pass); for
 * int4 at "int8" the spread measured 1.01-1.02x cold on top of pvb_pass's
 * (docs/benchmarks.md, session 20). */
SC_INL void group_lines_pf(const sc_store *st, int f32, int64_t kr, int64_t g, int64_t T, int64_t D, int64_t b) {
    const int64_t ng = st->capacity / T, ga = g + PF_KEYS / T, eb = f32 ? 4 : 2, L = (D * eb + 63) / 64, nb = T / 16;
    if (ga >= ng) return;
    const int64_t off = (kr * ng + ga) * D * eb;
    for (int64_t l = b * L / nb; l < (b + 1) * L / nb; l++) {
        _mm_prefetch((const char *)st->scales + off + 64 * l, PF_HINT);
        if (st->zeros) _mm_prefetch((const char *)st->zeros + off + 64 * l, PF_HINT);
    }
}
/* int8/int4 codes of keys [j, j + m) of kv row kr as token rows, for the
 * readers without a k16 kernel: in place for SC_LAYOUT_ROWS; for
 * SC_LAYOUT_K16 gathered into buf (m * rb bytes) by the level's transposes,
 * the same span PF_KEYS keys ahead prefetched and *pfend cleared (buf is in
 * L1). A k16 block occupies the bytes of its 16 rows, so the prefetch is the
 * same. (j: a multiple of 16.) */
typedef void (*k16_fn)(const uint8_t *row0, int64_t j, int64_t m, int64_t rb, uint8_t *rows);
/* fp32 scores of R rows (qf: q x the group's scales) over keys [jt, jt + n) of
 * a k16 store of codes of this kind, read in place; returns 0 when it does
 * not take this kind (the driver then gathers rows) */
typedef int (*k16_body_fn)(const float *qf, const uint8_t *row0, int64_t jt, int64_t n, int kind, float *s,
                            int64_t R, int64_t D, int64_t TL, const char *pfend);
SC_INL const uint8_t *code_rows(const sc_format *f, const sc_store *st, int64_t kr, int64_t j, int64_t m,
                                int64_t rb, uint8_t *buf, const char **pfend, k16_fn gather) {
    const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
    if (f->layout != SC_LAYOUT_K16) return row0 + j * rb;
    if (*pfend) pf_span((const char *)row0 + (j + PF_KEYS) * rb, m * rb, *pfend);
    *pfend = NULL;
    gather(row0, j, m, rb, buf);
    return buf;
}
typedef void (*unpack_fn)(const uint8_t *src, int8_t *dst, int64_t n, int sym, int64_t row_bytes, const char *pfend);
/* scores / O += P V over n rows of codes of kind 2 or 5 (row stride D) */
typedef void (*codes_fn)(const float *x, const uint8_t *codes, int kind, float *y, int64_t R, int64_t n, int64_t D,
                         int64_t TL, const float *sc, int64_t G, const char *pfend);

/* zero points of per-channel K (q8 mode 1): k = code * s + m[g], so every
 * score of token group g gains q . m[g] (sc: scratch for the minimums) */
SC_INL void zp_bias(const attn_ctx *c, const float *q, float *sc, int64_t kr, int64_t g, int64_t t, int64_t n,
                    float *s) {
    const sc_format *f = c->a->kf;
    const sc_store *st = c->a->k, zs = {.scales = st->zeros};
    const int64_t D = c->D, TL = c->tile;
    store_scales(c, &zs, f->scale_dtype == SC_DTYPE_F32, (kr * (st->capacity / f->token_group) + g) * D, D, sc);
    for (int64_t r = 0; r < c->rows; r++) {
        const float bias = dot(q + r * D, sc, D);
        for (int64_t jj = 0; jj < n; jj++) s[r * TL + t + jj] += bias;
    }
}

SC_INL void qk8_driver(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr, int64_t j0,
                       int64_t nt, float *s, unpack_fn unpack, codes_fn body, k16_fn gather, k16_body_fn k16_body) {
    const sc_format *f = c->a->kf;
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, G = f->channel_group;
    const int64_t rb = f->encoding == SC_ENC_INT8 ? D : D / 2;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32, kind = code_kind(f);
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    int8_t u4[U4_KEYS * 256] __attribute__((aligned(64))); /* int4 codes as bytes (D <= 256) */
    uint8_t k16r[U4_KEYS * 256] __attribute__((aligned(64))); /* SC_LAYOUT_K16 codes as rows (code_rows) */
    if (mode == 2) { /* k = code * s[j][cell] */
        token_scales(c, st, sf32, kr, j0, nt, D / G, sc, 1);
        if (kind == 2) {
            body(q, codes, 2, s, R, nt, D, TL, sc, G, pfend);
            return;
        }
        for (int64_t off = 0; off < nt; off += U4_KEYS) {
            const int64_t m = nt - off < U4_KEYS ? nt - off : U4_KEYS;
            unpack(codes + off * rb, u4, m * D, 1, rb, pfend);
            body(q, (const uint8_t *)u4, 2, s + off, R, m, D, TL, sc + off * (D / G), G, NULL);
        }
        return;
    }
    /* mode 1: k = code * s[g][c] (+ m[g][c]); s folded into q once per token group */
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        group_scales(c, st, sf32, kr, g, T, D, sc, 1);
        for (int64_t r = 0; r < R; r++)
            for (int64_t d = 0; d < D; d++) qf[r * D + d] = q[r * D + d] * sc[d];
        const int k16 = f->layout == SC_LAYOUT_K16, i8 = kind == 2 || kind == 5;
        if (k16 && k16_body(qf, (const uint8_t *)st->data + kr * st->capacity * rb, j0 + t, n, kind, s + t, R, D, TL,
                            pfend)) {
            /* keys in the lanes, read in place */
        } else if (i8 && !k16) {
            body(qf, codes + t * rb, kind, s + t, R, n, D, TL, NULL, 1, pfend);
        } else /* int4 (through bytes), or k16 rows gathered: U4_KEYS keys at a time */
            for (int64_t off = 0; off < n; off += U4_KEYS) {
                const int64_t m = n - off < U4_KEYS ? n - off : U4_KEYS;
                const char *pe = pfend;
                const uint8_t *cr = code_rows(f, st, kr, j0 + t + off, m, rb, k16r, &pe, gather);
                if (i8) {
                    body(qf, cr, kind, s + t + off, R, m, D, TL, NULL, 1, pe);
                } else {
                    unpack(cr, u4, m * D, kind == 3, rb, pe);
                    body(qf, (const uint8_t *)u4, 2, s + t + off, R, m, D, TL, NULL, 1, NULL);
                }
            }
        if (f->zero_point) zp_bias(c, q, sc, kr, g, t, n, s);
        t += n;
    }
}

SC_INL void pv8_driver(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p, float *o,
                       unpack_fn unpack, codes_fn body) {
    const sc_format *f = c->a->vf;
    const sc_store *st = c->a->v;
    const int64_t D = c->D, G = f->channel_group;
    const int64_t rb = f->encoding == SC_ENC_INT8 ? D : D / 2;
    token_scales(c, st, f->scale_dtype == SC_DTYPE_F32, kr, j0, nt, D / G, sc, 1);
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    if (code_kind(f) == 2) {
        body(p, codes, 2, o, c->rows, nt, D, c->tile, sc, G, pfend);
        return;
    }
    int8_t u4[U4_KEYS * 256] __attribute__((aligned(64)));
    for (int64_t off = 0; off < nt; off += U4_KEYS) {
        const int64_t m = nt - off < U4_KEYS ? nt - off : U4_KEYS;
        unpack(codes + off * rb, u4, m * D, 1, rb, pfend);
        body(p + off, (const uint8_t *)u4, 2, o, c->rows, m, D, c->tile, sc + off * (D / G), G, NULL);
    }
}

/* ---- AVX2 + FMA: the AVX-512 microkernels' structure on 8-lane vectors ----
 * (16 ymm registers: QK in 4-row x 2-key blocks, PV with 4 rows x 16
 * channels in registers; fp16/fp32 rows and int8/int4 codes read in place,
 * converted in registers). Before these, the AVX2 path ran the generic loops
 * over decoded fp32 tiles, 4-8x slower per key than AVX-512 on the same core
 * (docs/benchmarks.md, "AVX2 microkernels"). */

/* 8 vectors -> one vector whose lane k is the sum of a[k]'s lanes */
SC_T_AVX2 SC_INL __m256 hsum8(const __m256 *a) {
    const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3); /* [a0..a3 lo | a0..a3 hi] */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* 8 K/V elements, kinds as ld16 below (0 fp32, 1 fp16, 2 int8, 3 int4
 * symmetric (+8), 4 int4 unsigned, 5 uint8); kind is a constant after inlining */
SC_T_AVX2 SC_INL __m256 ld8(const void *base, int64_t i, int kind) {
    if (kind == 2)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)base + i))));
    if (kind == 5)
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)base + i))));
    if (kind == 3 || kind == 4) { /* channel 2i: byte i's low nibble, 2i+1: its high one */
        int32_t w4;
        memcpy(&w4, (const uint8_t *)base + i / 2, 4);
        const __m128i b = _mm_cvtsi32_si128(w4);
        __m256i w = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(b, b));
        w = _mm256_and_si256(_mm256_srlv_epi32(w, _mm256_set_epi32(4, 0, 4, 0, 4, 0, 4, 0)), _mm256_set1_epi32(15));
        const __m256 x = _mm256_cvtepi32_ps(w);
        return kind == 3 ? _mm256_sub_ps(x, _mm256_set1_ps(8.0f)) : x;
    }
    return kind ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)))
                : _mm256_loadu_ps((const float *)base + i);
}
/* cell of each 8-channel chunk (D <= 256: 32 chunks) */
static inline void cell_map8(const float *sc, int64_t D, int64_t G, int64_t *ncell, int32_t *cix) {
    if (!sc) return;
    *ncell = D / G;
    for (int64_t ch = 0; ch < D / 8; ch++) cix[ch] = (int32_t)(ch * 8 / G);
}
SC_T_AVX2 SC_INL __m256 cell_scaled8(__m256 x, const float *sc, int64_t j, int64_t ch, int64_t ncell,
                                     const int32_t *cix) {
    return sc ? _mm256_mul_ps(x, _mm256_set1_ps(sc[j * ncell + cix[ch]])) : x;
}
/* 4 rows x nk (<= 2) keys: every K element converted once for 4 rows, q read
 * as the FMAs' memory operand; lane rr*2 + kk of the reduction is (row, key) */
SC_T_AVX2 SC_INL void qk42_block(const float *q, const void *k, int64_t ks, int kind, float *s, int64_t r0,
                                 int64_t j0, int64_t nk, int64_t D, int64_t TL, const float *sc, int64_t ncell,
                                 const int32_t *cix, const char *pfend) {
    if (pfend && r0 == 0)
        for (int kk = 0; kk < nk; kk++)
            pf_span((const char *)k + kind_bytes(kind, (j0 + kk + PF_KEYS) * ks), kind_bytes(kind, D), pfend);
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) {
        const __m256 k0 = cell_scaled8(ld8(k, j0 * ks + c, kind), sc, j0, c / 8, ncell, cix);
        const __m256 k1 = nk > 1 ? cell_scaled8(ld8(k, (j0 + 1) * ks + c, kind), sc, j0 + 1, c / 8, ncell, cix)
                                 : _mm256_setzero_ps();
        for (int rr = 0; rr < 4; rr++) {
            const __m256 qv = _mm256_loadu_ps(q + (r0 + rr) * D + c);
            acc[rr * 2] = _mm256_fmadd_ps(qv, k0, acc[rr * 2]);
            acc[rr * 2 + 1] = _mm256_fmadd_ps(qv, k1, acc[rr * 2 + 1]);
        }
    }
    const __m256 h = hsum8(acc);
    const __m128 lo = _mm256_castps256_ps128(h), hi = _mm256_extractf128_ps(h, 1);
    float *s0 = s + r0 * TL + j0;
    if (nk > 1) {
        _mm_storel_pi((__m64 *)s0, lo);
        _mm_storeh_pi((__m64 *)(s0 + TL), lo);
        _mm_storel_pi((__m64 *)(s0 + 2 * TL), hi);
        _mm_storeh_pi((__m64 *)(s0 + 3 * TL), hi);
    } else {
        _mm_store_ss(s0, lo);
        _mm_store_ss(s0 + TL, _mm_movehl_ps(lo, lo));
        _mm_store_ss(s0 + 2 * TL, hi);
        _mm_store_ss(s0 + 3 * TL, _mm_movehl_ps(hi, hi));
    }
}
/* one row x nk (<= 8) keys */
SC_T_AVX2 SC_INL void qk18_block(const float *q, const void *k, int64_t ks, int kind, float *s, int64_t j0,
                                 int64_t nk, int64_t D, const float *sc, int64_t ncell, const int32_t *cix,
                                 const char *pfend) {
    if (pfend)
        for (int kk = 0; kk < nk; kk++)
            pf_span((const char *)k + kind_bytes(kind, (j0 + kk + PF_KEYS) * ks), kind_bytes(kind, D), pfend);
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) {
        const __m256 qv = _mm256_loadu_ps(q + c);
        for (int kk = 0; kk < 8; kk++)
            if (kk < nk)
                acc[kk] = _mm256_fmadd_ps(qv, cell_scaled8(ld8(k, (j0 + kk) * ks + c, kind), sc, j0 + kk, c / 8, ncell, cix),
                                          acc[kk]);
    }
    const __m256 h = hsum8(acc);
    if (nk == 8) _mm256_storeu_ps(s + j0, h);
    else {
        float t[8];
        _mm256_storeu_ps(t, h);
        for (int kk = 0; kk < nk; kk++) s[j0 + kk] = t[kk];
    }
}
SC_T_AVX2 SC_INL void qk_body8(const float *q, const void *k, int64_t ks, int kind, float *s, int64_t R, int64_t nt,
                               int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map8(sc, D, G, &ncell, cix);
    int64_t r0 = 0;
    for (; r0 + 4 <= R; r0 += 4) {
        int64_t j0 = 0;
        for (; j0 + 2 <= nt; j0 += 2) qk42_block(q, k, ks, kind, s, r0, j0, 2, D, TL, sc, ncell, cix, pfend);
        if (j0 < nt) qk42_block(q, k, ks, kind, s, r0, j0, 1, D, TL, sc, ncell, cix, pfend);
    }
    for (; r0 < R; r0++) {
        int64_t j0 = 0;
        const char *pf = r0 == 0 ? pfend : NULL; /* fewer than 4 rows: prefetch here */
        for (; j0 + 8 <= nt; j0 += 8) qk18_block(q + r0 * D, k, ks, kind, s + r0 * TL, j0, 8, D, sc, ncell, cix, pf);
        if (j0 < nt) qk18_block(q + r0 * D, k, ks, kind, s + r0 * TL, j0, nt - j0, D, sc, ncell, cix, pf);
    }
}

/* rows r0..r0+nr (<= 4), channels c0..c0+8 nv (nr * nv <= 8), all nt keys */
SC_T_AVX2 SC_INL void pv_block8(const float *p, const void *v, int64_t vs, int kind, float *o, int64_t r0, int64_t c0,
                                int nr, int nv, int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t ncell,
                                const int32_t *cix, const char *pfend) {
    __m256 acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        acc[i] = i < nr * nv ? _mm256_loadu_ps(o + (r0 + i / nv) * D + c0 + 8 * (i % nv)) : _mm256_setzero_ps();
    for (int64_t j = 0; j < nt; j++) {
        if (pfend && r0 == 0)
            pf_span((const char *)v + kind_bytes(kind, (j + PF_KEYS) * vs + c0), kind_bytes(kind, 8 * nv), pfend);
        __m256 x[4];
#pragma GCC unroll 4
        for (int kk = 0; kk < 4; kk++)
            x[kk] = kk < nv ? cell_scaled8(ld8(v, j * vs + c0 + 8 * kk, kind), sc, j, c0 / 8 + kk, ncell, cix)
                            : _mm256_setzero_ps();
#pragma GCC unroll 4
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const __m256 pj = _mm256_broadcast_ss(p + (r0 + rr) * TL + j);
#pragma GCC unroll 4
            for (int kk = 0; kk < 4; kk++)
                if (kk < nv) acc[rr * nv + kk] = _mm256_fmadd_ps(pj, x[kk], acc[rr * nv + kk]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        if (i < nr * nv) _mm256_storeu_ps(o + (r0 + i / nv) * D + c0 + 8 * (i % nv), acc[i]);
}
/* O += P V: 4 rows x 16 channels in registers (1 row: 32 channels); D is a
 * multiple of 16. Constant shapes per call so the accumulators stay in registers. */
SC_T_AVX2 SC_INL void pv_body8(const float *p, const void *v, int64_t vs, int kind, float *o, int64_t R, int64_t nt,
                               int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map8(sc, D, G, &ncell, cix);
    int64_t r0 = 0;
    for (; r0 + 4 <= R; r0 += 4)
        for (int64_t c0 = 0; c0 < D; c0 += 16) pv_block8(p, v, vs, kind, o, r0, c0, 4, 2, nt, D, TL, sc, ncell, cix, pfend);
    for (; r0 + 2 <= R; r0 += 2)
        for (int64_t c0 = 0; c0 < D; c0 += 32)
            if (D - c0 >= 32) pv_block8(p, v, vs, kind, o, r0, c0, 2, 4, nt, D, TL, sc, ncell, cix, r0 == 0 ? pfend : NULL);
            else pv_block8(p, v, vs, kind, o, r0, c0, 2, 2, nt, D, TL, sc, ncell, cix, r0 == 0 ? pfend : NULL);
    for (; r0 < R; r0++)
        for (int64_t c0 = 0; c0 < D; c0 += 32)
            if (D - c0 >= 32) pv_block8(p, v, vs, kind, o, r0, c0, 1, 4, nt, D, TL, sc, ncell, cix, r0 == 0 ? pfend : NULL);
            else pv_block8(p, v, vs, kind, o, r0, c0, 1, 2, nt, D, TL, sc, ncell, cix, r0 == 0 ? pfend : NULL);
}

/* fp32 tiles (decoded formats, prefill items) */
SC_T_AVX2 static void qk_avx2(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    qk_body8(q, kt, D, 0, s, R, nt, D, TL, NULL, 1, NULL);
}
SC_T_AVX2 static void pv_avx2(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    pv_body8(p, vt, D, 0, o, R, nt, D, TL, NULL, 1, NULL);
}
/* rows read in place */
SC_T_AVX2 static void qkd_avx2(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R, int64_t nt,
                               int64_t D, int64_t TL, const char *end) {
    if (f16) qk_body8(q, k, ks, 1, s, R, nt, D, TL, NULL, 1, end);
    else qk_body8(q, k, ks, 0, s, R, nt, D, TL, NULL, 1, end);
}
SC_T_AVX2 static void pvd_avx2(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R, int64_t nt,
                               int64_t D, int64_t TL, const char *end) {
    if (f16) pv_body8(p, v, vs, 1, o, R, nt, D, TL, NULL, 1, end);
    else pv_body8(p, v, vs, 0, o, R, nt, D, TL, NULL, 1, end);
}


/* unpack4 (AVX-512 section) on 256-bit vectors: int4 codes -> int8 bytes,
 * 64 codes per step; n codes, a multiple of 16 */
SC_T_AVX2 static void unpack4_avx2(const uint8_t *src, int8_t *dst, int64_t n, int sym, int64_t row_bytes,
                                   const char *pfend) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(sym ? 8 : 0);
    const char *pf = (const char *)src + PF_KEYS * row_bytes;
    for (int64_t i = 0; i < n; i += 64, pf += 32) {
        const int64_t left = n - i;
        if (pfend && pf < pfend && !(i & 127)) _mm_prefetch(pf, PF_HINT);
        __m256i b;
        if (left >= 64) b = _mm256_loadu_si256((const __m256i *)(src + i / 2));
        else { /* 8, 16 or 24 bytes left */
            uint8_t t[32] = {0};
            memcpy(t, src + i / 2, (size_t)(left / 2));
            b = _mm256_loadu_si256((const __m256i *)t);
        }
        const __m256i lo = _mm256_and_si256(b, m4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        /* per 128-bit lane L: u0 = codes 32L..32L+15, u1 = codes 32L+16..32L+31 */
        const __m256i u0 = _mm256_unpacklo_epi8(lo, hi), u1 = _mm256_unpackhi_epi8(lo, hi);
        const __m256i x0 = _mm256_sub_epi8(_mm256_permute2x128_si256(u0, u1, 0x20), eight);
        const __m256i x1 = _mm256_sub_epi8(_mm256_permute2x128_si256(u0, u1, 0x31), eight);
        if (left >= 64) {
            _mm256_storeu_si256((__m256i *)(dst + i), x0);
            _mm256_storeu_si256((__m256i *)(dst + i + 32), x1);
        } else {
            int8_t t[64];
            _mm256_storeu_si256((__m256i *)t, x0);
            _mm256_storeu_si256((__m256i *)(t + 32), x1);
            memcpy(dst + i, t, (size_t)left);
        }
    }
}

/* sc_k16_gather (keys [j, j + m) of a k16 row to rows; j a multiple of 16)
 * by 8 x 8 dword transposes: per 8 keys and 8 words, 24 shuffles instead of
 * 64 four-byte copies. Lanes past the last key are neither read nor written. */
SC_T_AVX2 static void k16_gather_avx2(const uint8_t *row0, int64_t j, int64_t m, int64_t rb, uint8_t *rows) {
    const int64_t W = rb / 4;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t b = 0; b < m; b += 8) {
        const int64_t nk = m - b < 8 ? m - b : 8; /* keys of this half block */
        const uint8_t *blk = row0 + (j + (b & ~(int64_t)15)) * rb + (b & 8) * 4;
        const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nk), lane);
        for (int64_t w0 = 0; w0 < W; w0 += 8) {
            const int64_t nw = W - w0 < 8 ? W - w0 : 8;
            __m256i r[8], t[8];
            for (int i = 0; i < 8; i++) /* masked loads and stores only at the ends (vpmaskmovd is slow on AMD) */
                r[i] = i >= nw ? _mm256_setzero_si256()
                       : nk == 8 ? _mm256_loadu_si256((const __m256i *)(blk + 64 * (w0 + i)))
                                 : _mm256_maskload_epi32((const int *)(blk + 64 * (w0 + i)), km);
            for (int i = 0; i < 4; i++) {
                t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            for (int i = 0; i < 2; i++) {
                r[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
                r[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
                r[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
                r[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
            }
            /* r[e] (e < 4): keys e, 4 + e of words w0..w0+3 | w0+4..w0+7 in r[4 + e] */
            const __m256i wm = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nw), lane);
            for (int e = 0; e < 4; e++) {
                const __m256i k0 = _mm256_permute2x128_si256(r[e], r[4 + e], 0x20);
                const __m256i k1 = _mm256_permute2x128_si256(r[e], r[4 + e], 0x31);
                int *d0 = (int *)(rows + (b + e) * rb + 4 * w0), *d1 = (int *)(rows + (b + 4 + e) * rb + 4 * w0);
                if (nw == 8) {
                    if (e < nk) _mm256_storeu_si256((__m256i *)d0, k0);
                    if (4 + e < nk) _mm256_storeu_si256((__m256i *)d1, k1);
                } else {
                    if (e < nk) _mm256_maskstore_epi32(d0, wm, k0);
                    if (4 + e < nk) _mm256_maskstore_epi32(d1, wm, k1);
                }
            }
        }
    }
}

/* qk16_f32 (AVX-512 section) for int4 codes on 8 lanes: each 16-key block
 * as two halves of 8 keys (bytes 32h.. of every word vector), the codes of
 * a pair of channels at a time into 8 accumulators (4 rows x even/odd) */
SC_T_AVX2 SC_INL void qkf8_block(const float *qf, const uint8_t *k, __m256i km, int full, float *s, int64_t r0,
                                 const int nr, int64_t D, int64_t TL, const float *bias) {
    __m256 ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi32(0xF);
    for (int64_t w = 0; w < D / 8; w++) {
        const __m256i v = full ? _mm256_loadu_si256((const __m256i *)(k + 64 * w))
                               : _mm256_maskload_epi32((const int *)(k + 64 * w), km);
        for (int i = 0; i < 8; i += 2) { /* channel 8w + c: byte c / 2, nibble c % 2 */
            __m256 x[2];
            for (int u = 0; u < 2; u++)
                x[u] = _mm256_cvtepi32_ps(_mm256_and_si256(i + u ? _mm256_srli_epi32(v, 4 * (i + u)) : v, m4));
            for (int rr = 0; rr < nr; rr++) {
                const float *qr = qf + (r0 + rr) * D + 8 * w + i;
                ae[rr] = _mm256_fmadd_ps(x[0], _mm256_broadcast_ss(qr), ae[rr]);
                ao[rr] = _mm256_fmadd_ps(x[1], _mm256_broadcast_ss(qr + 1), ao[rr]);
            }
        }
    }
    for (int rr = 0; rr < nr; rr++) {
        const __m256 r = _mm256_sub_ps(_mm256_add_ps(ae[rr], ao[rr]), _mm256_set1_ps(bias[r0 + rr]));
        if (full) _mm256_storeu_ps(s + (r0 + rr) * TL, r);
        else _mm256_maskstore_ps(s + (r0 + rr) * TL, km, r);
    }
}
/* int8 codes (kind 2) of 4 keys (kq-th quad of the 16-key block at blk, nk
 * <= 4 of them valid) x nr (<= 4) rows. Bytes 8p..8p+7 of a word vector are
 * channels 4w..4w+3 of keys 2p, 2p + 1, widened by one vpmovsxbd as the rows
 * layout widens 8 channels of one key, and met by q x s of those 4 channels
 * in both halves (vbroadcastf128): lanes 0-3 sum key 2p's products, 4-7 key
 * 2p + 1's -- the rows layout's operations per code, in place (extracting
 * channels with the keys in the lanes cost 3 operations per 8 codes against
 * 2, and gathering rows back by 8x8 transposes: 0.89x and 0.87-0.92x). Two
 * hadds per row and 4 keys at the end. */
SC_T_AVX2 SC_INL void qkp8_block(const float *qf, const uint8_t *blk, int64_t kq, const int nk, float *s, int64_t r0,
                                 const int nr, int64_t D, int64_t TL) {
    __m256 acc[4][2];
    for (int rr = 0; rr < 4; rr++) acc[rr][0] = acc[rr][1] = _mm256_setzero_ps();
    const uint8_t *k = blk + 16 * kq;
    for (int64_t w = 0; w < D / 4; w++) {
        __m256 kv[2];
        for (int p = 0; p < 2; p++) {
            const uint8_t *src = k + 64 * w + 8 * p;
            const __m128i x = nk >= 2 * p + 2 ? _mm_loadl_epi64((const __m128i *)src)
                              : nk == 2 * p + 1 ? _mm_cvtsi32_si128(*(const int32_t *)src)
                                                : _mm_setzero_si128();
            kv[p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
        }
        for (int rr = 0; rr < nr; rr++) {
            const __m256 qv = _mm256_broadcast_ps((const __m128 *)(qf + (r0 + rr) * D + 4 * w));
            acc[rr][0] = _mm256_fmadd_ps(qv, kv[0], acc[rr][0]);
            acc[rr][1] = _mm256_fmadd_ps(qv, kv[1], acc[rr][1]);
        }
    }
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int rr = 0; rr < nr; rr++) {
        const __m256 h = _mm256_hadd_ps(acc[rr][0], acc[rr][1]); /* [k0 k0 k2 k2 | k1 k1 k3 k3] halves */
        const __m128 v = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(_mm256_hadd_ps(h, h), order));
        float *dst = s + (r0 + rr) * TL;
        if (nk == 4) _mm_storeu_ps(dst, v);
        else {
            float t[4];
            _mm_storeu_ps(t, v);
            for (int kk = 0; kk < nk; kk++) dst[kk] = t[kk];
        }
    }
}

/* int4 codes: keys in the lanes (qkf8_block); int8: key pairs (qkp8_block) */
SC_T_AVX2 static int qk16_f32_avx2(const float *qf, const uint8_t *row0, int64_t jt, int64_t n, int kind, float *s,
                                   int64_t R, int64_t D, int64_t TL, const char *pfend) {
    if (kind == 5 || (kind == 2 && jt % 4)) return 0;
    if (kind == 2) {
        for (int64_t j = 0; j < n; j += 4) {
            const int64_t jj = jt + j;
            const int nk = n - j < 4 ? (int)(n - j) : 4;
            const uint8_t *blk = row0 + (jj & ~(int64_t)15) * D;
            if (pfend && !(jj & 15)) pf_span((const char *)row0 + (jj + PF_KEYS) * D, 16 * D, pfend);
            for (int64_t r0 = 0; r0 < R; r0 += 4) {
                const int nr = R - r0 < 4 ? (int)(R - r0) : 4;
                if (nk == 4 && nr == 4) qkp8_block(qf, blk, (jj & 15) / 4, 4, s + j, r0, 4, D, TL);
                else qkp8_block(qf, blk, (jj & 15) / 4, nk, s + j, r0, nr, D, TL);
            }
        }
        return 1;
    }
    const int64_t rb = D / 2;
    float bias[Q8_MAX_ROWS] = {0};
    if (kind == 3)
        for (int64_t r = 0; r < R; r++) {
            float a = 0.0f;
            for (int64_t d = 0; d < D; d++) a += qf[r * D + d];
            bias[r] = 8.0f * a;
        }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = 0; j < n; j += 8) { /* keys jt + j .. : half h = (jt + j) / 8 % 2 of their block */
        const int64_t nk = n - j < 8 ? n - j : 8, jj = jt + j;
        const uint8_t *k = row0 + (jj & ~(int64_t)15) * rb + (jj & 8) * 4;
        if (pfend && !(jj & 8)) pf_span((const char *)row0 + (jj + PF_KEYS) * rb, 16 * rb, pfend);
        const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nk), lane);
        int64_t r0 = 0;
        for (; r0 + 4 <= R; r0 += 4) qkf8_block(qf, k, km, nk == 8, s + j, r0, 4, D, TL, bias);
        if (r0 < R) qkf8_block(qf, k, km, nk == 8, s + j, r0, (int)(R - r0), D, TL, bias);
    }
    return 1;
}

/* int8/int4 codes read in place: the shared driver with this level's pieces */
SC_T_AVX2 static void qk_codes_avx2(const float *q, const uint8_t *codes, int kind, float *s, int64_t R, int64_t n,
                                    int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    if (kind == 5) qk_body8(q, codes, D, 5, s, R, n, D, TL, sc, G, pfend);
    else qk_body8(q, codes, D, 2, s, R, n, D, TL, sc, G, pfend);
}
SC_T_AVX2 static void pv_codes_avx2(const float *p, const uint8_t *codes, int kind, float *o, int64_t R, int64_t n,
                                    int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    (void)kind; /* 2: V codes are never stored with zero points in place (q8_mode) */
    pv_body8(p, codes, D, 2, o, R, n, D, TL, sc, G, pfend);
}
SC_T_AVX2 static void qk8_avx2(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                               int64_t j0, int64_t nt, float *s) {
    qk8_driver(c, mode, q, qf, sc, kr, j0, nt, s, unpack4_avx2, qk_codes_avx2, k16_gather_avx2, qk16_f32_avx2);
}
SC_T_AVX2 static void pv8_avx2(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                               float *o) {
    pv8_driver(c, sc, kr, j0, nt, p, o, unpack4_avx2, pv_codes_avx2);
}

/* exp2_neg on 8 lanes: the same polynomial; 2^round(x) built in the exponent
 * field (0 for x <= -127 and NaN, like the scalar version) */
SC_T_AVX2 SC_INL __m256 exp2_neg8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-127.0f);
    const __m256 live = _mm256_cmp_ps(x, lo, _CMP_GT_OQ); /* false for x <= -127 and NaN */
    x = _mm256_max_ps(x, lo);
    const __m256 xi = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_sub_ps(x, xi);
    __m256 p = _mm256_set1_ps(1.5403530393381606e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558146428443e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291076284772e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504108664821580e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022650695910071e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718055994531e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_max_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(xi), _mm256_set1_epi32(127)),
                                       _mm256_setzero_si256());
    return _mm256_and_ps(live, _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23))));
}
SC_T_AVX2 SC_INL __m256 mask8(int64_t n) { /* lanes < n (n may be <= 0 or >= 8) */
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)),
                                                  _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0)));
}
SC_T_AVX2 SC_INL float hmax8(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}
SC_T_AVX2 SC_INL float hadd8(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
/* the softmax step of sm_avx512 (lazy rescaling) on 8 lanes */
SC_T_AVX2 static float sm_avx2(float *sr, int64_t vis, int64_t nt, float *m, float *l, int *bad) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY), big = _mm256_set1_ps(FLT_MAX);
    const __m256 amask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 mx = ninf, nf = _mm256_setzero_ps(); /* nf: lanes that saw |x| > FLT_MAX or NaN */
    int64_t j = 0;
    for (; j + 8 <= vis; j += 8) {
        const __m256 x = _mm256_loadu_ps(sr + j);
        mx = _mm256_max_ps(mx, x);
        nf = _mm256_or_ps(nf, _mm256_cmp_ps(_mm256_and_ps(x, amask), big, _CMP_NLE_UQ));
    }
    if (j < vis) {
        const __m256 kv = mask8(vis - j), x = _mm256_maskload_ps(sr + j, _mm256_castps_si256(kv));
        mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, x, kv));
        nf = _mm256_or_ps(nf, _mm256_and_ps(kv, _mm256_cmp_ps(_mm256_and_ps(x, amask), big, _CMP_NLE_UQ)));
    }
    if (_mm256_movemask_ps(nf)) *bad = 1;
    const float mt = hmax8(mx);
    if (mt == -INFINITY) {
        for (int64_t j = 0; j < nt; j++) sr[j] = 0.0f;
        return -1.0f;
    }
    const float mnew = *m == -INFINITY || mt > *m + SM_LAZY ? (mt > *m ? mt : *m) : *m;
    const float alpha = mnew == *m ? 1.0f : exp2_neg(*m - mnew);
    const __m256 vm = _mm256_set1_ps(mnew);
    __m256 sum = _mm256_setzero_ps();
    for (j = 0; j + 8 <= nt; j += 8) {
        const __m256 kv = mask8(vis - j);
        const __m256 p = _mm256_and_ps(kv, exp2_neg8(_mm256_sub_ps(_mm256_and_ps(kv, _mm256_loadu_ps(sr + j)), vm)));
        sum = _mm256_add_ps(sum, p);
        _mm256_storeu_ps(sr + j, p);
    }
    if (j < nt) {
        const __m256i kn = _mm256_castps_si256(mask8(nt - j));
        const __m256 kv = mask8(vis - j);
        const __m256 p =
            _mm256_and_ps(kv, exp2_neg8(_mm256_sub_ps(_mm256_and_ps(kv, _mm256_maskload_ps(sr + j, kn)), vm)));
        sum = _mm256_add_ps(sum, p);
        _mm256_maskstore_ps(sr + j, kn, p);
    }
    *l = *l * alpha + hadd8(sum);
    *m = mnew;
    return alpha;
}
/* D is a multiple of 16 */
SC_T_AVX2 static void ldq_avx2(const uint16_t *src, float *q0, float *qr, float scale, int64_t D) {
    const __m256 s = _mm256_set1_ps(scale);
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + d)));
        _mm256_storeu_ps(q0 + d, x);
        _mm256_storeu_ps(qr + d, _mm256_mul_ps(x, s));
    }
}

SC_T_AVX2 void sc_attn_item_avx2(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_avx2, pv_avx2, sm_avx2, qkd_avx2, pvd_avx2, ldq_avx2, qk8_avx2, pv8_avx2, NULL);
}
SC_T_AVX2 void sc_attn_reduce_avx2(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }

/* ---- AVX-VNNI: the avx2 level's integer decode scores (qk_vnni256.h),
 * built for AVX-VNNI (VEX) and as its EVEX twin (see sc_cpu_avxvnni_mode) */
/* target("avxvnni") and the assembler's {vex} need GCC >= 11 or LLVM clang
 * >= 12 (Apple clang >= 13); older compilers build the avx2 path for it */
#if (defined(__clang__) && ((!defined(__apple_build_version__) && __clang_major__ >= 12) || \
                            (defined(__apple_build_version__) && __clang_major__ >= 13))) ||  \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define VN_T __attribute__((target("avx2,fma,f16c,avxvnni")))
#define VN(x) x##_avxvnni
#define VN_PFX "%{vex%} " /* braces escaped: GCC asm dialect syntax */
#include "qk_vnni256.h"
#undef VN_T
#undef VN
#undef VN_PFX
#else
void sc_attn_item_avxvnni(const attn_ctx *c, int64_t i, attn_ws *w) { sc_attn_item_avx2(c, i, w); }
#endif
#define VN_T __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")))
#define VN(x) x##_avxvnni_ev
#define VN_PFX ""
#include "qk_vnni256.h"
#undef VN_T
#undef VN
#undef VN_PFX

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
                                  int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    for (int64_t r = 0; r < R; r++) {
        const float *qr = q + r * D;
        for (int64_t j0 = 0; j0 < nt; j0 += 16) {
            const int64_t nk = nt - j0 < 16 ? nt - j0 : 16;
            if (pfend && r == 0)
                for (int kk = 0; kk < nk; kk++)
                    pf_span((const char *)k + kind_bytes(f16, (j0 + kk + PF_KEYS) * ks), kind_bytes(f16, D), pfend);
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

/* lane rr*4 + kk of v -> s[(r0 + rr) * TL + j + kk] for kk < nk: four
 * 128-bit (masked) stores; the scalar copy through a stack array cost ~8
 * instructions per key */
SC_T_AVX512 SC_INL void store44(__m512 v, float *s, int64_t r0, int64_t j, int64_t nk, int64_t TL) {
    const __mmask8 m = (__mmask8)((1u << nk) - 1);
    _mm_mask_storeu_ps(s + r0 * TL + j, m, _mm512_castps512_ps128(v));
    _mm_mask_storeu_ps(s + (r0 + 1) * TL + j, m, _mm512_extractf32x4_ps(v, 1));
    _mm_mask_storeu_ps(s + (r0 + 2) * TL + j, m, _mm512_extractf32x4_ps(v, 2));
    _mm_mask_storeu_ps(s + (r0 + 3) * TL + j, m, _mm512_extractf32x4_ps(v, 3));
}

/* One 4-row x nk-key block of qk44_body */
SC_T_AVX512 SC_INL void qk44_block(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t r0,
                                   int64_t j0, int64_t nk, int64_t D, int64_t TL, const float *sc, int64_t ncell,
                                   const int32_t *cix, const char *pfend) {
    if (pfend && r0 == 0)
        for (int kk = 0; kk < nk; kk++)
            pf_span((const char *)k + kind_bytes(f16, (j0 + kk + PF_KEYS) * ks), kind_bytes(f16, D), pfend);
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
    store44(hsum16(acc), s, r0, j0, nk, TL); /* lane rr*4 + kk */
}

/* Rows in fours: 4 rows x 4 keys of accumulators share every load (8 loads
 * feed 16 FMAs instead of 17 loads feeding 16), and one transposing
 * reduction yields all 16 (row, key) scores. */
SC_T_AVX512 SC_INL void qk44_body(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R,
                                  int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    int64_t r0 = 0;
    for (; r0 + 4 <= R; r0 += 4) {
        int64_t j0 = 0;
        /* whole blocks with the key count a constant (a variable one left a
         * compare-and-branch per key and chunk in the loop) */
        for (; j0 + 4 <= nt; j0 += 4) qk44_block(q, k, ks, f16, s, r0, j0, 4, D, TL, sc, ncell, cix, pfend);
        if (j0 < nt) qk44_block(q, k, ks, f16, s, r0, j0, nt - j0, D, TL, sc, ncell, cix, pfend);
    }
    if (r0 < R) qk16_body(q + r0 * D, k, ks, f16, s + r0 * TL, R - r0, nt, D, TL, sc, G, r0 == 0 ? pfend : NULL);
}

/* One block of pv_body: rows r0..r0+nr, channels c0..c0+16 nv, all nt keys */
SC_T_AVX512 SC_INL void pv_block(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t r0,
                                 int64_t c0, int64_t nr, int64_t nv, int64_t nt, int64_t D, int64_t TL,
                                 const float *sc, int64_t ncell, const int32_t *cix, const char *pfend) {
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
        if (pfend && r0 == 0)
            pf_span((const char *)v + kind_bytes(f16, (j + PF_KEYS) * vs + c0), kind_bytes(f16, 16 * nv), pfend);
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
                                int64_t nt, int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    int64_t ncell = 1;
    int32_t cix[32];
    cell_map(sc, D, G, &ncell, cix);
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 64) {
            const int64_t nv = (D - c0) / 16 < 4 ? (D - c0) / 16 : 4;
            if (nr == 4 && nv == 4) pv_block(p, v, vs, f16, o, r0, c0, 4, 4, nt, D, TL, sc, ncell, cix, pfend);
            else pv_block(p, v, vs, f16, o, r0, c0, nr, nv, nt, D, TL, sc, ncell, cix, pfend);
        }
    }
}

/* fp32 tiles (decoded formats) */
/* 16 rows of 16 dwords -> 16 columns (r[c] = the rows' element c) */
SC_T_AVX512 SC_INL void tr16x16(__m512i *r) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    /* r[4i + k], 128-bit lane L: rows 4i..4i+3 of column 4L + k */
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 4; k++) {
            t[8 * i + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_i32x4(r[8 * i + k], r[8 * i + 4 + k], 0xDD);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88);
        r[k + 8] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0xDD);
    }
}

#define KT_KEYS 32 /* keys per transposed K chunk */
/* n (<= 32) rows of d dwords (stride d) -> [d][32] (keys past n: zeros), for
 * scores with the keys in the lanes (qk_bf16). Tried for the fp32 prefill
 * tiles as well (8 rows x 32 keys, broadcast query elements, no horizontal
 * sums): no measurable change there, so the fp32 path keeps its 4x4 blocks. */
SC_T_AVX512 SC_INL void transpose_keys(const uint32_t *src, int64_t n, int64_t d, uint32_t *dst) {
    for (int64_t kb0 = 0; kb0 < KT_KEYS; kb0 += 16)
        for (int64_t cb = 0; cb < d; cb += 16) {
            const __mmask16 cm = (__mmask16)(d - cb >= 16 ? 0xFFFF : (1u << (d - cb)) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = kb0 + i < n ? _mm512_maskz_loadu_epi32(cm, src + (kb0 + i) * d + cb) : _mm512_setzero_si512();
            tr16x16(r);
            for (int c = 0; c < 16 && cb + c < d; c++) _mm512_store_si512(dst + (cb + c) * KT_KEYS + kb0, r[c]);
        }
}
SC_T_AVX512 static void qk44_avx512(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D,
                                    int64_t TL) {
    qk44_body(q, kt, D, 0, s, R, nt, D, TL, NULL, 1, NULL);
}
SC_T_AVX512 static void pv_avx512(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D,
                                  int64_t TL) {
    pv_body(p, vt, D, 0, o, R, nt, D, TL, NULL, 1, NULL);
}
/* rows read in place */
SC_T_AVX512 static void qkd_avx512(const float *q, const void *k, int64_t ks, int f16, float *s, int64_t R,
                                   int64_t nt, int64_t D, int64_t TL, const char *end) {
    if (f16) qk44_body(q, k, ks, 1, s, R, nt, D, TL, NULL, 1, end);
    else qk44_body(q, k, ks, 0, s, R, nt, D, TL, NULL, 1, end);
}
SC_T_AVX512 static void pvd_avx512(const float *p, const void *v, int64_t vs, int f16, float *o, int64_t R,
                                   int64_t nt, int64_t D, int64_t TL, const char *end) {
    if (f16) pv_body(p, v, vs, 1, o, R, nt, D, TL, NULL, 1, end);
    else pv_body(p, v, vs, 0, o, R, nt, D, TL, NULL, 1, end);
}

/* ---- int8 stores read in place: codes converted in registers, never to a tile */


/* int4 codes unpacked to int8 bytes in an L1 scratch, U4_KEYS keys at a time,
 * for the int8 kernels (ld16 kind 2, the VNNI loops): 64 packed bytes -> 128
 * codes in ~10 instructions, against 6-7 per 16 codes for an in-register
 * nibble unpack (kinds 3/4) in every block that reads them. Symmetric codes
 * (stored + 8) come out signed; zero-point codes as 0..15. The source is
 * prefetched PF_KEYS rows ahead (row_bytes per key) while unpacking: a burst
 * per chunk, but measured worth it (int4 cold decode at 32k: 6.8 -> 6.0 ms
 * without/with, alternating runs). */
SC_T_AVX512 static void unpack4(const uint8_t *src, int8_t *dst, int64_t n, int sym, int64_t row_bytes,
                                const char *pfend) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(sym ? 8 : 0);
    const __m512i ia = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), ib = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    const char *pf = (const char *)src + PF_KEYS * row_bytes;
    for (int64_t i = 0; i < n; i += 128, pf += 64) { /* n codes: a multiple of 16 */
        const int64_t left = n - i;
        if (pfend && pf < pfend) _mm_prefetch(pf, PF_HINT);
        const __m512i b = _mm512_maskz_loadu_epi8(left >= 128 ? ~0ULL : (1ULL << (left / 2)) - 1, src + i / 2);
        const __m512i lo = _mm512_and_si512(b, m4), hi = _mm512_and_si512(_mm512_srli_epi16(b, 4), m4);
        /* per 128-bit lane L: u0 = codes 32L..32L+15, u1 = codes 32L+16..32L+31 */
        const __m512i u0 = _mm512_unpacklo_epi8(lo, hi), u1 = _mm512_unpackhi_epi8(lo, hi);
        const __m512i x0 = _mm512_sub_epi8(_mm512_permutex2var_epi64(u0, ia, u1), eight);
        const __m512i x1 = _mm512_sub_epi8(_mm512_permutex2var_epi64(u0, ib, u1), eight);
        if (left >= 128) {
            _mm512_storeu_si512(dst + i, x0);
            _mm512_storeu_si512(dst + i + 64, x1);
        } else {
            _mm512_mask_storeu_epi8(dst + i, left >= 64 ? ~0ULL : (1ULL << left) - 1, x0);
            if (left > 64) _mm512_mask_storeu_epi8(dst + i + 64, (1ULL << (left - 64)) - 1, x1);
        }
    }
}

/* fp32 scores over k16 codes (SC_LAYOUT_K16) read in place: nr (<= 4) rows x
 * 16 keys, the keys in the lanes. Each code of a word is shifted into the
 * low bits of its lane (int8: sign- or zero-extended by two shifts; int4: a
 * shift and a mask), converted and multiplied by the broadcast q'x s of its
 * channel: no reduction tree, no row gather. Symmetric int4 codes (stored
 * + 8) take the 8 x sum(qf) off at the end (the rows path subtracts per code:
 * the scores agree to fp32 rounding, not bitwise). */
SC_T_AVX512 SC_INL void qkf16_block(const float *qf, const uint8_t *k, __mmask16 km, int kind, float *s, int64_t r0,
                                    const int nr, int64_t D, int64_t TL, const float *bias) {
    __m512 ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm512_setzero_ps();
    if (kind == 2 || kind == 5) {
#pragma GCC unroll 2
        for (int64_t w = 0; w < D / 4; w++) {
            const __m512i v = _mm512_maskz_loadu_epi32(km, k + 64 * w);
            __m512 x[4];
            for (int i = 0; i < 4; i++) {
                const __m512i u = i == 3 ? v : _mm512_slli_epi32(v, 24 - 8 * i);
                x[i] = _mm512_cvtepi32_ps(kind == 2 ? _mm512_srai_epi32(u, 24) : _mm512_srli_epi32(u, 24));
            }
            for (int rr = 0; rr < nr; rr++) {
                const float *qr = qf + (r0 + rr) * D + 4 * w;
                ae[rr] = _mm512_fmadd_ps(x[0], _mm512_set1_ps(qr[0]), ae[rr]);
                ao[rr] = _mm512_fmadd_ps(x[1], _mm512_set1_ps(qr[1]), ao[rr]);
                ae[rr] = _mm512_fmadd_ps(x[2], _mm512_set1_ps(qr[2]), ae[rr]);
                ao[rr] = _mm512_fmadd_ps(x[3], _mm512_set1_ps(qr[3]), ao[rr]);
            }
        }
    } else {
        const __m512i m4 = _mm512_set1_epi32(0xF);
#pragma GCC unroll 2
        for (int64_t w = 0; w < D / 8; w++) {
            const __m512i v = _mm512_maskz_loadu_epi32(km, k + 64 * w);
            __m512 x[8];
            for (int i = 0; i < 8; i++) /* channel 8w + i: byte i / 2, nibble i % 2 */
                x[i] = _mm512_cvtepi32_ps(_mm512_and_si512(i ? _mm512_srli_epi32(v, 4 * i) : v, m4));
            for (int rr = 0; rr < nr; rr++) {
                const float *qr = qf + (r0 + rr) * D + 8 * w;
                for (int i = 0; i < 8; i += 2) {
                    ae[rr] = _mm512_fmadd_ps(x[i], _mm512_set1_ps(qr[i]), ae[rr]);
                    ao[rr] = _mm512_fmadd_ps(x[i + 1], _mm512_set1_ps(qr[i + 1]), ao[rr]);
                }
            }
        }
    }
    for (int rr = 0; rr < nr; rr++)
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL, km,
                              _mm512_sub_ps(_mm512_add_ps(ae[rr], ao[rr]), _mm512_set1_ps(bias[r0 + rr])));
}
SC_T_AVX512 static int qk16_f32(const float *qf, const uint8_t *row0, int64_t jt, int64_t n, int kind, float *s,
                                int64_t R, int64_t D, int64_t TL, const char *pfend) {
    const int64_t rb = kind == 2 || kind == 5 ? D : D / 2;
    float bias[Q8_MAX_ROWS] = {0};
    if (kind == 3)
        for (int64_t r = 0; r < R; r++) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t d = 0; d < D; d += 16) a = _mm512_add_ps(a, _mm512_loadu_ps(qf + r * D + d));
            bias[r] = 8.0f * _mm512_reduce_add_ps(a);
        }
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t nk = n - j < 16 ? n - j : 16;
        const __mmask16 km = (__mmask16)(nk >= 16 ? 0xFFFF : (1u << nk) - 1);
        const uint8_t *k = row0 + (jt + j) * rb;
        if (pfend) pf_span((const char *)k + PF_KEYS * rb, 16 * rb, pfend);
        int64_t r0 = 0;
        for (; r0 + 4 <= R; r0 += 4) qkf16_block(qf, k, km, kind, s + j, r0, 4, D, TL, bias);
        if (r0 < R) qkf16_block(qf, k, km, kind, s + j, r0, (int)(R - r0), D, TL, bias);
    }
    return 1;
}

SC_T_AVX512 static void qk_codes_avx512(const float *q, const uint8_t *codes, int kind, float *s, int64_t R,
                                      int64_t n, int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    if (kind == 5) qk44_body(q, codes, D, 5, s, R, n, D, TL, sc, G, pfend);
    else qk44_body(q, codes, D, 2, s, R, n, D, TL, sc, G, pfend);
}
SC_T_AVX512 static void pv_codes_avx512(const float *p, const uint8_t *codes, int kind, float *o, int64_t R,
                                      int64_t n, int64_t D, int64_t TL, const float *sc, int64_t G, const char *pfend) {
    (void)kind; /* 2 (see pv_codes_avx2) */
    pv_body(p, codes, D, 2, o, R, n, D, TL, sc, G, pfend);
}
/* sc_k16_gather by 16 x 16 dword transposes (tr16x16: 64 shuffles per 16
 * keys and 16 words); lanes past the last key are neither read nor written */
SC_T_AVX512 static void k16_gather_avx512(const uint8_t *row0, int64_t j, int64_t m, int64_t rb, uint8_t *rows) {
    const int64_t W = rb / 4;
    for (int64_t b = 0; b < m; b += 16) {
        const int64_t nk = m - b < 16 ? m - b : 16;
        const __mmask16 km = (__mmask16)(nk >= 16 ? 0xFFFF : (1u << nk) - 1);
        const uint8_t *blk = row0 + (j + b) * rb;
        for (int64_t w0 = 0; w0 < W; w0 += 16) {
            const int64_t nw = W - w0 < 16 ? W - w0 : 16;
            const __mmask16 wm = (__mmask16)(nw >= 16 ? 0xFFFF : (1u << nw) - 1);
            __m512i r[16]; /* r[i]: word w0 + i of the 16 keys; transposed, r[k]: words w0.. of key k */
            for (int i = 0; i < 16; i++)
                r[i] = i < nw ? _mm512_maskz_loadu_epi32(km, blk + 64 * (w0 + i)) : _mm512_setzero_si512();
            tr16x16(r);
            for (int64_t k = 0; k < nk; k++) _mm512_mask_storeu_epi32(rows + (b + k) * rb + 4 * w0, wm, r[k]);
        }
    }
}
SC_T_AVX512 static void qk8_avx512(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                                   int64_t j0, int64_t nt, float *s) {
    qk8_driver(c, mode, q, qf, sc, kr, j0, nt, s, unpack4, qk_codes_avx512, k16_gather_avx512, qk16_f32);
}
SC_T_AVX512 static void pv8_avx512(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                                   float *o) {
    pv8_driver(c, sc, kr, j0, nt, p, o, unpack4, pv_codes_avx512);
}

/* exp2_neg on 16 lanes: same polynomial, 2^round(x) applied with scalef
 * (valid up to x = 127; the AMX softmax passes x <= SM_LAZY) */
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

SC_T_AVX512 static float sm_avx512(float *sr, int64_t vis, int64_t nt, float *m, float *l, int *bad) {
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mx = ninf;
    __mmask16 nf = 0; /* visible NaN / +-Inf (fpclass 0x99: QNaN, SNaN, +Inf, -Inf) */
    for (int64_t j = 0; j < vis; j += 16) {
        const __mmask16 k = (__mmask16)(vis - j >= 16 ? 0xFFFF : (1u << (vis - j)) - 1);
        const __m512 x = _mm512_mask_loadu_ps(ninf, k, sr + j);
        mx = _mm512_max_ps(mx, x);
        nf |= _mm512_mask_fpclass_ps_mask(k, x, 0x99);
    }
    if (nf) *bad = 1;
    const float mt = _mm512_reduce_max_ps(mx);
    if (mt == -INFINITY) {
        for (int64_t j = 0; j < nt; j++) sr[j] = 0.0f;
        return -1.0f;
    }
    /* lazy rescaling (see mx_sm): the reference moves only past SM_LAZY */
    const float mnew = *m == -INFINITY || mt > *m + SM_LAZY ? (mt > *m ? mt : *m) : *m;
    const float alpha = mnew == *m ? 1.0f : exp2_neg(*m - mnew);
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

SC_T_AVX512 void sc_attn_item_avx512(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_avx512,
                   pv8_avx512, NULL);
}
SC_T_AVX512 void sc_attn_reduce_avx512(const attn_ctx *c, int64_t i, attn_ws *w) { attn_reduce_body(c, i, w); }

/* ---- AVX512-VNNI: decode QK^T and PV on int8 codes in integer arithmetic --
 * Both under sc_attention_args.precision SC_PRECISION_BF16 (pv8_vnni below
 * for PV). Scores: for int8 K with
 * per-channel scales over token groups (q8_mode 1): per token group each
 * query row times the group's scales, qf, is rounded to int16, qw =
 * round(qf * 32767 / max|qf|) (|error| <= 2^-16 max|qf|), and VPDPWSSD sums
 * qw x sign-extended codes exactly in int32: per 32 codes and row one
 * instruction instead of two fp32 FMAs, and per code one widening instead of
 * widening plus conversion. The score is (max|qf| / 32767) * sum.
 * Why only under "bf16": the error is relative to the row's largest element,
 * 2-5e-5 rel L1 on the parity sweep against the 2e-5 the fp32 setting
 * promises (a hi/lo int16 split restores it but costs what it saves).
 * int8 x int8 with one int8 q, as in SageAttention, is cheaper still but
 * misses the int8 accuracy targets (see attention_arm64.c); it is taken for
 * int4 codes under SC_PRECISION_INT8 (qkb44_block4, pv4b_vnni below). */
#define SC_T_VNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))

/* acc += pairwise int16 products of a and b. Inline asm with the accumulator
 * as an in/out operand: with _mm512_dpwssd_epi32, GCC 12 copied every
 * accumulator of the 16-accumulator loops to a fresh register (and spilled
 * some) each iteration. */
#define SC_DPWSSD(acc, a, b) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))

/* 16 int32 vectors -> one vector whose lane k is the sum of a[k]'s lanes */
SC_T_AVX512 SC_INL __m512i hsum16i(const __m512i *a) {
    __m512i b[8], c4[4];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        c4[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]), _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
    const __m512i e0 = _mm512_add_epi32(_mm512_shuffle_i32x4(c4[0], c4[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_i32x4(c4[0], c4[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i e1 = _mm512_add_epi32(_mm512_shuffle_i32x4(c4[2], c4[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                        _mm512_shuffle_i32x4(c4[2], c4[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(e0, e1, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(e0, e1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* 32 codes from channel ch as int16 (a 16-channel tail zero-extended) */
SC_T_VNNI SC_INL __m512i ldk16(const int8_t *k, int64_t ch, int64_t D) {
    if (ch + 32 <= D) return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(k + ch)));
    return _mm512_cvtepi8_epi16(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(k + ch))));
}
SC_T_VNNI SC_INL __m512i ldq16(const int16_t *q, int64_t ch, int64_t D) {
    return _mm512_maskz_loadu_epi16(ch + 32 <= D ? 0xFFFFFFFFu : 0xFFFFu, q + ch);
}

/* 32 floats (a: elements 0-15, b: 16-31) times inv, rounded and saturated to
 * int16 in order: vpackssdw + vpermq for 32 values against two vpmovsdw
 * (two uops each) */
SC_T_VNNI SC_INL __m512i round16x2(__m512 a, __m512 b, __m512 inv) {
    const __m512i p = _mm512_packs_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), _mm512_cvtps_epi32(_mm512_mul_ps(b, inv)));
    return _mm512_permutexvar_epi64(_mm512_set_epi64(7, 5, 3, 1, 6, 4, 2, 0), p);
}

/* 4 rows x nk (<= 4) keys: every code widened once for the 4 rows; whole
 * 32-channel chunks, then a 16-channel tail (d80 etc.) outside the loop */
SC_T_VNNI SC_INL void qkw44_step(const int16_t *qw, const int8_t *k, int64_t r0, int64_t j, int64_t nk, int64_t D,
                                 int64_t ch, int tail, __m512i *acc) {
    __m512i kv[4];
    for (int kk = 0; kk < 4; kk++)
        kv[kk] = kk < nk ? (tail ? ldk16(k + (j + kk) * D, ch, D)
                                 : _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(k + (j + kk) * D + ch))))
                         : _mm512_setzero_si512();
    for (int rr = 0; rr < 4; rr++) {
        const __m512i qv = tail ? ldq16(qw + (r0 + rr) * D, ch, D) : _mm512_loadu_si512(qw + (r0 + rr) * D + ch);
        for (int kk = 0; kk < 4; kk++) SC_DPWSSD(acc[rr * 4 + kk], qv, kv[kk]);
    }
}
SC_T_VNNI SC_INL void qkw44_block(const int16_t *qw, __m512 sc, const int8_t *k, float *s, int64_t r0,
                                  int64_t j, int64_t nk, int64_t D, int64_t TL, const char *pfend) {
    if (r0 == 0 && pfend) pf_span((const char *)k + (j + PF_KEYS) * D, nk * D, pfend); /* the block's rows, ahead */
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
    const int64_t D32 = D & ~(int64_t)31;
#pragma GCC unroll 8
    for (int64_t ch = 0; ch < D32; ch += 32) qkw44_step(qw, k, r0, j, nk, D, ch, 0, acc);
    if (D32 < D) qkw44_step(qw, k, r0, j, nk, D, D32, 1, acc);
    store44(_mm512_mul_ps(_mm512_cvtepi32_ps(hsum16i(acc)), sc), s, r0, j, nk, TL); /* lane rr*4 + kk */
}

/* int4 codes read in place (kinds 3, 4; D a multiple of 64): 32 packed
 * bytes = 64 codes zero-extended to words, then the low nibbles (the even
 * channels) and the high ones (odd channels) split by a mask and a shift:
 * 3 operations per 64 codes, against ~10 to unpack them to bytes (unpack4),
 * their store and reload, and 2 widenings. The queries are stored per
 * 64-channel block as [even 32 | odd 32] to match (see qk8_vnni).
 * Symmetric codes (kind 3) are stored + 8. */
SC_T_VNNI SC_INL void qkw44_step4(const int16_t *qw, const uint8_t *k, int64_t r0, int64_t j, int64_t nk, int64_t D,
                                  int64_t ch, int sym, __m512i *acc) {
    const __m512i m4 = _mm512_set1_epi16(0x0F), off = _mm512_set1_epi16(sym ? 8 : 0);
    __m512i lo[4], hi[4];
    for (int kk = 0; kk < 4; kk++) {
        if (kk < nk) {
            const __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(k + (j + kk) * (D / 2) + ch / 2)));
            lo[kk] = _mm512_sub_epi16(_mm512_and_si512(w, m4), off);
            hi[kk] = _mm512_sub_epi16(_mm512_srli_epi16(w, 4), off);
        } else {
            lo[kk] = hi[kk] = _mm512_setzero_si512();
        }
    }
    for (int rr = 0; rr < 4; rr++) {
        const __m512i qe = _mm512_loadu_si512(qw + (r0 + rr) * D + ch), qo = _mm512_loadu_si512(qw + (r0 + rr) * D + ch + 32);
        for (int kk = 0; kk < 4; kk++) {
            SC_DPWSSD(acc[rr * 4 + kk], qe, lo[kk]);
            SC_DPWSSD(acc[rr * 4 + kk], qo, hi[kk]);
        }
    }
}
SC_T_VNNI SC_INL void qkw44_block4(const int16_t *qw, __m512 sc, const uint8_t *k, float *s, int64_t r0, int64_t j,
                                   int64_t nk, int64_t D, int64_t TL, int sym, const char *pfend) {
    if (r0 == 0 && pfend) pf_span((const char *)k + (j + PF_KEYS) * (D / 2), nk * (D / 2), pfend);
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int64_t ch = 0; ch < D; ch += 64) qkw44_step4(qw, k, r0, j, nk, D, ch, sym, acc);
    store44(_mm512_mul_ps(_mm512_cvtepi32_ps(hsum16i(acc)), sc), s, r0, j, nk, TL); /* lane rr*4 + kk */
}

/* 8-bit operands (precision="int8", SageAttention's precision class) for
 * int4 K read in place: VPDPBUSD multiplies 64 unsigned codes by 64 int8
 * query values per instruction, twice VPDPWSSD's 32. The codes need no
 * sign: symmetric ones are stored + 8 (the 8 x sum(q') comes off the sum),
 * asymmetric ones are the unsigned codes themselves (zero points: zp_bias).
 * 32 packed bytes are broadcast to both halves of a vector and the high half
 * shifted right by 4: one vector = [even channels | odd channels] of a
 * 64-channel block, the order q' is stored in. q' = round(q x s x 127 /
 * max|q x s|) per row and token group (2^-8 of the row's largest element):
 * for int4 codes that stays well under the codes' own error (accuracy test
 * in tests/test_accuracy.py); for int8 codes it would not (cosine 0.9991
 * against the 0.9999 target), so int8 K keeps 16-bit q' at every precision. */
#define SC_DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
/* blk (a constant: 64 or 128) is the channel block q' is stored in, [even |
 * odd] (round8_row). blk 64: 32 packed bytes broadcast to both halves of a
 * vector and the upper half shifted right by 4 under a mask. blk 128 (D a
 * multiple of 128): a whole 64-byte row per load, low nibbles = the 64 even
 * channels, high = the 64 odd ones -- no broadcast, no masked shift (2 of
 * the 4 non-product operations per key and 64 channels; the block runs at
 * ~2 cycles per product, so the work around the products sets its speed:
 * alone 4.8-5.0 -> 4.4 ns per key, bench/block_cycles.c). */
SC_T_VNNI SC_INL void qkb44_block4(const int8_t *qb, __m512 sc, __m512i bias, __m512 fbias, const uint8_t *k, float *s,
                                   int64_t r0, int64_t j, int64_t nk, int64_t D, int64_t TL, const char *pfend,
                                   const int blk) {
    if (r0 == 0 && pfend) pf_span((const char *)k + (j + PF_KEYS) * (D / 2), nk * (D / 2), pfend);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int64_t ch = 0; ch < D; ch += blk) {
        __m512i lo[4], hi[4];
        for (int kk = 0; kk < 4; kk++) {
            if (kk >= nk) {
                lo[kk] = hi[kk] = _mm512_setzero_si512();
            } else if (blk == 128) {
                const __m512i w = _mm512_loadu_si512(k + (j + kk) * (D / 2) + ch / 2);
                lo[kk] = _mm512_and_si512(w, m4);
                hi[kk] = _mm512_and_si512(_mm512_srli_epi16(w, 4), m4);
            } else {
                const __m512i w = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(k + (j + kk) * (D / 2) + ch / 2)));
                lo[kk] = _mm512_and_si512(_mm512_mask_srli_epi16(w, (__mmask32)0xFFFF0000u, w, 4), m4);
            }
        }
        for (int rr = 0; rr < 4; rr++) {
            const __m512i qe = _mm512_loadu_si512(qb + (r0 + rr) * D + ch);
            for (int kk = 0; kk < 4; kk++) SC_DPBUSD(acc[rr * 4 + kk], lo[kk], qe);
            if (blk == 128) {
                const __m512i qo = _mm512_loadu_si512(qb + (r0 + rr) * D + ch + 64);
                for (int kk = 0; kk < 4; kk++) SC_DPBUSD(acc[rr * 4 + kk], hi[kk], qo);
            }
        }
    }
    store44(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(hsum16i(acc), bias)), sc, fbias), s, r0, j, nk, TL);
}
/* stmt with Dv the head dim D, a literal for the common 128: the score
 * blocks' broadcast q' operands then take constant displacements from one
 * row pointer (with D a variable GCC computed each product's address) */
#define WITH_CONST_D(D, Dv, stmt)        \
    do {                                 \
        if ((D) == 128) {                \
            const int64_t Dv = 128;      \
            stmt;                        \
        } else {                         \
            const int64_t Dv = (D);      \
            stmt;                        \
        }                                \
    } while (0)
/* acc += a (u8) . the int8 quadruple at p broadcast to every lane */
#define SC_DPBUSD_B(acc, a, p) \
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*(const int32_t *)(p)))
/* int4 K in the k16 layout (SC_LAYOUT_K16) at precision="int8": 4 rows x 16
 * keys, the keys in the lanes. Word w of a 16-key block is one 64-byte
 * vector holding packed bytes 4w..4w+3 of every key: its low nibbles are
 * channels 8w, 8w+2, 8w+4, 8w+6, its high nibbles 8w+1, 8w+3, 8w+5, 8w+7 --
 * q' bytes 8w..8w+3 and 8w+4..8w+7 (round8_k16). Each VPDPBUSD takes one
 * broadcast q' quadruple and yields 16 partial scores: no reduction tree
 * (qkb44_block4 spends 45 operations per 16 scores on it), 3 operations per
 * word for the nibbles. Two accumulators per row (even, odd). row0: the kv
 * row's codes; jt: the block's first key (a multiple of 16) counted in the
 * kv row; nk <= 16 keys, loaded under a mask (no byte past the last key is
 * read). */
SC_T_VNNI SC_INL void qkb16_block(const int8_t *qb, const float *ar, const int32_t *bias, const float *fb,
                                  const uint8_t *row0, int64_t jt, int64_t nk, float *s, int64_t r0, int64_t D,
                                  int64_t TL, const char *pfend, const int nr) {
    const int64_t rb = D / 2;
    const uint8_t *k = row0 + jt * rb;
    const char *pf = r0 == 0 ? pf_ahead(k, PF_KEYS * rb, 16 * rb, pfend) : NULL;
    const char *pn = r0 == 0 ? pf_ahead(k, PF_NEAR * rb, 16 * rb, pfend) : NULL; /* into L1 */
    const __mmask16 km = (__mmask16)(nk >= 16 ? 0xFFFF : (1u << nk) - 1);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int64_t w = 0; w < rb / 4; w++) {
        if (pf) _mm_prefetch(pf + 64 * w, PF_HINT);
        if (pn) _mm_prefetch(pn + 64 * w, _MM_HINT_T0);
        const __m512i v = _mm512_maskz_loadu_epi32(km, k + 64 * w);
        const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        for (int rr = 0; rr < nr; rr++) {
            const int8_t *qe = qb + (r0 + rr) * D + 8 * w;
            SC_DPBUSD_B(ae[rr], lo, qe);
            SC_DPBUSD_B(ao[rr], hi, qe + 4);
        }
    }
    for (int rr = 0; rr < nr; rr++) {
        const __m512i acc = _mm512_sub_epi32(_mm512_add_epi32(ae[rr], ao[rr]), _mm512_set1_epi32(bias[r0 + rr]));
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL, km,
                              _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(ar[r0 + rr]),
                                              _mm512_set1_ps(fb[r0 + rr])));
    }
}

/* acc += a . the int16 pair at p broadcast to every lane */
#define SC_DPWSSD_B(acc, a, p) \
    __asm__("vpdpwssd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*(const int32_t *)(p)))
/* int8 K in the k16 layout at precision="bf16": 4 rows x 16 keys, the keys
 * in the lanes. Word w of a 16-key block holds channels 4w..4w+3 of every
 * key; its even bytes sign-extended to words (two shifts) are channels 4w,
 * 4w + 2, its odd bytes (one shift) 4w + 1, 4w + 3, against q' stored with
 * each 4 channels as [0, 2, 1, 3] (qw, see qk8_vnni): one broadcast pair
 * each, no reduction tree (hsum16i: 45 operations per 16 scores). */
SC_T_VNNI SC_INL void qkw16_block(const int16_t *qw, const float *ar, const uint8_t *row0, int64_t jt, int64_t nk,
                                  float *s, int64_t r0, int64_t D, int64_t TL, const char *pfend, const int nr) {
    const uint8_t *k = row0 + jt * D;
    const char *pf = r0 == 0 ? pf_ahead(k, PF_KEYS * D, 16 * D, pfend) : NULL;
    const __mmask16 km = (__mmask16)(nk >= 16 ? 0xFFFF : (1u << nk) - 1);
    __m512i ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int64_t w = 0; w < D / 4; w++) {
        if (pf) _mm_prefetch(pf + 64 * w, PF_HINT);
        const __m512i v = _mm512_maskz_loadu_epi32(km, k + 64 * w);
        const __m512i lo = _mm512_srai_epi16(_mm512_slli_epi16(v, 8), 8), hi = _mm512_srai_epi16(v, 8);
        for (int rr = 0; rr < nr; rr++) {
            const int16_t *qe = qw + (r0 + rr) * D + 4 * w;
            SC_DPWSSD_B(ae[rr], lo, qe);
            SC_DPWSSD_B(ao[rr], hi, qe + 2);
        }
    }
    for (int rr = 0; rr < nr; rr++)
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL, km,
                              _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(ae[rr], ao[rr])),
                                            _mm512_set1_ps(ar[r0 + rr])));
}

/* int4 K in the k16 layout at precision="bf16": 4 rows x 16 keys, the keys
 * in the lanes. Word w (8 channels of 16 keys) gives four vectors of int16
 * pairs by shifts and one mask each: channels (8w, 8w+4), (8w+2, 8w+6),
 * (8w+1, 8w+5), (8w+3, 8w+7), against q' stored as [0, 4, 2, 6, 1, 5, 3, 7]
 * per 8 channels (qk8_vnni); symmetric codes (stored + 8) minus 8. */
SC_T_VNNI SC_INL void qkw16_block4(const int16_t *qw, const float *ar, const uint8_t *row0, int64_t jt, int64_t nk,
                                   float *s, int64_t r0, int64_t D, int64_t TL, int sym, const char *pfend) {
    const int64_t rb = D / 2;
    const uint8_t *k = row0 + jt * rb;
    const char *pf = r0 == 0 ? pf_ahead(k, PF_KEYS * rb, 16 * rb, pfend) : NULL;
    const __mmask16 km = (__mmask16)(nk >= 16 ? 0xFFFF : (1u << nk) - 1);
    const __m512i m = _mm512_set1_epi32(0x000F000F), off = _mm512_set1_epi16(sym ? 8 : 0);
    __m512i ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int64_t w = 0; w < rb / 4; w++) {
        if (pf) _mm_prefetch(pf + 64 * w, PF_HINT);
        const __m512i v = _mm512_maskz_loadu_epi32(km, k + 64 * w);
        const __m512i x[4] = {_mm512_sub_epi16(_mm512_and_si512(v, m), off),
                              _mm512_sub_epi16(_mm512_and_si512(_mm512_srli_epi16(v, 8), m), off),
                              _mm512_sub_epi16(_mm512_and_si512(_mm512_srli_epi32(v, 4), m), off),
                              _mm512_sub_epi16(_mm512_and_si512(_mm512_srli_epi32(v, 12), m), off)};
        for (int rr = 0; rr < 4; rr++) {
            const int16_t *qe = qw + (r0 + rr) * D + 8 * w;
            SC_DPWSSD_B(ae[rr], x[0], qe);
            SC_DPWSSD_B(ae[rr], x[1], qe + 2);
            SC_DPWSSD_B(ao[rr], x[2], qe + 4);
            SC_DPWSSD_B(ao[rr], x[3], qe + 6);
        }
    }
    for (int rr = 0; rr < 4; rr++)
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL, km,
                              _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(ae[rr], ao[rr])),
                                            _mm512_set1_ps(ar[r0 + rr])));
}

/* q' of one row (y: q x s per 16 channels) as int8, [even | odd] per block of
 * blk (64 or 128) channels; returns sum(q') */
SC_T_VNNI SC_INL int32_t round8_row(const __m512 *y, __m512 inv, int8_t *dst, int64_t D, const int blk) {
    const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    __m512i sum = _mm512_setzero_si512();
    for (int64_t ch = 0; ch < D; ch += blk) {
        const __m512 *b = y + ch / 16;
        for (int h = 0; h < blk / 32; h++) { /* 32 channels: 16 even to the first half, 16 odd to the second */
            const __m512 v[2] = {_mm512_permutex2var_ps(b[2 * h], ie, b[2 * h + 1]),
                                 _mm512_permutex2var_ps(b[2 * h], io, b[2 * h + 1])};
            for (int u = 0; u < 2; u++) {
                const __m512i x = _mm512_cvtps_epi32(_mm512_mul_ps(v[u], inv)); /* |x| <= 127 */
                sum = _mm512_add_epi32(sum, x);
                _mm_storeu_si128((__m128i *)(dst + ch + u * (blk / 2) + 16 * h), _mm512_cvtepi32_epi8(x));
            }
        }
    }
    return _mm512_reduce_add_epi32(sum);
}

/* q' of 64 channels for qkb16_block (y: q x s, 16 channels per vector):
 * rounded to int8, natural channel order but each 8 channels as [0, 2, 4,
 * 6, 1, 3, 5, 7] (the nibble order of a k16 word); adds the codes to *sum
 * when sum. Two packs (lanes interleaved), one dword permute back to
 * channel order, one in-lane byte shuffle: 4 operations per 64 channels
 * where round8_row's [even | odd] layout takes a float permute and a
 * narrowing store per 16. */
SC_T_VNNI SC_INL __m512i round8_k16(const __m512 *y, __m512 inv, __m512i *sum) {
    __m512i x[4];
    for (int i = 0; i < 4; i++) x[i] = _mm512_cvtps_epi32(_mm512_mul_ps(y[i], inv)); /* |x| <= 127 */
    if (sum) *sum = _mm512_add_epi32(*sum, _mm512_add_epi32(_mm512_add_epi32(x[0], x[1]), _mm512_add_epi32(x[2], x[3])));
    /* dword 4l + i of the packed bytes: channels 16i + 4l .. 16i + 4l + 3 */
    const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(x[0], x[1]), _mm512_packs_epi32(x[2], x[3]));
    const __m512i nat = _mm512_permutexvar_epi32(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), b);
    return _mm512_shuffle_epi8(nat, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15)));
}

/* Scores of int4 K in the k16 layout at precision="int8" (qk8_vnni's case
 * for it, D a multiple of 16 and rows in fours; past the last whole 64
 * channels q' is rounded from zero-padded vectors and stored under a mask),
 * with D a literal for d128 (WITH_CONST_D): per token group the K scales (and zero
 * points), each row's q' = round(q x s x 127 / max|q x s|), its scale and
 * the zero points' q . m[g] (or 8 sum(q') for symmetric codes), then the
 * 16-key blocks. The per-group work is ~10-16% of the int4 decode: its
 * multiplies share the product pipe (docs/benchmarks.md, session 17). */
SC_T_VNNI SC_INL void qk4b_k16(const attn_ctx *c, const float *q, float *sc, int64_t kr, int64_t j0, int64_t nt,
                               float *s, int8_t *qb, const int64_t D) {
    const sc_format *f = c->a->kf;
    const sc_store *st = c->a->k;
    const int sym = code_kind(f) == 3, sf32 = f->scale_dtype == SC_DTYPE_F32;
    const int64_t R = c->rows, TL = c->tile, T = f->token_group, rb = D / 2;
    const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    float ar[ROWS_MAX], fb[ROWS_MAX] = {0}, zf[256] __attribute__((aligned(64)));
    int32_t bias[ROWS_MAX] = {0}; /* decode items and, at "int8", prefill items (c->k_q8_rows) */
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t cell0 = group_scales(c, st, sf32, kr, g, T, D, sc, 0); /* its prefetch: group_lines_pf, per block */
        if (!sym) { /* the zero points m[g], added by the score stores' FMA as q . m[g] */
            const sc_store zs = {.scales = st->zeros};
            store_scales(c, &zs, sf32, cell0, D, zf);
        }
        for (int64_t r = 0; r < R; r++) {
            __m512 y[16], mx[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int64_t ch = 0; ch < D; ch += 16) { /* vrangeps 0x0B: the larger magnitude, sign cleared */
                y[ch / 16] = _mm512_mul_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_loadu_ps(sc + ch));
                mx[(ch / 16) & 1] = _mm512_range_ps(mx[(ch / 16) & 1], y[ch / 16], 0x0B);
            }
            for (int64_t ch = D; ch % 64; ch += 16) y[ch / 16] = _mm512_setzero_ps(); /* D = 80, 96...: zero q' */
            const float m = _mm512_reduce_max_ps(_mm512_max_ps(mx[0], mx[1]));
            ar[r] = m * (1.0f / 127.0f);
            const __m512 inv = _mm512_set1_ps(m > 0.0f ? 127.0f / m : 0.0f);
            __m512i sum = _mm512_setzero_si512();
            for (int64_t ch = 0; ch < D; ch += 64) /* the last 16-48 channels of D = 80, 96... under a mask */
                _mm512_mask_storeu_epi8(qb + r * D + ch, D - ch >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (D - ch)) - 1,
                                        round8_k16(y + ch / 16, inv, sym ? &sum : NULL));
            if (sym) { /* symmetric codes are stored + 8: 8 sum(q') off each sum */
                bias[r] = 8 * _mm512_reduce_add_epi32(sum);
            } else { /* one chain, as the rows layout's path: the same scores to the bit */
                __m512 bz = _mm512_setzero_ps();
                for (int64_t ch = 0; ch < D; ch += 16)
                    bz = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_load_ps(zf + ch), bz);
                fb[r] = _mm512_reduce_add_ps(bz);
            }
        }
        for (int64_t r0 = 0; r0 < R; r0 += 4) /* rows in fours, the last 1-3 alone (MHA: 1) */
            for (int64_t j = 0; j < n; j += 16) { /* j0 + t: a multiple of 16 */
                const int64_t jt = j0 + t + j, nk = n - j < 16 ? n - j : 16;
                if (r0 == 0) group_lines_pf(st, sf32, kr, g, T, D, (jt % T) / 16);
                switch (R - r0 < 4 ? R - r0 : 4) { /* the row count a constant in each instance */
                case 1: qkb16_block(qb, ar, bias, fb, row0, jt, nk, s + t + j, r0, D, TL, pfend, 1); break;
                case 2: qkb16_block(qb, ar, bias, fb, row0, jt, nk, s + t + j, r0, D, TL, pfend, 2); break;
                case 3: qkb16_block(qb, ar, bias, fb, row0, jt, nk, s + t + j, r0, D, TL, pfend, 3); break;
                default: qkb16_block(qb, ar, bias, fb, row0, jt, nk, s + t + j, r0, D, TL, pfend, 4); break;
                }
            }
        t += n;
    }
}

/* one row x 16 keys (rows past the last multiple of 4) */
SC_T_VNNI SC_INL void qkw16_row(const int16_t *qw, float a, const int8_t *k, float *s, int64_t j, int64_t nk,
                                int64_t D, const char *pfend) {
    if (pfend)
        for (int kk = 0; kk < nk; kk++) pf_span((const char *)k + (j + kk + PF_KEYS) * D, D, pfend);
    __m512i acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t ch = 0; ch < D; ch += 32) {
        const __m512i qv = ldq16(qw, ch, D);
        for (int kk = 0; kk < 16; kk++)
            if (kk < nk) SC_DPWSSD(acc[kk], qv, ldk16(k + (j + kk) * D, ch, D));
    }
    _mm512_mask_storeu_ps(s + j, (__mmask16)((1u << nk) - 1),
                          _mm512_mul_ps(_mm512_cvtepi32_ps(hsum16i(acc)), _mm512_set1_ps(a)));
}

SC_T_VNNI static void qk8_vnni(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr,
                               int64_t j0, int64_t nt, float *s) {
    const sc_format *f = c->a->kf;
    const int kind = code_kind(f); /* int8 (2), int4 (3, 4: unpacked to bytes first) */
    if (mode != 1 || kind == 5 || c->a->precision < SC_PRECISION_BF16 || c->D > 256) { /* y[16] below */
        qk8_avx512(c, mode, q, qf, sc, kr, j0, nt, s);
        return;
    }
    const sc_store *st = c->a->k;
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group, rb = kind == 2 ? D : D / 2;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32;
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    int8_t u4[U4_KEYS * 256] __attribute__((aligned(64)));
    uint8_t k16r[U4_KEYS * 256] __attribute__((aligned(64))); /* SC_LAYOUT_K16 codes as rows (code_rows) */
    const int k16 = f->layout == SC_LAYOUT_K16;
    /* int8 k16 codes with 4-row blocks: keys in the lanes (qkw16_block), q' [0, 2, 1, 3] per 4 channels */
    const int w16 = k16 && kind == 2; /* rows in fours, the last 1-3 alone (MHA: 1) */
    const __m512i p0213 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15));
    /* int4 k16 codes at "bf16" with 4-row blocks: keys in the lanes (qkw16_block4), q' [0,4,2,6,1,5,3,7] per 8 */
    const __m512i p8 = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 8, 9, 4, 5, 12, 13, 2, 3, 10, 11, 6, 7, 14, 15));
    int16_t *qw = (int16_t *)qf; /* [R][D] */
    float ar[Q8_MAX_ROWS + 16] = {0}; /* + 16: read as a vector from any row */
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    /* int4 codes read in place (qkw44_block4) when whole 64-channel blocks
     * and 4-row blocks; otherwise unpacked to bytes for the int8 loops */
    const int in4 = kind != 2 && D % 64 == 0 && R % 4 == 0;
    /* int4 codes with 8-bit q' (qkb44_block4) at precision="int8" */
    const int b8 = in4 && c->a->precision >= SC_PRECISION_INT8;
    const int qblk = D % 128 == 0 ? 128 : 64; /* b8: q' [even | odd] per qblk channels (qkb44_block4) */
    int8_t *qb = (int8_t *)qf; /* [R][D] when b8 */
    int32_t qsum[Q8_MAX_ROWS + 16] = {0};
    /* asymmetric int4 K at precision="int8": each row's q . m[g] (zero points,
     * zp_bias) computed beside q' and added by the score stores' FMA */
    const int zfold = b8 && kind == 4;
    const int w16b4 = in4 && k16 && !b8;
    /* keys in the lanes, 8-bit q' (any D a multiple of 16: qk4b_k16 rounds the last 16-48 channels alone) */
    if (k16 && kind != 2 && D % 16 == 0 && c->a->precision >= SC_PRECISION_INT8) {
        WITH_CONST_D(D, Dc, qk4b_k16(c, q, sc, kr, j0, nt, s, (int8_t *)qf, Dc));
        return;
    }
    float zf[256] __attribute__((aligned(64)));
    float fb[Q8_MAX_ROWS + 16] = {0};
    __m512i even = _mm512_setzero_si512(), odd = even;
    if (in4) {
        int16_t ie[32], io[32];
        for (int i = 0; i < 32; i++) {
            ie[i] = (int16_t)(2 * i);
            io[i] = (int16_t)(2 * i + 1);
        }
        even = _mm512_loadu_si512(ie);
        odd = _mm512_loadu_si512(io);
    }
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t cell0 = group_scales(c, st, sf32, kr, g, T, D, sc, 1);
        if (zfold) {
            const sc_store zs = {.scales = st->zeros};
            store_scales(c, &zs, sf32, cell0, D, zf);
        }
        for (int64_t r = 0; r < R; r++) {
            __m512 y[16], mx = _mm512_setzero_ps();
            for (int64_t ch = 0; ch < D; ch += 16) { /* vrangeps 0x0B: the larger magnitude, sign cleared */
                y[ch / 16] = _mm512_mul_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_loadu_ps(sc + ch));
                mx = _mm512_range_ps(mx, y[ch / 16], 0x0B);
            }
            const float m = _mm512_reduce_max_ps(mx);
            if (b8) {
                if (zfold) {
                    __m512 bz = _mm512_setzero_ps();
                    for (int64_t ch = 0; ch < D; ch += 16)
                        bz = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * D + ch), _mm512_load_ps(zf + ch), bz);
                    fb[r] = _mm512_reduce_add_ps(bz);
                }
                ar[r] = m * (1.0f / 127.0f);
                qsum[r] = round8_row(y, _mm512_set1_ps(m > 0.0f ? 127.0f / m : 0.0f), qb + r * D, D, qblk);
                continue;
            }
            ar[r] = m * (1.0f / 32767.0f);
            const __m512 inv = _mm512_set1_ps(m > 0.0f ? 32767.0f / m : 0.0f);
            int64_t ch = 0;
            if (w16b4) /* per 8 channels: [0, 4, 2, 6, 1, 5, 3, 7] (qkw16_block4) */
                for (; ch < D; ch += 32)
                    _mm512_storeu_si512(qw + r * D + ch, _mm512_shuffle_epi8(round16x2(y[ch / 16], y[ch / 16 + 1], inv), p8));
            else if (in4) /* per 64 channels: [even 32 | odd 32] (qkw44_step4) */
                for (; ch < D; ch += 64) {
                    const __m512i a = round16x2(y[ch / 16], y[ch / 16 + 1], inv);
                    const __m512i b = round16x2(y[ch / 16 + 2], y[ch / 16 + 3], inv);
                    _mm512_storeu_si512(qw + r * D + ch, _mm512_permutex2var_epi16(a, even, b));
                    _mm512_storeu_si512(qw + r * D + ch + 32, _mm512_permutex2var_epi16(a, odd, b));
                }
            for (; ch + 32 <= D; ch += 32) {
                const __m512i x = round16x2(y[ch / 16], y[ch / 16 + 1], inv);
                _mm512_storeu_si512(qw + r * D + ch, w16 ? _mm512_shuffle_epi8(x, p0213) : x);
            }
            if (ch < D) { /* a last 16 channels (d80 etc.) */
                const __m256i x = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(y[ch / 16], inv)));
                _mm256_storeu_si256((__m256i *)(qw + r * D + ch),
                                    w16 ? _mm256_shuffle_epi8(x, _mm512_castsi512_si256(p0213)) : x);
            }
        }
        if (w16b4) { /* int4 at "bf16": keys in the lanes, 16 at a time */
            const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
            for (int64_t r0 = 0; r0 < R; r0 += 4)
                for (int64_t j = 0; j < n; j += 16)
                    qkw16_block4(qw, ar, row0, j0 + t + j, n - j < 16 ? n - j : 16, s + t + j, r0, D, TL, kind == 3,
                                 pfend);
        } else if (w16) { /* int8: keys in the lanes, 16 at a time (j0 + t: a multiple of 16) */
            const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
            for (int64_t r0 = 0; r0 < R; r0 += 4)
                for (int64_t j = 0; j < n; j += 16) {
                    const int64_t jt = j0 + t + j, nk = n - j < 16 ? n - j : 16;
                    switch (R - r0 < 4 ? R - r0 : 4) { /* the row count a constant in each instance */
                    case 1: qkw16_block(qw, ar, row0, jt, nk, s + t + j, r0, D, TL, pfend, 1); break;
                    case 2: qkw16_block(qw, ar, row0, jt, nk, s + t + j, r0, D, TL, pfend, 2); break;
                    case 3: qkw16_block(qw, ar, row0, jt, nk, s + t + j, r0, D, TL, pfend, 3); break;
                    default: WITH_CONST_D(D, Dc, qkw16_block(qw, ar, row0, jt, nk, s + t + j, r0, Dc, TL, pfend, 4));
                    }
                }
        } else if (in4) { /* token rows (a k16 store took one of the branches above, or qk4b_k16) */
            const uint8_t *ct = codes + t * rb;
            for (int64_t r0 = 0; r0 < R; r0 += 4) {
                const __m512 sc4 = _mm512_permutexvar_ps(_mm512_srli_epi32(lane, 2), _mm512_loadu_ps(ar + r0));
                if (b8) { /* symmetric codes are stored + 8: 8 sum(q') off each sum */
                    const __m512i bias = kind == 3 ? _mm512_slli_epi32(_mm512_permutexvar_epi32(_mm512_srli_epi32(lane, 2),
                                                                                              _mm512_loadu_si512(qsum + r0)), 3)
                                                   : _mm512_setzero_si512();
                    const __m512 fb4 = _mm512_permutexvar_ps(_mm512_srli_epi32(lane, 2), _mm512_loadu_ps(fb + r0));
                    if (qblk == 128) /* the block width a constant in each instance */
                        for (int64_t j = 0; j < n; j += 4)
                            qkb44_block4(qb, sc4, bias, fb4, ct, s + t, r0, j, n - j < 4 ? n - j : 4, D, TL, pfend, 128);
                    else
                        for (int64_t j = 0; j < n; j += 4)
                            qkb44_block4(qb, sc4, bias, fb4, ct, s + t, r0, j, n - j < 4 ? n - j : 4, D, TL, pfend, 64);
                } else
                    for (int64_t j = 0; j < n; j += 4)
                        qkw44_block4(qw, sc4, ct, s + t, r0, j, n - j < 4 ? n - j : 4, D, TL, kind == 3, pfend);
            }
        }
        for (int64_t off = 0; off < n && !in4 && !w16;) { /* int4 and k16 int8: U4_KEYS keys at a time through a scratch */
            const int64_t m = (kind == 2 && !k16) || n - off < U4_KEYS ? n - off : U4_KEYS;
            const int8_t *ct = (const int8_t *)codes + (t + off) * D;
            const char *pe = pfend;
            if (kind == 2 && k16) {
                ct = (const int8_t *)code_rows(f, st, kr, j0 + t + off, m, rb, k16r, &pe, k16_gather_avx512);
            } else if (kind != 2) {
                const uint8_t *cr = code_rows(f, st, kr, j0 + t + off, m, rb, k16r, &pe, k16_gather_avx512);
                unpack4(cr, u4, m * D, kind == 3, rb, pe);
                ct = u4;
                pe = NULL;
            }
            float *st_ = s + t + off;
            int64_t r0 = 0;
            for (; r0 + 4 <= R; r0 += 4) { /* lane rr * 4 + kk: row r0 + rr's scale */
                const __m512 sc4 = _mm512_permutexvar_ps(_mm512_srli_epi32(lane, 2), _mm512_loadu_ps(ar + r0));
                int64_t j = 0;
                for (; j + 4 <= m; j += 4) qkw44_block(qw, sc4, ct, st_, r0, j, 4, D, TL, pe);
                if (j < m) qkw44_block(qw, sc4, ct, st_, r0, j, m - j, D, TL, pe);
            }
            for (; r0 < R; r0++)
                for (int64_t j = 0; j < m; j += 16)
                    qkw16_row(qw + r0 * D, ar[r0], ct, st_ + r0 * TL, j, m - j < 16 ? m - j : 16, D,
                              r0 == 0 ? pe : NULL); /* fewer than 4 rows: prefetch here */
            off += m;
        }
        if (kind == 4 && !zfold) zp_bias(c, q, sc, kr, g, t, n, s);
        t += n;
    }
}

/* PV in integers (precision="bf16", int8 V with per-token scales over whole
 * 32-channel cells, q8_mode 2): per tile and row, P' = p * s[key][cell] is
 * rounded to int16 against the row's largest P' in the tile (2^-16 of it),
 * and VPDPWSSD accumulates pairs of keys exactly in int32,
 * (p'_j, p'_j+1) . (v_j[c], v_j+1[c]): the codes of two keys are byte-
 * interleaved (vpunpck[lh]bw) and sign-extended, one instruction per 32
 * products against two FMAs, no int-to-float conversions. The int32 sums are
 * scaled into O once per tile. Interleaving within 128-bit lanes leaves the
 * channels of a 64-channel block in the order [0-7,16-23] [32-39,48-55]
 * [8-15,24-31] [40-47,56-63] (each vector inside one cell), restored by one
 * permute per vector at the flush. */
#ifndef PVW_TL
#define PVW_TL 256 /* keys per tile at most (TILE_KEYS_INT4B8): ~72 KB of stack below */
#endif
SC_T_VNNI SC_INL void pvw_block(const int8_t *v, const int16_t *pq, const float *ps, float *o, int64_t r0, int64_t nr,
                                int64_t c0, int64_t npair, int64_t nt, int64_t D, int64_t ncell, int64_t TLp,
                                const char *pfend, int64_t cw) {
    /* cw: the block's channels, 64 or (the last block of D = 80, 96, 112, 144...; one P' cell) 16-48,
     * read under a mask (no byte past the row) and stored under one */
    const __mmask64 cm = cw >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << cw) - 1;
    __m512i acc[4][4];
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) acc[rr][u] = _mm512_setzero_si512();
    const int64_t cl0 = ncell == 1 ? 0 : c0 / 32, cl1 = ncell == 1 ? 0 : cl0 + 1; /* one P' cell: both */
    static const int8_t zero[64] __attribute__((aligned(64)));
    const char *pf = (const char *)v + PF_KEYS * D + c0;
    for (int64_t jp = 0; jp < npair; jp++) {
        const int64_t j = 2 * jp;
        /* an odd last key pairs with zeros (its p' partner is 0 as well) */
        const int8_t *vb = jp + 1 < npair || !(nt & 1) ? v + (j + 1) * D + c0 : zero;
        if (r0 == 0 && pfend && pf + 2 * D <= pfend) { /* this block's line of keys j, j + 1, PF_KEYS ahead */
            _mm_prefetch(pf, PF_HINT);
            _mm_prefetch(pf + D, PF_HINT);
        }
        pf += 2 * D;
        const __m512i a = cw >= 64 ? _mm512_loadu_si512(v + j * D + c0) : _mm512_maskz_loadu_epi8(cm, v + j * D + c0);
        const __m512i b = cw >= 64 ? _mm512_loadu_si512(vb) : _mm512_maskz_loadu_epi8(cm, vb);
        const __m512i lo = _mm512_unpacklo_epi8(a, b), hi = _mm512_unpackhi_epi8(a, b);
        const __m512i x0 = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo));      /* cell 0 */
        const __m512i x1 = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1)); /* cell 1 */
        const __m512i x2 = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi));      /* cell 0 */
        const __m512i x3 = _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1)); /* cell 1 */
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const int16_t *pr = pq + (r0 + rr) * ncell * TLp + j;
            const __m512i p0 = _mm512_set1_epi32(*(const int32_t *)(pr + cl0 * TLp));
            const __m512i p1 = _mm512_set1_epi32(*(const int32_t *)(pr + cl1 * TLp));
            SC_DPWSSD(acc[rr][0], p0, x0);
            SC_DPWSSD(acc[rr][1], p1, x1);
            SC_DPWSSD(acc[rr][2], p0, x2);
            SC_DPWSSD(acc[rr][3], p1, x3);
        }
    }
    /* natural order: channels 0-15 = x0[0-7] x2[0-7], 16-31 = x0[8-15] x2[8-15], ... */
    const __m512i lo8 = _mm512_set_epi32(23, 22, 21, 20, 19, 18, 17, 16, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i hi8 = _mm512_set_epi32(31, 30, 29, 28, 27, 26, 25, 24, 15, 14, 13, 12, 11, 10, 9, 8);
    for (int rr = 0; rr < 4; rr++) {
        if (rr >= nr) break;
        float *orow = o + (r0 + rr) * D + c0;
        const __m512 sc = _mm512_set1_ps(ps[r0 + rr]);
        const __m512i n0 = _mm512_permutex2var_epi32(acc[rr][0], lo8, acc[rr][2]);
        const __m512i n1 = _mm512_permutex2var_epi32(acc[rr][0], hi8, acc[rr][2]);
        const __m512i n2 = _mm512_permutex2var_epi32(acc[rr][1], lo8, acc[rr][3]);
        const __m512i n3 = _mm512_permutex2var_epi32(acc[rr][1], hi8, acc[rr][3]);
        const __m512i n[4] = {n0, n1, n2, n3};
        for (int i = 0; i < 4; i++)
            if (16 * i < cw)
                _mm512_storeu_ps(orow + 16 * i,
                                 _mm512_fmadd_ps(_mm512_cvtepi32_ps(n[i]), sc, _mm512_loadu_ps(orow + 16 * i)));
    }
}

/* The same over symmetric int4 V codes read in place (kind 3, stored + 8):
 * per key pair and 64-channel block, 32 packed bytes of each key zero-
 * extended to words, the nibbles split (low: even channels, high: odd), and
 * the two keys interleaved by word -- no byte scratch (unpack4) in between.
 * A vector then spans both 32-channel cells of the block (128-bit lanes 0-1:
 * channels 0-31), so the P' operand carries cell 0's pair in its low half
 * and cell 1's in its high half. Accumulator u, lane (L, p) holds channel
 * 16L + 2p (u = 0), + 8 (u = 1), + 1 (u = 2), + 9 (u = 3); the flush
 * restores the order with 4 unpacks and a 4x4 transpose of 128-bit lanes. */
SC_T_VNNI SC_INL void pvw_block4(const uint8_t *v, const int16_t *pq, const float *ps, float *o, int64_t r0, int64_t nr,
                                 int64_t c0, int64_t npair, int64_t nt, int64_t D, int64_t ncell, int64_t TLp,
                                 const char *pfend) {
    const int64_t rb = D / 2;
    __m512i acc[4][4];
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) acc[rr][u] = _mm512_setzero_si512();
    const int64_t cl0 = ncell == 1 ? 0 : c0 / 32, cl1 = ncell == 1 ? 0 : cl0 + 1; /* one P' cell: both */
    static const uint8_t zero[32] __attribute__((aligned(64)));
    const __m512i m4 = _mm512_set1_epi16(0x0F), eight = _mm512_set1_epi16(8);
    const char *pf = (const char *)v + PF_KEYS * rb + c0 / 2;
    for (int64_t jp = 0; jp < npair; jp++) {
        const int64_t j = 2 * jp;
        /* an odd last key pairs with zeros (its p' partner is 0 as well) */
        const uint8_t *vb = jp + 1 < npair || !(nt & 1) ? v + (j + 1) * rb + c0 / 2 : zero;
        if (r0 == 0 && pfend && !(c0 & 127) && pf + 2 * rb <= pfend) { /* keys j, j + 1, PF_KEYS ahead */
            _mm_prefetch(pf, PF_HINT);
            _mm_prefetch(pf + rb, PF_HINT);
        }
        pf += 2 * rb;
        const __m512i wa = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(v + j * rb + c0 / 2)));
        const __m512i wb = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)vb));
        const __m512i ea = _mm512_sub_epi16(_mm512_and_si512(wa, m4), eight);
        const __m512i oa = _mm512_sub_epi16(_mm512_srli_epi16(wa, 4), eight);
        const __m512i eb = _mm512_sub_epi16(_mm512_and_si512(wb, m4), eight);
        const __m512i ob = _mm512_sub_epi16(_mm512_srli_epi16(wb, 4), eight);
        const __m512i x0 = _mm512_unpacklo_epi16(ea, eb), x1 = _mm512_unpackhi_epi16(ea, eb);
        const __m512i x2 = _mm512_unpacklo_epi16(oa, ob), x3 = _mm512_unpackhi_epi16(oa, ob);
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const int16_t *pr = pq + (r0 + rr) * ncell * TLp + j;
            const __m512i pm = _mm512_mask_blend_epi32((__mmask16)0xFF00,
                                                       _mm512_set1_epi32(*(const int32_t *)(pr + cl0 * TLp)),
                                                       _mm512_set1_epi32(*(const int32_t *)(pr + cl1 * TLp)));
            SC_DPWSSD(acc[rr][0], pm, x0);
            SC_DPWSSD(acc[rr][1], pm, x1);
            SC_DPWSSD(acc[rr][2], pm, x2);
            SC_DPWSSD(acc[rr][3], pm, x3);
        }
    }
    for (int rr = 0; rr < 4; rr++) {
        if (rr >= nr) break;
        float *orow = o + (r0 + rr) * D + c0;
        const __m512 sc = _mm512_set1_ps(ps[r0 + rr]);
        /* per 128-bit lane L: a = channels 16L + 0-3, b = 4-7, c = 8-11, d = 12-15 */
        const __m512i a = _mm512_unpacklo_epi32(acc[rr][0], acc[rr][2]), b = _mm512_unpackhi_epi32(acc[rr][0], acc[rr][2]);
        const __m512i c = _mm512_unpacklo_epi32(acc[rr][1], acc[rr][3]), d = _mm512_unpackhi_epi32(acc[rr][1], acc[rr][3]);
        const __m512i t0 = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), t1 = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0));
        const __m512i t2 = _mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)), t3 = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2));
        const __m512i n[4] = {_mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                              _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1))};
        for (int u = 0; u < 4; u++)
            _mm512_storeu_ps(orow + 16 * u, _mm512_fmadd_ps(_mm512_cvtepi32_ps(n[u]), sc, _mm512_loadu_ps(orow + 16 * u)));
    }
}

/* dst[j] = sc[j * ncell + col] for the tile's nt (<= PVW_TL) keys, zeros up to
 * a multiple of 16: one cell's per-key scales with the keys in the lanes.
 * Each 16 keys span ncell source vectors; vpermt2ps picks the column out of
 * a pair of them. (These were 16-lane gathers: without them the int8 decode
 * at the bf16 setting ran 1.06-1.11x faster on Zen 4; bench/build_ab.py.) */
SC_T_VNNI SC_INL void scales_by_cell(const float *sc, int64_t nt, int64_t ncell, int64_t col, float *dst) {
    const __m512i src = _mm512_add_epi32(
        _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           _mm512_set1_epi32((int)ncell)),
        _mm512_set1_epi32((int)col)); /* lane l: l * ncell + col, within a block of 16 keys */
    const __m512i idx = _mm512_and_si512(src, _mm512_set1_epi32(31)), pair = _mm512_srli_epi32(src, 5);
    const int64_t tot = nt * ncell;
    for (int64_t j = 0; j < nt; j += 16) {
        __m512 r = _mm512_setzero_ps();
        for (int64_t i = 0; 32 * i < 16 * ncell; i++) {
            const int64_t o = j * ncell + 32 * i, left = tot - o;
            const __m512 lo = _mm512_maskz_loadu_ps(left >= 16 ? 0xFFFF : left > 0 ? (1u << left) - 1 : 0, sc + o);
            const __m512 hi = _mm512_maskz_loadu_ps(left >= 32 ? 0xFFFF : left > 16 ? (1u << (left - 16)) - 1 : 0,
                                                    sc + o + 16);
            r = _mm512_mask_mov_ps(r, _mm512_cmpeq_epi32_mask(pair, _mm512_set1_epi32((int)i)),
                                   _mm512_permutex2var_ps(lo, idx, hi));
        }
        _mm512_store_ps(dst + j, r);
    }
}

/* the same for four cells (d128 with 32-channel cells, the common case), all
 * at once: 8 keys x 4 cells (two source vectors) -> cells 0|1 and 2|3 of the
 * 8 keys (two vpermt2ps), then 16 keys of one cell from two of those
 * (vshuff32x4): 0.5 operations per key against ~2 for the column picks */
SC_T_VNNI SC_INL void scales_by_cell4(const float *sc, int64_t nt, float (*dst)[PVW_TL]) {
    const __m512i ia = _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i ib = _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    const int64_t tot = 4 * nt;
    for (int64_t j = 0; j < nt; j += 16) {
        __m512 a[2], b[2];
        for (int h = 0; h < 2; h++) {
            const int64_t o = 4 * (j + 8 * h), left = tot - o;
            const __m512 lo = _mm512_maskz_loadu_ps(left >= 16 ? 0xFFFF : left > 0 ? (1u << left) - 1 : 0, sc + o);
            const __m512 hi = _mm512_maskz_loadu_ps(left >= 32 ? 0xFFFF : left > 16 ? (1u << (left - 16)) - 1 : 0,
                                                    sc + o + 16);
            a[h] = _mm512_permutex2var_ps(lo, ia, hi); /* cell 0 of 8 keys | cell 1 */
            b[h] = _mm512_permutex2var_ps(lo, ib, hi); /* cell 2 | cell 3 */
        }
        _mm512_store_ps(dst[0] + j, _mm512_shuffle_f32x4(a[0], a[1], _MM_SHUFFLE(1, 0, 1, 0)));
        _mm512_store_ps(dst[1] + j, _mm512_shuffle_f32x4(a[0], a[1], _MM_SHUFFLE(3, 2, 3, 2)));
        _mm512_store_ps(dst[2] + j, _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(1, 0, 1, 0)));
        _mm512_store_ps(dst[3] + j, _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 2, 3, 2)));
    }
}

/* The integer PVs' per-tile head: the V scales of the tile's keys per
 * 32-channel cell with the keys in the lanes (sT[cell][key]) ... */
SC_T_VNNI SC_INL void cell_scales_T(const float *sc, int64_t nt, int64_t ncell, int64_t G, float (*sT)[PVW_TL]) {
    if (ncell == 1) /* a scale per token: one P' cell, sT[0] = the scales (zeros up to a multiple of 16) */
        for (int64_t j = 0; j < nt; j += 16)
            _mm512_store_ps(sT[0] + j, _mm512_maskz_loadu_ps(nt - j >= 16 ? 0xFFFF : (1u << (nt - j)) - 1, sc + j));
    else if (ncell == 4 && G == 32) scales_by_cell4(sc, nt, sT);
    else
        for (int64_t cl = 0; cl < (ncell * G) / 32; cl++) scales_by_cell(sc, nt, ncell, cl * 32 / G, sT[cl]);
}
/* ... and per row, every P' = p x s (zeros past nt) in ps[cell][16 keys],
 * kept for the rounding (one multiply per P' instead of two), and the
 * largest */
#define PVW_NV (PVW_TL / 16)
SC_T_VNNI SC_INL float p_and_max(const float *prow, const float (*sT)[PVW_TL], int64_t nt, int64_t n32,
                                 __m512 (*ps)[PVW_NV]) {
    __m512 mx = _mm512_setzero_ps();
    for (int64_t jv = 0; jv < (nt + 15) / 16; jv++) {
        const __mmask16 km = (__mmask16)(nt - 16 * jv >= 16 ? 0xFFFF : (1u << (nt - 16 * jv)) - 1);
        const __m512 pv = _mm512_maskz_loadu_ps(km, prow + 16 * jv);
        for (int64_t cl = 0; cl < n32; cl++) { /* p, s >= 0 */
            ps[cl][jv] = _mm512_mul_ps(pv, _mm512_load_ps(&sT[cl][16 * jv]));
            mx = _mm512_max_ps(mx, ps[cl][jv]);
        }
    }
    return _mm512_reduce_max_ps(mx);
}

/* PV with 8-bit operands (precision="int8") over symmetric int4 V read in
 * place (kind 3, stored + 8, D a multiple of 128, cells of 32k channels):
 * VPDPBUSD sums 4 keys per lane, u8 P' x the unsigned codes, 64 products per
 * instruction. P' = p x s[key][cell] is rounded to 0..255 against the row's
 * largest P' in the tile (2^-9 of it), and the codes' + 8 comes off as
 * 8 x sum(P') per cell at the flush. Per 4 keys, the 64 packed bytes
 * (128 channels) of each key are interleaved by bytes and then words, so a
 * dword holds one packed byte of the 4 keys; its low nibbles are the even
 * channels, the high nibbles the odd ones (two passes, E and O, of 16
 * accumulators each). 128-bit lane l of every vector is channels 32l..32l+31
 * of the block, one cell, so the P' operand is one dword per lane: stored
 * that way per 4 keys, [row][block][4-key group][lane][4 copies], when P' is
 * rounded. Accumulator u of pass h, lane l, dword p: channel 32l + 8u + 2p
 * + h; the flush interleaves E and O and transposes 128-bit lanes. */
#define PVB_BLK 2 /* 128-channel blocks (D <= 256) */
typedef struct {
    uint8_t p[16][PVB_BLK][PVW_TL / 4][64] __attribute__((aligned(64))); /* P' operands */
    /* one P' cell: P' per row and key, up to ROWS_MAX rows (prefill items, c->v_q8_rows) */
    uint8_t p1[ROWS_MAX][PVW_TL] __attribute__((aligned(64)));
    int32_t corr[ROWS_MAX][PVB_BLK][16] __attribute__((aligned(64))); /* 8 sum(P') of lane l's cell */
    int32_t e[4][4][16] __attribute__((aligned(64)));                    /* pass E's sums of 4 rows */
    int32_t od[4][4][16] __attribute__((aligned(64)));                   /* pass O's */
    /* fp16 per-token V scales PF_KEYS keys past the tile (NULL: prefetched by
     * token_scales) and the kv row's end: a line per 32 keys in pass O */
    const char *vs_pf, *vs_end;
} pvb_scratch;

/* The VPDPBUSD operands of 4 code vectors z: bytes interleaved by keys then
 * words, so each dword holds one packed byte of 4 keys; pass h's nibbles
 * (0: low, the even channels; 1: high, the odd ones). Shared by pvb_pass and
 * pvb_pass64, which differ in what z's lanes hold. */
SC_T_VNNI SC_INL void pvb_nibbles(const __m512i *z, const int h, __m512i *x) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i l01 = _mm512_unpacklo_epi8(z[0], z[1]), h01 = _mm512_unpackhi_epi8(z[0], z[1]);
    const __m512i l23 = _mm512_unpacklo_epi8(z[2], z[3]), h23 = _mm512_unpackhi_epi8(z[2], z[3]);
    x[0] = _mm512_unpacklo_epi16(l01, l23), x[1] = _mm512_unpackhi_epi16(l01, l23);
    x[2] = _mm512_unpacklo_epi16(h01, h23), x[3] = _mm512_unpackhi_epi16(h01, h23);
    for (int u = 0; u < 4; u++) x[u] = _mm512_and_si512(h ? _mm512_srli_epi16(x[u], 4) : x[u], m4);
}
/* n key rows of rb bytes from pf (PF_KEYS ahead, into L2) and pn (PF_NEAR
 * ahead, into L1), each only when all of it lies before pfend */
SC_INL void pf_keys(const char *pf, const char *pn, int n, int64_t rb, const char *pfend) {
    if (!pfend) return;
    if (pf + n * rb <= pfend)
        for (int kk = 0; kk < n; kk++) _mm_prefetch(pf + kk * rb, PF_HINT);
    if (pn + n * rb <= pfend)
        for (int kk = 0; kk < n; kk++) _mm_prefetch(pn + kk * rb, _MM_HINT_T0);
}
/* pass O's share of the V scales' prefetch (pv4b_vnni's spread): the line
 * of key j's fp16 scale PF_KEYS ahead, once per 32 keys */
SC_INL void pf_vscale(const pvb_scratch *w, int64_t j) {
    if (w->vs_pf && (j & 31) == 0 && w->vs_pf + 2 * j < w->vs_end) _mm_prefetch(w->vs_pf + 2 * j, PF_HINT);
}
/* one pass (h 0: E, 1: O) of rows r0..r0+nr over block blk; its sums go to w->e (E) or w->od (O).
 * The V codes' far and near prefetch is split between the passes (keys 4g,
 * 4g + 1 in E, 4g + 2, 4g + 3 in O), the scales' lines go in pass O: all
 * four lines of a group in pass E, at twice the rate of the QK's prefetch,
 * overflowed the miss buffers, prefetches were dropped and the loads of the
 * next tile waited on DRAM. int4 at "int8", build_ab, 32k cold: 2 threads
 * 1.06-1.12x, 1 thread 1.11x; warm 0.99-1.0x (docs/benchmarks.md, session 20). */
SC_T_VNNI SC_INL void pvb_pass(const uint8_t *v, pvb_scratch *w, int64_t r0, int64_t nr, int64_t blk, int64_t nt,
                               int64_t D, const char *pfend, const int h, const int one) {
    const int64_t rb = D / 2, ngrp = (nt + 3) / 4;
    static const uint8_t zero[64] __attribute__((aligned(64)));
    __m512i acc[4][4];
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) acc[rr][u] = _mm512_setzero_si512();
    const char *pf = (const char *)v + PF_KEYS * rb + blk * 64, *pn = (const char *)v + PF_NEAR * rb + blk * 64;
    for (int64_t g = 0; g < ngrp; g++) {
        __m512i z[4];
        for (int kk = 0; kk < 4; kk++) {
            const int64_t j = 4 * g + kk;
            z[kk] = _mm512_loadu_si512(j < nt ? v + j * rb + blk * 64 : zero);
        }
        if (r0 == 0) {
            pf_keys(pf + 2 * h * rb, pn + 2 * h * rb, 2, rb, pfend); /* keys 4g, 4g + 1 (E), 4g + 2, 4g + 3 (O) */
            if (h && blk == 0) pf_vscale(w, 4 * g);
        }
        pf += 4 * rb;
        pn += 4 * rb;
        __m512i x[4];
        pvb_nibbles(z, h, x);
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            /* one P' cell: the 4 keys' P' broadcast to every lane */
            const __m512i pv = one ? _mm512_set1_epi32(*(const int32_t *)&w->p1[r0 + rr][4 * g])
                                   : _mm512_load_si512(w->p[r0 + rr][blk][g]);
            for (int u = 0; u < 4; u++) SC_DPBUSD(acc[rr][u], pv, x[u]);
        }
    }
    /* both passes leave their sums in the scratch: with the flush below in
     * the same function GCC kept pass O's 16 accumulators on the stack (a
     * load and a store around every product) */
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) _mm512_store_si512(h ? w->od[rr][u] : w->e[rr][u], acc[rr][u]);
}
/* pvb_pass over a block of up to 64 channels past the 128-channel blocks
 * (D = 64, 80, 96, 192...: cw = 16-64 channels from c0) with one P' cell,
 * the bytes past cw read as zeros: a key's 32 code bytes fill two 128-bit lanes,
 * so each vector holds two 4-key groups, keys 8g..8g+3 in lanes 0-1 and
 * 8g+4..8g+7 in lanes 2-3, against their two P' quadruples; the flush adds
 * lanes 2-3 to lanes 0-1 (pvb_flush, half). Every product does useful work,
 * where reading the block as 128 channels would waste half of them. */
SC_T_VNNI SC_INL void pvb_pass64(const uint8_t *v, pvb_scratch *w, int64_t r0, int64_t nr, int64_t c0, int64_t cw,
                                 int64_t nt, int64_t D, const char *pfend, const int h) {
    const int64_t rb = D / 2, ngrp = (nt + 7) / 8, off = c0 / 2; /* c0: a multiple of 64; cw: 16-64 channels */
    const __mmask32 bm = cw >= 64 ? ~(__mmask32)0 : ((__mmask32)1 << (cw / 2)) - 1; /* no byte past the row */
    static const uint8_t zero[32] __attribute__((aligned(32)));
    const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i acc[4][4];
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) acc[rr][u] = _mm512_setzero_si512();
    const char *pf = (const char *)v + PF_KEYS * rb + off, *pn = (const char *)v + PF_NEAR * rb + off;
    for (int64_t g = 0; g < ngrp; g++) {
        __m512i z[4];
        for (int kk = 0; kk < 4; kk++) {
            const int64_t j = 8 * g + kk;
            const __m256i a = _mm256_maskz_loadu_epi8(bm, j < nt ? v + j * rb + off : zero);
            const __m256i b = _mm256_maskz_loadu_epi8(bm, j + 4 < nt ? v + (j + 4) * rb + off : zero);
            z[kk] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
        }
        if (r0 == 0) { /* split between the passes as pvb_pass's */
            pf_keys(pf + 4 * h * rb, pn + 4 * h * rb, 4, rb, pfend); /* keys 8g..8g+3 (E), 8g+4..8g+7 (O) */
            if (h && c0 == 0) pf_vscale(w, 8 * g);
        }
        pf += 8 * rb;
        pn += 8 * rb;
        __m512i x[4];
        pvb_nibbles(z, h, x);
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            /* the two groups' P' quadruples: the first to lanes 0-1, the second to lanes 2-3 */
            const __m512i pv = _mm512_permutexvar_epi32(
                    halves, _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)&w->p1[r0 + rr][8 * g])));
            for (int u = 0; u < 4; u++) SC_DPBUSD(acc[rr][u], pv, x[u]);
        }
    }
    for (int rr = 0; rr < 4; rr++)
        for (int u = 0; u < 4; u++) _mm512_store_si512(h ? w->od[rr][u] : w->e[rr][u], acc[rr][u]);
}
/* O += the two passes' sums of rows r0..r0+nr over the block of cw channels
 * from c0, in channel order (half: a block of pvb_pass64, whose lanes 2-3 are
 * added to lanes 0-1, and whose first cw channels are those of lanes 0-1) */
SC_T_VNNI __attribute__((noinline)) static void pvb_flush(const pvb_scratch *w, const float *ps, float *o, int64_t r0,
                                                          int64_t nr, int64_t c0, int64_t cw, int64_t D,
                                                          const int half) {
    for (int rr = 0; rr < 4; rr++) {
        if (rr >= nr) break;
        const __m512i cv = _mm512_load_si512(w->corr[r0 + rr][c0 / 128]);
        __m512i t[4][2];
        for (int u = 0; u < 4; u++) {
            __m512i e = _mm512_load_si512(w->e[rr][u]), od = _mm512_load_si512(w->od[rr][u]);
            if (half) {
                e = _mm512_add_epi32(e, _mm512_shuffle_i32x4(e, e, _MM_SHUFFLE(1, 0, 3, 2)));
                od = _mm512_add_epi32(od, _mm512_shuffle_i32x4(od, od, _MM_SHUFFLE(1, 0, 3, 2)));
            }
            const __m512i ev = _mm512_sub_epi32(e, cv);
            const __m512i ov = _mm512_sub_epi32(od, cv);
            t[u][0] = _mm512_unpacklo_epi32(ev, ov); /* lane l: channels 32l + 8u + 0..3 */
            t[u][1] = _mm512_unpackhi_epi32(ev, ov); /* 32l + 8u + 4..7 */
        }
        float *orow = o + (r0 + rr) * D + c0;
        const __m512 sc = _mm512_set1_ps(ps[r0 + rr]);
        for (int a = 0; a < 2; a++) { /* lane l of q0[0], q0[1], q1[0], q1[1]: channels 32l + 16a + 0..3, 4..7, 8..11, 12..15 */
            const __m512i *q0 = t[2 * a], *q1 = t[2 * a + 1];
            const __m512i t0 = _mm512_shuffle_i32x4(q0[0], q0[1], _MM_SHUFFLE(1, 0, 1, 0));
            const __m512i t1 = _mm512_shuffle_i32x4(q1[0], q1[1], _MM_SHUFFLE(1, 0, 1, 0));
            const __m512i t2 = _mm512_shuffle_i32x4(q0[0], q0[1], _MM_SHUFFLE(3, 2, 3, 2));
            const __m512i t3 = _mm512_shuffle_i32x4(q1[0], q1[1], _MM_SHUFFLE(3, 2, 3, 2));
            const __m512i n[4] = {_mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                                  _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1))};
            for (int l = 0; l < (half ? 2 : 4); l++) { /* channels 32l + 16a .. + 15 */
                if (32 * l + 16 * a >= cw) continue;
                float *dst = orow + 32 * l + 16 * a;
                _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_cvtepi32_ps(n[l]), sc, _mm512_loadu_ps(dst)));
            }
        }
    }
}
SC_T_VNNI SC_INL void pvb_block(const uint8_t *v, pvb_scratch *w, const float *ps, float *o, int64_t r0, int64_t nr,
                                int64_t blk, int64_t nt, int64_t D, const char *pfend, const int one) {
    pvb_pass(v, w, r0, nr, blk, nt, D, pfend, 0, one);
    pvb_pass(v, w, r0, nr, blk, nt, D, pfend, 1, one);
    pvb_flush(w, ps, o, r0, nr, 128 * blk, 128, D, 0);
}

SC_T_VNNI SC_INL void pvb_block64(const uint8_t *v, pvb_scratch *w, const float *ps, float *o, int64_t r0,
                                  int64_t nr, int64_t c0, int64_t cw, int64_t nt, int64_t D, const char *pfend) {
    pvb_pass64(v, w, r0, nr, c0, cw, nt, D, pfend, 0);
    pvb_pass64(v, w, r0, nr, c0, cw, nt, D, pfend, 1);
    pvb_flush(w, ps, o, r0, nr, c0, cw, D, 1);
}

SC_T_VNNI __attribute__((noinline)) static void pv4b_vnni(const attn_ctx *c, float *sc, int64_t kr, int64_t j0,
                                                          int64_t nt, const float *p, float *o) {
    const sc_format *f = c->a->vf;
    const sc_store *st = c->a->v;
    const int64_t D = c->D, R = c->rows, G = f->channel_group, TL = c->tile, ncell = D / G, n32 = D / 32;
    const int64_t nblk = D / 128, nv = (nt + 15) / 16;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32;
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * (D / 2);
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * (D / 2);
    pvb_scratch w;
    const int spread = ncell == 1 && !sf32; /* fp16 scales, one per key: their prefetch spread over pass O */
    token_scales(c, st, sf32, kr, j0, nt, ncell, sc, !spread);
    w.vs_pf = spread ? (const char *)st->scales + (kr * st->capacity + j0 + PF_KEYS) * 2 : NULL;
    w.vs_end = (const char *)st->scales + (kr + 1) * st->capacity * 2;
    float ps[ROWS_MAX];
    float sT[8][PVW_TL] __attribute__((aligned(64)));
    cell_scales_T(sc, nt, ncell, G, sT);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i cellsel = _mm512_srli_epi32(lane, 2); /* dword (l, copy) <- l */
    const int one = ncell == 1; /* a scale per token: one P' per key and row, for every block */
    for (int64_t r = 0; r < R; r++) {
        __m512 pp[8][PVW_NV];
        const float m = p_and_max(p + r * TL, (const float (*)[PVW_TL])sT, nt, one ? 1 : n32, pp);
        ps[r] = m * (1.0f / 255.0f);
        const __m512 inv = _mm512_set1_ps(m > 0.0f ? 255.0f / m : 0.0f);
        if (one) {
            __m512i sum = _mm512_setzero_si512();
            for (int64_t jv = 0; jv < nv; jv++) { /* 0 <= x <= 255; zeros past nt */
                const __m512i x = _mm512_cvtps_epi32(_mm512_mul_ps(pp[0][jv], inv));
                sum = _mm512_add_epi32(sum, x);
                _mm_store_si128((__m128i *)&w.p1[r][16 * jv], _mm512_cvtusepi32_epi8(x));
            }
            const __m512i cv = _mm512_set1_epi32(8 * _mm512_reduce_add_epi32(sum));
            for (int64_t b = 0; b < PVB_BLK; b++) _mm512_store_si512(w.corr[r][b], cv);
            continue;
        }
        for (int64_t b = 0; b < nblk; b++) {
            __m512i sum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                              _mm512_setzero_si512()};
            for (int64_t jv = 0; jv < nv; jv++) {
                __m512i x[4];
                for (int l = 0; l < 4; l++) { /* 0 <= x <= 255 */
                    x[l] = _mm512_cvtps_epi32(_mm512_mul_ps(pp[4 * b + l][jv], inv));
                    sum[l] = _mm512_add_epi32(sum[l], x[l]);
                }
                /* lane g (4-key group g of these 16 keys): dwords cell 0..3 of the group */
                const __m512i by = _mm512_packus_epi16(_mm512_packus_epi32(x[0], x[1]), _mm512_packus_epi32(x[2], x[3]));
                for (int64_t g = 0; g < 4 && 4 * jv + g < (nt + 3) / 4; g++)
                    _mm512_store_si512(w.p[r][b][4 * jv + g],
                                       _mm512_permutexvar_epi32(_mm512_add_epi32(cellsel, _mm512_set1_epi32(4 * (int)g)), by));
            }
            int32_t cs[16];
            for (int l = 0; l < 4; l++) {
                const int32_t v8 = 8 * _mm512_reduce_add_epi32(sum[l]);
                for (int k = 0; k < 4; k++) cs[4 * l + k] = v8;
            }
            _mm512_store_si512(w.corr[r][b], _mm512_loadu_si512(cs));
        }
    }
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t b = 0; b < nblk; b++) /* nr a constant in the common case: accumulators in registers */
            if (one && nr == 4) pvb_block(codes, &w, ps, o, r0, 4, b, nt, D, pfend, 1);
            else if (nr == 4) pvb_block(codes, &w, ps, o, r0, 4, b, nt, D, pfend, 0);
            else pvb_block(codes, &w, ps, o, r0, nr, b, nt, D, pfend, one);
        /* the channels past the 128-channel blocks, in blocks of up to 64 (one P' cell only: pv8_vnni) */
        for (int64_t c0 = 128 * nblk; c0 < D; c0 += 64) {
            const int64_t cw = D - c0 < 64 ? D - c0 : 64;
            if (nr == 4) pvb_block64(codes, &w, ps, o, r0, 4, c0, cw, nt, D, pfend);
            else pvb_block64(codes, &w, ps, o, r0, nr, c0, cw, nt, D, pfend);
        }
    }
}

SC_T_VNNI static void pv8_vnni(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p,
                               float *o) {
    const sc_format *f = c->a->vf;
    const int64_t D = c->D, R = c->rows, G = f->channel_group, TL = c->tile;
    const int kind = code_kind(f); /* int8 (2) or symmetric int4 (3, read in place: pvw_block4) */
    /* one scale per token (G = D), int8 codes or int4 ones at "int8" (pv4b_vnni): any D a multiple of 16,
     * the last block's channels under a mask */
    const int dims = G == D && (kind == 2 || c->a->precision >= SC_PRECISION_INT8) ? D % 16 == 0
                                                                                  : G % 32 == 0 && D % 64 == 0;
    /* 8-bit P': blocks of 128 channels, and with one P' cell (G = D) the rest in blocks of up to 64 */
    const int b8 = kind == 3 && c->a->precision >= SC_PRECISION_INT8 && (D % 128 == 0 || G == D);
    /* the scratches below hold 16 rows, 8 cells, PVW_TL keys; pv4b_vnni's one cell ROWS_MAX rows */
    if (c->a->precision < SC_PRECISION_BF16 || (kind != 2 && kind != 3) || !dims || D > 256 || TL > PVW_TL ||
        R > (b8 && G == D ? ROWS_MAX : 16)) {
        pv8_avx512(c, sc, kr, j0, nt, p, o);
        return;
    }
    if (b8) {
        pv4b_vnni(c, sc, kr, j0, nt, p, o);
        return;
    }
    const sc_store *st = c->a->v;
    /* P' rows 128 keys apart for tiles of up to 128 keys (the int8 layout measured) */
    const int64_t ncell = D / G, TLp = TL <= 128 ? 128 : PVW_TL, npair = (nt + 1) / 2;
    token_scales(c, st, f->scale_dtype == SC_DTYPE_F32, kr, j0, nt, ncell, sc, 1);
    const int64_t rb = kind == 2 ? D : D / 2;
    const int8_t *codes = (const int8_t *)st->data + (kr * st->capacity + j0) * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    int16_t pq[16 * 8 * PVW_TL] __attribute__((aligned(64))); /* [row][cell][key], cells of 32 channels */
    float ps[16];                                               /* per row: max P' / 32767 */
    float sT[8][PVW_TL] __attribute__((aligned(64)));           /* scale per cell of 32 channels, per key */
    /* P' cells: of 32 channels (G a multiple), or one for a scale per token (G = D) */
    const int64_t n32 = ncell == 1 ? 1 : D / 32;
    const int64_t nv = (nt + 15) / 16;
    cell_scales_T(sc, nt, ncell, G, sT);
    for (int64_t r = 0; r < R; r++) {
        __m512 pp[8][PVW_NV];
        const float m = p_and_max(p + r * TL, (const float (*)[PVW_TL])sT, nt, n32, pp);
        ps[r] = m * (1.0f / 32767.0f);
        const __m512 inv = _mm512_set1_ps(m > 0.0f ? 32767.0f / m : 0.0f);
        for (int64_t cl = 0; cl < n32; cl++) {
            int16_t *dst = pq + (r * n32 + cl) * TLp;
            int64_t jv = 0;
            for (; jv + 2 <= nv; jv += 2)
                _mm512_store_si512(dst + 16 * jv, round16x2(pp[cl][jv], pp[cl][jv + 1], inv));
            if (jv < nv)
                _mm256_store_si256((__m256i *)(dst + 16 * jv),
                                   _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(pp[cl][jv], inv))));
        }
    }
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 64)
            if (kind == 3) pvw_block4((const uint8_t *)codes, pq, ps, o, r0, nr, c0, npair, nt, D, n32, TLp, pfend);
            /* the row count a constant in each call: with it a variable, the
             * accumulators of the last 1-3 rows (GQA 3, 6, 7...) lived on the
             * stack (bench/spill_scan.py) */
            else if (nr == 4) pvw_block(codes, pq, ps, o, r0, 4, c0, npair, nt, D, n32, TLp, pfend, D - c0);
            else if (nr == 3) pvw_block(codes, pq, ps, o, r0, 3, c0, npair, nt, D, n32, TLp, pfend, D - c0);
            else if (nr == 2) pvw_block(codes, pq, ps, o, r0, 2, c0, npair, nt, D, n32, TLp, pfend, D - c0);
            else pvw_block(codes, pq, ps, o, r0, 1, c0, npair, nt, D, n32, TLp, pfend, D - c0);
    }
}

SC_T_VNNI void sc_attn_item_avx512vnni(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_vnni,
                   pv8_vnni, NULL);
}

/* ---- AVX512-BF16: items of many rows (prefill) at the bf16 setting --------
 * On a CPU with AVX512-BF16 but no AMX, the avx512_vnni level runs prefill
 * items (more than Q8_MAX_ROWS rows) under precision="bf16" with VDPBF16PS:
 * q, K, P and V rounded to bf16 (round to nearest even), products summed in
 * pairs into fp32 -- 32 multiply-adds per instruction against 16 per FMA.
 * The tiles come decoded to fp32 as for the FMA path (fp16 rows too: the
 * direct readers are not used here); each is converted once per tile and
 * shared by all the item's rows. QK: the K tile transposed to [channel
 * pair][key], 8 rows x 32 keys of accumulators, query pairs broadcast. PV:
 * pairs of keys, each V row pair interleaved per channel into (v_j, v_j+1)
 * dwords, P pairs broadcast. */
#define SC_T_BF16 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512bf16,avx2,fma,f16c")))
/* acc += pairwise bf16 products of a and b (inline asm: see SC_DPWSSD) */
#define SC_DPBF16(acc, a, b) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
#define BF_KEYS KT_KEYS /* keys converted and transposed per chunk */

/* n (a multiple of 16) floats -> bf16, round to nearest even */
SC_T_BF16 SC_INL void to_bf16(const float *x, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
    if (i < n) _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
}

/* Scores with the keys in the lanes: kT [channel pair][BF_KEYS keys] (bf16
 * pairs), qb [row][channel pair]; nr (<= 8) rows x BF_KEYS keys of
 * accumulators, one broadcast query pair per row and channel pair, no
 * horizontal sums (a 4x4 block with reductions spent ~0.7 reduction
 * operations per product instruction at d128) */
SC_T_BF16 SC_INL void qkt_block(const uint32_t *qb, const uint32_t *kT, float *s, int64_t r0, int nr, int64_t n,
                                int64_t P2, int64_t TL) {
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int rr = 0; rr < 8; rr++) acc[rr][0] = acc[rr][1] = _mm512_setzero_ps();
    for (int64_t cp = 0; cp < P2; cp++) {
        const __m512i k0 = _mm512_load_si512(kT + cp * BF_KEYS), k1 = _mm512_load_si512(kT + cp * BF_KEYS + 16);
#pragma GCC unroll 8
        for (int rr = 0; rr < 8; rr++) {
            if (rr >= nr) break;
            const __m512i qv = _mm512_set1_epi32((int)qb[(r0 + rr) * P2 + cp]);
            SC_DPBF16(acc[rr][0], qv, k0);
            SC_DPBF16(acc[rr][1], qv, k1);
        }
    }
    const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
    const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
#pragma GCC unroll 8
    for (int rr = 0; rr < 8; rr++) {
        if (rr >= nr) break;
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL, m0, acc[rr][0]);
        _mm512_mask_storeu_ps(s + (r0 + rr) * TL + 16, m1, acc[rr][1]);
    }
}

/* A K chunk of n (<= BF_KEYS) fp32 rows as kT [channel pair][BF_KEYS keys]
 * of bf16 pairs (keys past n: zeros); kb: a [BF_KEYS][128] scratch */
SC_T_BF16 SC_INL void bf_pack_k(const float *kt, int64_t n, int64_t D, uint32_t *kb, uint32_t *kT) {
    to_bf16(kt, (uint16_t *)kb, n * D);
    transpose_keys(kb, n, D / 2, kT);
}
/* the scores of R rows over one packed K chunk of n keys */
SC_T_BF16 SC_INL void qk_bf16_chunk(const uint32_t *qb, const uint32_t *kT, float *s, int64_t R, int64_t n,
                                    int64_t P2, int64_t TL) {
    int64_t r0 = 0;
    for (; r0 + 8 <= R; r0 += 8) qkt_block(qb, kT, s, r0, 8, n, P2, TL);
    if (r0 < R) qkt_block(qb, kT, s, r0, (int)(R - r0), n, P2, TL);
}

SC_T_BF16 static void qk_bf16(const float *q, const float *kt, float *s, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    uint32_t qb[ROWS_MAX * 128] __attribute__((aligned(64))); /* [row][channel pair] */
    uint32_t kb[BF_KEYS * 128] __attribute__((aligned(64))); /* [key][channel pair] */
    uint32_t kT[128 * BF_KEYS] __attribute__((aligned(64))); /* [channel pair][key] */
    /* the item's queries, converted again for every tile (qk_fn carries no
     * per-item state): R x D conversions against R x 32 x D products; a
     * build that converted them once per item measured the same ratio to
     * the fp32 path (1.46x vs 1.44x) */
    to_bf16(q, (uint16_t *)qb, R * D);
    for (int64_t j0 = 0; j0 < nt; j0 += BF_KEYS) {
        const int64_t n = nt - j0 < BF_KEYS ? nt - j0 : BF_KEYS;
        bf_pack_k(kt + j0 * D, n, D, kb, kT);
        qk_bf16_chunk(qb, kT, s + j0, R, n, D / 2, TL);
    }
}

/* O[r0..r0+nr) [c0, c0+64) += P V over npair key pairs: vp [pair][D] dwords (v_j, v_j+1), pb [row][pair] */
SC_T_BF16 SC_INL void pvb16_block(const uint32_t *vp, const uint32_t *pb, float *o, int64_t r0, int64_t nr,
                                  int64_t c0, int64_t nv, int64_t npair, int64_t D, int64_t PS) {
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int rr = 0; rr < 4; rr++)
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            acc[rr][u] = rr < nr && u < nv ? _mm512_loadu_ps(o + (r0 + rr) * D + c0 + 16 * u) : _mm512_setzero_ps();
    for (int64_t jp = 0; jp < npair; jp++) {
        __m512i x[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            x[u] = u < nv ? _mm512_loadu_si512(vp + jp * D + c0 + 16 * u) : _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const __m512i pv = _mm512_set1_epi32((int)pb[(r0 + rr) * PS + jp]);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
                if (u < nv) SC_DPBF16(acc[rr][u], pv, x[u]);
        }
    }
#pragma GCC unroll 4
    for (int rr = 0; rr < 4; rr++)
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            if (rr < nr && u < nv) _mm512_storeu_ps(o + (r0 + rr) * D + c0 + 16 * u, acc[rr][u]);
}

/* A V chunk of n (<= BF_KEYS) fp32 rows as vp [pair][D]: dword c of pair jp
 * holds (v_2jp[c], v_2jp+1[c]) as bf16 (an odd last key pairs with zeros) */
SC_T_BF16 SC_INL void bf_pack_v(const float *vt, int64_t n, int64_t D, uint32_t *vp) {
    const int64_t npair = (n + 1) / 2;
    for (int64_t jp = 0; jp < npair; jp++) {
        const float *a = vt + 2 * jp * D, *b = a + D;
        const int odd = 2 * jp + 1 >= n;
        for (int64_t c = 0; c < D; c += 16) {
            const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(a + c)));
            const __m512i hi = odd ? _mm512_setzero_si512()
                                   : _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(b + c)));
            _mm512_storeu_si512(vp + jp * D + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}
/* O += P V for R rows over one packed V chunk of n keys (p: the chunk's first key) */
SC_T_BF16 SC_INL void pv_bf16_chunk(const float *p, const uint32_t *vp, uint32_t *pb, float *o, int64_t R, int64_t n,
                                    int64_t D, int64_t TL) {
    const int64_t PS = BF_KEYS / 2, npair = (n + 1) / 2;
    for (int64_t r = 0; r < R; r++) { /* P pairs: bf16 of p_j in the low half, p_j+1 in the high one */
        const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
        const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
        const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, p + r * TL + 16),
                                               _mm512_maskz_loadu_ps(m0, p + r * TL));
        _mm512_storeu_si512(pb + r * PS, (__m512i)x);
    }
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int64_t nr = R - r0 < 4 ? R - r0 : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 64) {
            const int64_t nv = (D - c0) / 16 < 4 ? (D - c0) / 16 : 4;
            if (nr == 4 && nv == 4) pvb16_block(vp, pb, o, r0, 4, c0, 4, npair, D, PS);
            else pvb16_block(vp, pb, o, r0, nr, c0, nv, npair, D, PS);
        }
    }
}

SC_T_BF16 static void pv_bf16(const float *p, const float *vt, float *o, int64_t R, int64_t nt, int64_t D, int64_t TL) {
    uint32_t vp[(BF_KEYS / 2) * 256] __attribute__((aligned(64))); /* [pair][channel]: (v_j, v_j+1) as bf16 */
    uint32_t pb[ROWS_MAX * (BF_KEYS / 2)] __attribute__((aligned(64)));
    for (int64_t j0 = 0; j0 < nt; j0 += BF_KEYS) {
        const int64_t n = nt - j0 < BF_KEYS ? nt - j0 : BF_KEYS;
        bf_pack_v(vt + j0 * D, n, D, vp);
        pv_bf16_chunk(p + j0, vp, pb, o, R, n, D, TL);
    }
}

/* Prefill items share K and V tiles: with several row blocks per kv head
 * (attention.c) every tile is converted once per call into c->bfk / c->bfv,
 * [kv row][tile][BF_CHUNK_WORDS(D) per BF_KEYS keys] (the layouts bf_pack_k
 * and bf_pack_v write), instead of decoded and converted by every row block
 * that reads it. The packed chunks hold the bf16 values the per-item path
 * converts, so the products are the same. */
SC_T_BF16 void sc_attn_bf_prepack(const attn_ctx *c, int64_t t, attn_ws *w) {
    const sc_attention_args *a = c->a;
    const int64_t kr = t / c->bf_tiles, j0 = (t % c->bf_tiles) * c->tile, b = kr / c->Hkv, hk = kr % c->Hkv;
    const int64_t n_b = a->kv_lens ? a->kv_lens[b] : c->N, D = c->D;
    if (j0 >= n_b) return; /* no item reads it */
    const int64_t nt = n_b - j0 < c->tile ? n_b - j0 : c->tile;
    uint32_t kb[BF_KEYS * 128] __attribute__((aligned(64)));
    /* either may be NULL: the items then take it in integers (c->k_q8_rows, c->v_q8_rows) */
    uint32_t *kd = c->bfk ? c->bfk + (size_t)t * c->bf_tile_words : NULL;
    uint32_t *vd = c->bfv ? c->bfv + (size_t)t * c->bf_tile_words : NULL;
    if (kd) {
        load_tile(c->rk, a->k_tensor, w->kd, b, hk, kr, j0, nt, w->kt);
        for (int64_t j = 0; j < nt; j += BF_KEYS)
            bf_pack_k(w->kt + j * D, nt - j < BF_KEYS ? nt - j : BF_KEYS, D, kb, kd + (j / BF_KEYS) * BF_CHUNK_WORDS(D));
    }
    if (vd) {
        load_tile(c->rk, a->v_tensor, w->vd, b, hk, kr, j0, nt, w->vt);
        for (int64_t j = 0; j < nt; j += BF_KEYS)
            bf_pack_v(w->vt + j * D, nt - j < BF_KEYS ? nt - j : BF_KEYS, D, vd + (j / BF_KEYS) * BF_CHUNK_WORDS(D));
    }
}
/* qk_bf16 / pv_bf16 over a prepacked tile; the queries converted once per
 * item (sc_attn_bf_q; qk_bf16 converts them for every tile) */
SC_T_BF16 void sc_attn_bf_q(const float *q, uint32_t *qb, int64_t n) { to_bf16(q, (uint16_t *)qb, n); }
SC_T_BF16 void sc_attn_bf_qk(const uint32_t *qb, const uint32_t *kT, float *s, int64_t R, int64_t nt, int64_t D,
                             int64_t TL) {
    for (int64_t j0 = 0; j0 < nt; j0 += BF_KEYS)
        qk_bf16_chunk(qb, kT + (j0 / BF_KEYS) * BF_CHUNK_WORDS(D), s + j0, R, nt - j0 < BF_KEYS ? nt - j0 : BF_KEYS,
                      D / 2, TL);
}
SC_T_BF16 void sc_attn_bf_pv(const float *p, const uint32_t *vp, float *o, int64_t R, int64_t nt, int64_t D,
                             int64_t TL) {
    uint32_t pb[ROWS_MAX * (BF_KEYS / 2)] __attribute__((aligned(64)));
    for (int64_t j0 = 0; j0 < nt; j0 += BF_KEYS)
        pv_bf16_chunk(p + j0, vp + (j0 / BF_KEYS) * BF_CHUNK_WORDS(D), pb, o, R, nt - j0 < BF_KEYS ? nt - j0 : BF_KEYS,
                      D, TL);
}

SC_T_BF16 void sc_attn_item_avx512bf16(const attn_ctx *c, int64_t i, attn_ws *w) {
    if (c->rows > Q8_MAX_ROWS && c->rows <= ROWS_MAX && c->D <= 256) /* prefill items: bf16 products */
        attn_item_body(c, i, w, qk_bf16, pv_bf16, sm_avx512, NULL, NULL, ldq_avx512, qk8_vnni, pv8_vnni, NULL);
    else
        attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_vnni,
                       pv8_vnni, NULL);
}

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
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx512vnni,avx2,fma,f16c,amx-tile,amx-bf16")))
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
 * exceeds it by more than SM_LAZY (log2 units); below that p = 2^(s - m) may
 * reach 2^SM_LAZY, which fp32/bf16 hold exactly as well, and O^T (strided,
 * all of it in L2) is rescaled only in the rare tiles that move a max.
 * Measured: the eager rescale was the hottest loop of the AMX prefill. */
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
        __mmask16 nfm = 0;
        const int64_t n4 = (nt + 3) / 4 * 4;
        for (int64_t j = 0; j < n4; j += 4) {
            const __m512i jv = _mm512_set1_epi32((int32_t)j);
            const __mmask16 k0 = _mm512_cmpgt_epi32_mask(vis, jv);
            const __mmask16 k1 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(1)));
            const __mmask16 k2 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(2)));
            const __mmask16 k3 = _mm512_cmpgt_epi32_mask(vis, _mm512_add_epi32(jv, _mm512_set1_epi32(3)));
            const __m512 x0 = _mm512_load_ps(st + j * 16), x1 = _mm512_load_ps(st + (j + 1) * 16);
            const __m512 x2 = _mm512_load_ps(st + (j + 2) * 16), x3 = _mm512_load_ps(st + (j + 3) * 16);
            m0 = _mm512_mask_max_ps(m0, k0, m0, x0);
            m1 = _mm512_mask_max_ps(m1, k1, m1, x1);
            m2 = _mm512_mask_max_ps(m2, k2, m2, x2);
            m3 = _mm512_mask_max_ps(m3, k3, m3, x3);
            /* visible NaN / +-Inf scores (fpclass 0x99: QNaN, SNaN, +Inf, -Inf): NF_S */
            nfm |= _mm512_mask_fpclass_ps_mask(k0, x0, 0x99) | _mm512_mask_fpclass_ps_mask(k1, x1, 0x99) |
                   _mm512_mask_fpclass_ps_mask(k2, x2, 0x99) | _mm512_mask_fpclass_ps_mask(k3, x3, 0x99);
        }
        if (nfm) w->nf |= NF_S;
        const __m512 mx = _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3));
        const __m512 mold = _mm512_loadu_ps(w->m + rb * 16);
        /* move the reference where the tile's max exceeds it by > SM_LAZY (or there was none) */
        const __mmask16 move = _mm512_cmp_ps_mask(mx, _mm512_add_ps(mold, _mm512_set1_ps(SM_LAZY)), _CMP_GT_OQ) |
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
SC_T_AMX void sc_attn_mx_prepack(const attn_ctx *c, int64_t t, attn_ws *w) {
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

SC_T_AMX void sc_attn_item_amx(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk44_avx512, pv_avx512, sm_avx512, qkd_avx512, pvd_avx512, ldq_avx512, qk8_vnni,
                   pv8_vnni, &mx_amx);
}
#endif

