/*
 * qk_vnni256.h -- integer decode (scores and PV) on 256-bit vectors for the avx2
 * level of CPUs with AVX-VNNI (Intel client cores without AVX-512: Alder
 * Lake and later). Included twice by attention_x86.c:
 *
 *   VN_T    the target attribute,
 *   VN(x)   the instance's name for x,
 *   VN_PFX  "{vex} " for the AVX-VNNI (VEX) encoding of vpdpwssd/vpdpbusd,
 *           "" for their AVX512-VNNI/VL (EVEX) encoding: the same operation
 *           on the same registers. The EVEX twin runs where AVX-VNNI does
 *           not (this project's CI machine: AVX512-VNNI, no AVX-VNNI) when
 *           SAGECORE_AVXVNNI=evex, so the code that ships for AVX-VNNI is
 *           tested bit for bit, only its encoding is not.
 *
 * The kernels are the 512-bit k16 ones (qkw16_block, qkb16_block) on half
 * blocks: bytes 32h..32h+31 of a k16 word vector are the same 4-byte word of
 * keys 8h..8h+7, so one 256-bit load holds 4 (int8) or 8 (int4) channels of
 * 8 keys, and each product takes one broadcast q' pair (int8 codes, 16-bit
 * q', vpdpwssd) or quadruple (int4 codes, 8-bit q', vpdpbusd) and yields 8
 * partial scores in the lanes. q' is rounded as the 512-bit path rounds it,
 * so the integer sums are the avx512_vnni level's (and so are the scores,
 * but for the order of the fp32 sum q . m of int4 zero points).
 * PV (VN(pv8)) takes pvw_block's 16-bit P' scheme on 16 channels at a time,
 * for int8 V and symmetric int4 V (the 512-bit level's 8-bit P' for int4 at
 * "int8" is not ported: "int8" permits, never demands).
 */

#ifndef PVW_TL
#define PVW_TL 256 /* keys per tile at most (TILE_KEYS_INT4B8; attention_x86.c) */
#endif

/* acc += a . the int16 pair (wssd) / int8 quadruple (busd, a unsigned) at p, broadcast */
#define VN_DP_B(op, acc, a, p)                                                                   \
    do {                                                                                         \
        const __m256i b_ = _mm256_set1_epi32(*(const int32_t *)(p));                             \
        __asm__(VN_PFX op " %2, %1, %0" : "+x"(acc) : "x"(a), "x"(b_));                          \
    } while (0)

/* 4 rows x the nk (<= 8) keys of half h of a 16-key block of int8 codes; q'
 * stored [0, 2, 1, 3] per 4 channels (even bytes of a word: channels 4w,
 * 4w + 2; odd: 4w + 1, 4w + 3) */
VN_T static inline __attribute__((always_inline)) void VN(qkw8_block)(const int16_t *qw, const float *ar,
                                                                      const uint8_t *blk, int h, int nk, float *s,
                                                                      int64_t r0, int64_t D, int64_t TL,
                                                                      const int nr) {
    const uint8_t *k = blk + 32 * h;
    __m256i ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm256_setzero_si256();
    for (int64_t w = 0; w < D / 4; w++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(k + 64 * w));
        const __m256i lo = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8), hi = _mm256_srai_epi16(v, 8);
        for (int rr = 0; rr < nr; rr++) {
            const int16_t *qe = qw + (r0 + rr) * D + 4 * w;
            VN_DP_B("vpdpwssd", ae[rr], lo, qe);
            VN_DP_B("vpdpwssd", ao[rr], hi, qe + 2);
        }
    }
    const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32(nk), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int rr = 0; rr < nr; rr++)
        _mm256_maskstore_ps(s + (r0 + rr) * TL + 8 * h, km,
                            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(ae[rr], ao[rr])),
                                          _mm256_set1_ps(ar[r0 + rr])));
}

/* the same for int4 codes (unsigned nibbles) against 8-bit q' stored [even |
 * odd] per qblk channels, rows Dq apart (D rounded up to 64: the padding's
 * q' is 0 and no word reaches it): score = (sum - bias) x ar + fb */
VN_T static inline __attribute__((always_inline)) void VN(qkb8_block)(const int8_t *qb, const float *ar,
                                                                      const int32_t *bias, const float *fb,
                                                                      const uint8_t *blk, int h, int nk, float *s,
                                                                      int64_t r0, int64_t D, int64_t Dq, int64_t TL,
                                                                      const int qblk, const int nr) {
    const uint8_t *k = blk + 32 * h;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i ae[4], ao[4];
    for (int rr = 0; rr < 4; rr++) ae[rr] = ao[rr] = _mm256_setzero_si256();
    for (int64_t w = 0; w < D / 8; w++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(k + 64 * w));
        const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        const int64_t cb = (8 * w) / qblk, wq = 4 * w - cb * (qblk / 2); /* q' block, byte in its even half */
        for (int rr = 0; rr < nr; rr++) {
            const int8_t *qe = qb + (r0 + rr) * Dq + cb * qblk + wq;
            VN_DP_B("vpdpbusd", ae[rr], lo, qe);
            VN_DP_B("vpdpbusd", ao[rr], hi, qe + qblk / 2);
        }
    }
    const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32(nk), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int rr = 0; rr < nr; rr++) {
        const __m256i acc = _mm256_sub_epi32(_mm256_add_epi32(ae[rr], ao[rr]), _mm256_set1_epi32(bias[r0 + rr]));
        _mm256_maskstore_ps(s + (r0 + rr) * TL + 8 * h, km,
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(ar[r0 + rr]),
                                            _mm256_set1_ps(fb[r0 + rr])));
    }
}

/* q' of one row: x = q x s (D floats) times inv, rounded to int32 as
 * vcvtps2dq does (to nearest even), then stored as int16 [0, 2, 1, 3] per 4
 * channels (i16) or int8 [even | odd] per qblk channels (returns sum(q')) */
VN_T static inline __attribute__((always_inline)) int32_t VN(round_row)(const float *x, float inv, int64_t D,
                                                                        int i16, int qblk, void *dst) {
    const __m256 vi = _mm256_set1_ps(inv);
    __m256i sum = _mm256_setzero_si256();
    for (int64_t ch = 0; ch < D; ch += 32) {
        __m256i y[4];
        for (int u = 0; u < 4; u++) {
            y[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + ch + 8 * u), vi));
            sum = _mm256_add_epi32(sum, y[u]);
        }
        if (i16) { /* 16 channels: packs (per 128-bit lane) + vpermq = channel order, then [0, 2, 1, 3] per 4 */
            const __m256i p0213 = _mm256_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15,
                                                   0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
            for (int hh = 0; hh < 2; hh++) {
                const __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(y[2 * hh], y[2 * hh + 1]), 0xD8);
                _mm256_storeu_si256((__m256i *)((int16_t *)dst + ch + 16 * hh), _mm256_shuffle_epi8(p, p0213));
            }
        } else { /* 32 channels to bytes in order, then 16 even ones and 16 odd ones */
            const __m256i b = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(_mm256_packs_epi32(y[0], y[1]), _mm256_packs_epi32(y[2], y[3])),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            const __m256i eo = _mm256_permute4x64_epi64(
                _mm256_shuffle_epi8(b, _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                                        0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15)),
                0xD8); /* [even 0-30 | odd 1-31] */
            const int64_t b0 = ch / qblk * qblk;
            int8_t *d8 = (int8_t *)dst + b0 + (ch - b0) / 2;
            _mm_storeu_si128((__m128i *)d8, _mm256_castsi256_si128(eo));
            _mm_storeu_si128((__m128i *)(d8 + qblk / 2), _mm256_extracti128_si256(eo, 1));
        }
    }
    const __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    const __m128i s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
}

/* The avx2 level's qk8 with integer scores for k16 stores: int8 codes at
 * precision "bf16"/"int8" (16-bit q'), int4 codes at "int8" (8-bit q'), rows
 * in fours and the last 1-3 alone (MHA: 1); everything else goes to
 * qk8_avx2. */
VN_T static void VN(qk8)(const attn_ctx *c, int mode, const float *q, float *qf, float *sc, int64_t kr, int64_t j0,
                         int64_t nt, float *s) {
    const sc_format *f = c->a->kf;
    const int kind = code_kind(f);
    const int64_t D = c->D, R = c->rows, TL = c->tile, T = f->token_group;
    const int i8 = kind == 2 && c->a->precision >= SC_PRECISION_BF16;
    const int i4 = (kind == 3 || kind == 4) && c->a->precision >= SC_PRECISION_INT8 && D % 16 == 0;
    if (mode != 1 || f->layout != SC_LAYOUT_K16 || !(i8 || i4) || R > Q8_MAX_ROWS || D > 256 || j0 % 16) {
        qk8_avx2(c, mode, q, qf, sc, kr, j0, nt, s);
        return;
    }
    const sc_store *st = c->a->k;
    const int sf32 = f->scale_dtype == SC_DTYPE_F32;
    const int64_t rb = i8 ? D : D / 2;
    const uint8_t *row0 = (const uint8_t *)st->data + kr * st->capacity * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    /* int4: q' rows of Dq = D rounded up to 64 (zeros past D; d80, d96: qkb8_block's words stop at D) */
    const int64_t Dq = i8 ? D : (D + 63) / 64 * 64;
    const int qblk = Dq % 128 == 0 ? 128 : 64;
    float ar[Q8_MAX_ROWS], fb[Q8_MAX_ROWS] = {0}, zf[256], x[256];
    for (int64_t ch = D; ch < Dq; ch++) x[ch] = 0.0f;
    int32_t bias[Q8_MAX_ROWS] = {0};
    for (int64_t t = 0; t < nt;) {
        const int64_t g = (j0 + t) / T, n = (g + 1) * T - (j0 + t) < nt - t ? (g + 1) * T - (j0 + t) : nt - t;
        const int64_t cell0 = group_scales(c, st, sf32, kr, g, T, D, sc, 1);
        if (kind == 4) {
            const sc_store zs = {.scales = st->zeros};
            store_scales(c, &zs, sf32, cell0, D, zf);
        }
        for (int64_t r = 0; r < R; r++) {
            __m256 mx = _mm256_setzero_ps(), bz = _mm256_setzero_ps();
            const __m256 sign = _mm256_set1_ps(-0.0f);
            for (int64_t ch = 0; ch < D; ch += 8) {
                const __m256 qv = _mm256_loadu_ps(q + r * D + ch), y = _mm256_mul_ps(qv, _mm256_loadu_ps(sc + ch));
                _mm256_storeu_ps(x + ch, y);
                mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, y));
                if (kind == 4) bz = _mm256_fmadd_ps(qv, _mm256_loadu_ps(zf + ch), bz);
            }
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            const float top = i8 ? 32767.0f : 127.0f;
            ar[r] = m * (1.0f / top);
            const int32_t qs = VN(round_row)(x, m > 0.0f ? top / m : 0.0f, Dq, i8, qblk, i8 ? (void *)((int16_t *)qf + r * D)
                                                                                          : (void *)((int8_t *)qf + r * Dq));
            if (i4) {
                bias[r] = kind == 3 ? 8 * qs : 0; /* symmetric codes are stored + 8 */
                if (kind == 4) {
                    __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(bz), _mm256_extractf128_ps(bz, 1));
                    b4 = _mm_add_ps(b4, _mm_movehl_ps(b4, b4));
                    fb[r] = _mm_cvtss_f32(_mm_add_ss(b4, _mm_movehdup_ps(b4)));
                }
            }
        }
        for (int64_t j = 0; j < n; j += 16) {
            const int64_t jj = j0 + t + j;
            const uint8_t *blk = row0 + jj * rb;
            if (pfend) pf_span((const char *)blk + PF_KEYS * rb, 16 * rb, pfend);
            for (int hh = 0; hh < 2; hh++) {
                const int nk = (int)(n - j - 8 * hh < 8 ? n - j - 8 * hh : 8);
                if (nk <= 0) break;
                for (int64_t r0 = 0; r0 < R; r0 += 4) {
                    const int nr = R - r0 < 4 ? (int)(R - r0) : 4;
#define VN_ROWS(N)                                                                                                     \
    do {                                                                                                               \
        if (i8) VN(qkw8_block)((const int16_t *)qf, ar, blk, hh, nk, s + t + j, r0, D, TL, N);                          \
        else if (qblk == 128)                                                                                          \
            VN(qkb8_block)((const int8_t *)qf, ar, bias, fb, blk, hh, nk, s + t + j, r0, D, Dq, TL, 128, N);            \
        else VN(qkb8_block)((const int8_t *)qf, ar, bias, fb, blk, hh, nk, s + t + j, r0, D, Dq, TL, 64, N);            \
    } while (0)
                    switch (nr) { /* the row count a constant in each instance */
                    case 1: VN_ROWS(1); break;
                    case 2: VN_ROWS(2); break;
                    case 3: VN_ROWS(3); break;
                    default: VN_ROWS(4);
                    }
#undef VN_ROWS
                }
            }
        }
        t += n;
    }
}

/* PV in integers (pvw_block's scheme on 256 bits): rows r0..r0+nr (nr <= 4)
 * x 16 channels c0.. of V over the tile's key pairs. Per pair, the two keys'
 * 16 codes interleaved (int8: vpunpck[lh]bw then sign-extended; int4, stored
 * + 8: nibbles split, 8 taken off, even/odd channels interleaved back into
 * order, then the two keys interleaved by word) give 8 + 8 int16 pairs
 * (v_j[c], v_j+1[c]) in channel order; one vpdpwssd each per row against the
 * broadcast (p'_j, p'_j+1) of the 32-channel cell, int32 sums exact; O gains
 * sum x ps[row] once per tile. */
VN_T static inline __attribute__((always_inline)) void VN(pvw16_block)(const uint8_t *v, const int16_t *pq,
                                                                       const float *ps, float *o, int64_t r0,
                                                                       const int nr, int64_t c0, int64_t npair,
                                                                       int64_t nt, int64_t D, int64_t n32,
                                                                       int64_t TLp, const char *pfend,
                                                                       const int i4) {
    static const uint8_t zero[32] __attribute__((aligned(32)));
    const int64_t rb = i4 ? D / 2 : D, cl = n32 == 1 ? 0 : c0 / 32; /* n32 1: one P' cell */
    __m256i acc[4][2];
    for (int rr = 0; rr < 4; rr++) acc[rr][0] = acc[rr][1] = _mm256_setzero_si256();
    const char *pf = (const char *)v + PF_KEYS * rb;
    for (int64_t jp = 0; jp < npair; jp++) {
        const int64_t j = 2 * jp;
        const uint8_t *va = v + j * rb, *vb = jp + 1 < npair || !(nt & 1) ? v + (j + 1) * rb : zero;
        if (r0 == 0 && c0 == 0 && pfend && pf + 2 * rb <= pfend) { /* keys j, j + 1, PF_KEYS ahead */
            for (int64_t l = 0; l < rb; l += 64) {
                _mm_prefetch(pf + l, PF_HINT);
                _mm_prefetch(pf + rb + l, PF_HINT);
            }
        }
        pf += 2 * rb;
        __m256i x0, x1;
        if (!i4) {
            const __m128i a = _mm_loadu_si128((const __m128i *)(va + c0)),
                          b = _mm_loadu_si128((const __m128i *)(vb == zero ? zero : vb + c0));
            x0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b)); /* channels c0 .. c0 + 7 */
            x1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b)); /* c0 + 8 .. c0 + 15 */
        } else {
            const __m128i m4 = _mm_set1_epi16(0x0F), eight = _mm_set1_epi16(8);
            __m128i k[2][2]; /* [key][half]: 8 codes as int16, in channel order */
            for (int u = 0; u < 2; u++) {
                const uint8_t *src = u ? (vb == zero ? zero : vb + c0 / 2) : va + c0 / 2;
                const __m128i wv = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)src));
                const __m128i e = _mm_sub_epi16(_mm_and_si128(wv, m4), eight), od = _mm_sub_epi16(_mm_srli_epi16(wv, 4), eight);
                k[u][0] = _mm_unpacklo_epi16(e, od);
                k[u][1] = _mm_unpackhi_epi16(e, od);
            }
            x0 = _mm256_set_m128i(_mm_unpackhi_epi16(k[0][0], k[1][0]), _mm_unpacklo_epi16(k[0][0], k[1][0]));
            x1 = _mm256_set_m128i(_mm_unpackhi_epi16(k[0][1], k[1][1]), _mm_unpacklo_epi16(k[0][1], k[1][1]));
        }
        for (int rr = 0; rr < 4; rr++) {
            if (rr >= nr) break;
            const int16_t *pr = pq + ((r0 + rr) * n32 + cl) * TLp + j;
            VN_DP_B("vpdpwssd", acc[rr][0], x0, pr);
            VN_DP_B("vpdpwssd", acc[rr][1], x1, pr);
        }
    }
    for (int rr = 0; rr < 4; rr++) {
        if (rr >= nr) break;
        float *orow = o + (r0 + rr) * D + c0;
        const __m256 sc = _mm256_set1_ps(ps[r0 + rr]);
        _mm256_storeu_ps(orow, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[rr][0]), sc, _mm256_loadu_ps(orow)));
        _mm256_storeu_ps(orow + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[rr][1]), sc, _mm256_loadu_ps(orow + 8)));
    }
}

/* The avx2 level's pv8 with integer products (16-bit P' per row and
 * 32-channel cell, rounded against the row's largest P' in the tile: the
 * 512-bit pv8_vnni's rounding) for int8 V and symmetric int4 V with
 * per-token scales over whole 32-channel cells (or one cell per token: one
 * P' per key, any head dim a multiple of 16, e.g. d80); else pv8_avx2. */
VN_T static void VN(pv8)(const attn_ctx *c, float *sc, int64_t kr, int64_t j0, int64_t nt, const float *p, float *o) {
    const sc_format *f = c->a->vf;
    const int64_t D = c->D, R = c->rows, G = f->channel_group, TL = c->tile;
    const int kind = code_kind(f);
    /* cells of 32 channels, or one per token (G = D) with D any multiple of 16: the blocks are of 16 */
    const int dims = G == D ? D % 16 == 0 : G % 32 == 0 && D % 32 == 0;
    if (c->a->precision < SC_PRECISION_BF16 || (kind != 2 && kind != 3) || !dims || D > 256 || TL > PVW_TL ||
        R > 16) {
        pv8_avx2(c, sc, kr, j0, nt, p, o);
        return;
    }
    const sc_store *st = c->a->v;
    /* P' cells: of 32 channels, or one for a scale per token (G = D) */
    const int64_t ncell = D / G, n32 = ncell == 1 ? 1 : D / 32, TLp = PVW_TL, npair = (nt + 1) / 2, rb = kind == 2 ? D : D / 2;
    token_scales(c, st, f->scale_dtype == SC_DTYPE_F32, kr, j0, nt, ncell, sc, 1);
    const uint8_t *codes = (const uint8_t *)st->data + (kr * st->capacity + j0) * rb;
    const char *pfend = (const char *)st->data + (kr + 1) * st->capacity * rb;
    int16_t pq[16 * 8 * PVW_TL] __attribute__((aligned(32))); /* [row][cell of 32][key] */
    float sT[8][PVW_TL] __attribute__((aligned(32)));           /* per cell of 32 channels, per key */
    float pp[8][PVW_TL] __attribute__((aligned(32)));
    float ps[16];
    const int64_t n8 = (nt + 15) / 16 * 16; /* keys rounded up: P' of keys past nt is 0 */
    for (int64_t cl = 0; cl < n32; cl++)
        for (int64_t j = 0; j < n8; j++) sT[cl][j] = j < nt ? sc[j * ncell + 32 * cl / G] : 0.0f;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t r = 0; r < R; r++) {
        __m256 mx = _mm256_setzero_ps();
        for (int64_t j = 0; j < n8; j += 8) {
            const __m256i km = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(nt - j)), lane);
            const __m256 pv = _mm256_maskload_ps(p + r * TL + j, km);
            for (int64_t cl = 0; cl < n32; cl++) { /* p, s >= 0 */
                const __m256 x = _mm256_mul_ps(pv, _mm256_load_ps(&sT[cl][j]));
                _mm256_store_ps(&pp[cl][j], x);
                mx = _mm256_max_ps(mx, x);
            }
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float m = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        ps[r] = m * (1.0f / 32767.0f);
        const __m256 inv = _mm256_set1_ps(m > 0.0f ? 32767.0f / m : 0.0f);
        for (int64_t cl = 0; cl < n32; cl++)
            for (int64_t j = 0; j < n8; j += 16) {
                const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(&pp[cl][j]), inv));
                const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(&pp[cl][j + 8]), inv));
                _mm256_store_si256((__m256i *)(pq + (r * n32 + cl) * TLp + j),
                                   _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
            }
    }
    for (int64_t r0 = 0; r0 < R; r0 += 4) {
        const int nr = R - r0 < 4 ? (int)(R - r0) : 4;
        for (int64_t c0 = 0; c0 < D; c0 += 16) /* the row count and kind constants in each instance */
            if (kind == 2) {
                if (nr == 4) VN(pvw16_block)(codes, pq, ps, o, r0, 4, c0, npair, nt, D, n32, TLp, pfend, 0);
                else VN(pvw16_block)(codes, pq, ps, o, r0, nr, c0, npair, nt, D, n32, TLp, pfend, 0);
            } else {
                if (nr == 4) VN(pvw16_block)(codes, pq, ps, o, r0, 4, c0, npair, nt, D, n32, TLp, pfend, 1);
                else VN(pvw16_block)(codes, pq, ps, o, r0, nr, c0, npair, nt, D, n32, TLp, pfend, 1);
            }
    }
}

VN_T void VN(sc_attn_item)(const attn_ctx *c, int64_t i, attn_ws *w) {
    attn_item_body(c, i, w, qk_avx2, pv_avx2, sm_avx2, qkd_avx2, pvd_avx2, ldq_avx2, VN(qk8), VN(pv8), NULL);
}
#undef VN_DP_B
