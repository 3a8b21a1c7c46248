// attention.metal -- streaming-softmax attention over every storage format.
//
//   sc_attn_vec     grid (splits, kv_heads * row_blocks, batch), 32 threads:
//                   one simdgroup holds up to SC_ATTN_MAX_ROWS query rows (the
//                   query heads of one GQA group x a block of query tokens),
//                   so each K/V element is read and dequantized once for the
//                   whole group. Lane l scores key j0 + l against every row
//                   (no reduction across lanes for QK); the tile's softmax
//                   uses one simd_max per row; P goes through threadgroup
//                   memory and each lane accumulates its channels of P V in
//                   fp32. With PARTIAL it writes split-K partials.
//   sc_attn_reduce  grid (kv_heads * row_blocks, batch), 32 threads: merges
//                   the partials (rescaling by exp2(m_s - m)) and finishes.
// Finishing a row: divide by the row sum (0 -> zeros), rotate V's domain
// back, add V's mean, store fp16 or fp32. Causal masking is right-aligned.
#include <metal_stdlib>
using namespace metal;

#include "sc_metal_args.h"

constant int fc_k_enc [[function_constant(SC_FC_K_ENC)]];
constant bool fc_k_zp [[function_constant(SC_FC_K_ZP)]];
constant bool fc_k_sf32 [[function_constant(SC_FC_K_SF32)]];
constant int fc_k_out [[function_constant(SC_FC_K_OUT)]];
constant bool fc_k_rot [[function_constant(SC_FC_K_ROT)]];
constant int fc_v_enc [[function_constant(SC_FC_V_ENC)]];
constant bool fc_v_zp [[function_constant(SC_FC_V_ZP)]];
constant bool fc_v_sf32 [[function_constant(SC_FC_V_SF32)]];
constant int fc_v_out [[function_constant(SC_FC_V_OUT)]];
constant bool fc_v_rot [[function_constant(SC_FC_V_ROT)]];
constant bool fc_v_smooth [[function_constant(SC_FC_V_SMOOTH)]];
constant bool fc_kv_f32 [[function_constant(SC_FC_KV_F32)]];
constant bool fc_q_f16 [[function_constant(SC_FC_Q_F16)]];
constant bool fc_o_f16 [[function_constant(SC_FC_O_F16)]];
constant bool fc_partial [[function_constant(SC_FC_PARTIAL)]];
constant int fc_k_layout [[function_constant(SC_FC_K_LAYOUT)]];
constant int fc_v_layout [[function_constant(SC_FC_V_LAYOUT)]];

#include "attention.h"

#define NCH 8 /* channels per lane: D <= 256 */

// o[0..NCH) (channels lane + 32 ci) of row r, unnormalized, with row sum L
static void finish_row(constant sc_attn_args &a, device void *out, device const float *v_mean,
                       threadgroup float *tmp, uint lane, int b, int hk, int r, int i0, thread const float *o,
                       float L) {
    const int D = a.head_dim, mb = a.rows_per_head;
    const int g = r / mb, ii = r % mb;
    // L == 0: no visible key (zeros); a NaN L (a non-finite score) stays NaN
    const bool live = L != 0.0f;
    const float inv = live ? 1.0f / L : 0.0f;
    for (int ci = 0; ci < NCH; ci++) {
        const int c = int(lane) + 32 * ci;
        if (c < D) tmp[c] = live ? o[ci] * inv : 0.0f;
    }
    if (fc_v_rot) sc::hadamard_simd(tmp, lane, D, a.rot_block, a.rot_norm);
    simdgroup_barrier(mem_flags::mem_threadgroup);
    const int kr = b * a.kv_heads + hk, h = hk * a.group + g;
    const long base = long(b) * a.o_sb + long(h) * a.o_sh + long(i0 + ii) * a.o_st;
    for (int ci = 0; ci < NCH; ci++) {
        const int c = int(lane) + 32 * ci;
        if (c >= D) continue;
        float v = tmp[c];
        if (fc_v_smooth && live) v = v + v_mean[long(kr) * D + c];
        if (fc_o_f16) ((device half *)out)[base + c] = half(v);
        else ((device float *)out)[base + c] = v;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
}

kernel void sc_attn_vec(device const void *q [[buffer(0)]], device void *out [[buffer(1)]],
                        device const void *k_data [[buffer(2)]], device const void *k_scales [[buffer(3)]],
                        device const void *k_zeros [[buffer(4)]], device const ushort *k_oidx [[buffer(5)]],
                        device const ushort *k_oval [[buffer(6)]], device const void *v_data [[buffer(7)]],
                        device const void *v_scales [[buffer(8)]], device const void *v_zeros [[buffer(9)]],
                        device const ushort *v_oidx [[buffer(10)]], device const ushort *v_oval [[buffer(11)]],
                        device const float *v_mean [[buffer(12)]], device const long *kv_lens [[buffer(13)]],
                        device float *part_o [[buffer(14)]], device float *part_ml [[buffer(15)]],
                        constant sc_attn_args &a [[buffer(16)]], threadgroup float *qs [[threadgroup(0)]],
                        threadgroup float *ps [[threadgroup(1)]], threadgroup float *tmp [[threadgroup(2)]],
                        uint3 tg [[threadgroup_position_in_grid]], uint lane [[thread_index_in_simdgroup]]) {
    const int D = a.head_dim, R = a.rows, mb = a.rows_per_head, M = a.q_len, Hkv = a.kv_heads;
    const int s_idx = int(tg.x), hk = int(tg.y) / a.row_blocks, rb = int(tg.y) % a.row_blocks, b = int(tg.z);
    const int kr = b * Hkv + hk;
    const int n_b = a.has_kv_lens ? int(kv_lens[b]) : a.kv_len;
    const int i0 = rb * mb, mrows = min(mb, M - i0);

    // queries in log2 units (rotated like K)
    for (int r = 0; r < R; r++) {
        const int g = r / mb, ii = r % mb;
        const long qb = long(b) * a.q_sb + long(hk * a.group + g) * a.q_sh + long(i0 + ii) * a.q_st;
        for (int c = int(lane); c < D; c += 32) {
            float x = 0.0f;
            if (ii < mrows) x = fc_q_f16 ? float(((device const half *)q)[qb + c]) : ((device const float *)q)[qb + c];
            qs[r * D + c] = x * a.qscale;
        }
        if (fc_k_rot) sc::hadamard_simd(qs + r * D, lane, D, a.rot_block, a.rot_norm);
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);

    // this split's keys, cut by the causal limit of the block's last row
    const int lo = s_idx * a.chunk;
    int hi = min(lo + a.chunk, n_b);
    if (a.causal) hi = min(hi, n_b - M + i0 + mrows);

    float m[SC_ATTN_MAX_ROWS], l[SC_ATTN_MAX_ROWS], o[SC_ATTN_MAX_ROWS][NCH];
    for (int r = 0; r < SC_ATTN_MAX_ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        for (int ci = 0; ci < NCH; ci++) o[r][ci] = 0.0f;
    }
    for (int j0 = lo; j0 < hi; j0 += 32) {
        const int j = j0 + int(lane);
        float s[SC_ATTN_MAX_ROWS];
        for (int r = 0; r < R; r++) s[r] = 0.0f;
        if (j < hi)
            for (int c = 0; c < D; c++) {
                const float kv = sc::kv_elem(fc_k_enc, fc_k_layout, fc_k_zp, fc_k_sf32, fc_k_out, fc_kv_f32, k_data, k_scales,
                                             k_zeros, k_oidx, k_oval, a.k_sb, a.k_sh, a.k_st, a.k_T, a.k_G,
                                             a.k_cap, a.k_row_bytes, D, Hkv, kr, j, c);
                for (int r = 0; r < R; r++) s[r] += qs[r * D + c] * kv;
            }
        for (int r = 0; r < R; r++) {
            const int ii = r % mb;
            const bool vis = j < hi && ii < mrows && (!a.causal || j <= n_b - M + i0 + ii);
            // a visible non-finite score (NaN/Inf in K, or overflow) becomes a NaN p,
            // so the row's output is NaN, which the host reports as an error; max()
            // alone would drop a NaN and -inf would read as a masked key
            const float sr = vis ? (isfinite(s[r]) ? s[r] : NAN) : -INFINITY;
            const float tmax = simd_max(sr);
            const float mnew = max(m[r], tmax);
            const float p = isnan(sr) ? sr : (mnew == -INFINITY || sr == -INFINITY) ? 0.0f : exp2(sr - mnew);
            const float alpha = (mnew == -INFINITY || m[r] == -INFINITY) ? (m[r] == mnew ? 1.0f : 0.0f)
                                                                       : exp2(m[r] - mnew);
            l[r] = l[r] * alpha + p;
            for (int ci = 0; ci < NCH; ci++) o[r][ci] *= alpha;
            m[r] = mnew;
            ps[r * 32 + int(lane)] = p;
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
        const int nk = min(32, hi - j0);
        for (int ci = 0; ci < NCH; ci++) {
            const int c = int(lane) + 32 * ci;
            if (c >= D) continue;
            for (int jj = 0; jj < nk; jj++) {
                const float v = sc::kv_elem(fc_v_enc, fc_v_layout, fc_v_zp, fc_v_sf32, fc_v_out, fc_kv_f32, v_data, v_scales,
                                            v_zeros, v_oidx, v_oval, a.v_sb, a.v_sh, a.v_st, a.v_T, a.v_G, a.v_cap,
                                            a.v_row_bytes, D, Hkv, kr, j0 + jj, c);
                for (int r = 0; r < R; r++) o[r][ci] += ps[r * 32 + jj] * v;
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }

    for (int r = 0; r < R; r++) {
        const float L = simd_sum(l[r]);
        if (fc_partial) {
            const long item = (long(b) * Hkv + hk) * a.row_blocks + rb;
            const long base = (item * a.splits + s_idx) * R + r;
            if (lane == 0) {
                part_ml[base * 2] = m[r];
                part_ml[base * 2 + 1] = L;
            }
            for (int ci = 0; ci < NCH; ci++) {
                const int c = int(lane) + 32 * ci;
                if (c < D) part_o[base * D + c] = o[r][ci];
            }
        } else if (r % mb < mrows) {
            finish_row(a, out, v_mean, tmp, lane, b, hk, r, i0, o[r], L);
        }
    }
}

kernel void sc_attn_reduce(device void *out [[buffer(1)]], device const float *v_mean [[buffer(12)]],
                           device const float *part_o [[buffer(14)]], device const float *part_ml [[buffer(15)]],
                           constant sc_attn_args &a [[buffer(16)]], threadgroup float *tmp [[threadgroup(2)]],
                           uint3 tg [[threadgroup_position_in_grid]], uint lane [[thread_index_in_simdgroup]]) {
    const int D = a.head_dim, R = a.rows, mb = a.rows_per_head, S = a.splits;
    const int hk = int(tg.x) / a.row_blocks, rb = int(tg.x) % a.row_blocks, b = int(tg.y);
    const int i0 = rb * mb, mrows = min(mb, a.q_len - i0);
    const long item = (long(b) * a.kv_heads + hk) * a.row_blocks + rb;
    for (int r = 0; r < R; r++) {
        if (r % mb >= mrows) continue;
        float mx = -INFINITY;
        for (int s = 0; s < S; s++) mx = max(mx, part_ml[((item * S + s) * R + r) * 2]);
        float o[NCH];
        for (int ci = 0; ci < NCH; ci++) o[ci] = 0.0f;
        float L = 0.0f;
        for (int s = 0; s < S; s++) {
            const long base = (item * S + s) * R + r;
            const float ms = part_ml[base * 2], ls = part_ml[base * 2 + 1];
            if (isnan(ls)) L = NAN; // a split saw a non-finite score: the row is NaN
            if (ms == -INFINITY) continue;
            const float f = exp2(ms - mx);
            L += ls * f;
            for (int ci = 0; ci < NCH; ci++) {
                const int c = int(lane) + 32 * ci;
                if (c < D) o[ci] += part_o[base * D + c] * f;
            }
        }
        finish_row(a, out, v_mean, tmp, lane, b, hk, r, i0, o, L);
    }
}

// ---------------------------------------------------------------- prefill
//   sc_attn_mma  grid (splits, kv_heads * row_blocks, batch), 128 threads:
//                4 simdgroups x 8 query rows (the GQA group's heads x a block
//                of query tokens, up to 32 rows); per tile of 16 keys the
//                tile-load stage dequantizes K into fp32 threadgroup memory
//                (every format through kv_elem), S = Q K^T and O += P V run
//                on simdgroup_float8x8 with fp32 accumulation, the online
//                softmax works on S in threadgroup memory (4 lanes per row).
#define MMA_SG 4
#define MMA_ROWS 32
#define MMA_BK 16
#define MMA_DB 32 /* head_dim / 8 <= 32 fragments */

kernel void sc_attn_mma(device const void *q [[buffer(0)]], device void *out [[buffer(1)]],
                        device const void *k_data [[buffer(2)]], device const void *k_scales [[buffer(3)]],
                        device const void *k_zeros [[buffer(4)]], device const ushort *k_oidx [[buffer(5)]],
                        device const ushort *k_oval [[buffer(6)]], device const void *v_data [[buffer(7)]],
                        device const void *v_scales [[buffer(8)]], device const void *v_zeros [[buffer(9)]],
                        device const ushort *v_oidx [[buffer(10)]], device const ushort *v_oval [[buffer(11)]],
                        device const float *v_mean [[buffer(12)]], device const long *kv_lens [[buffer(13)]],
                        device float *part_o [[buffer(14)]], device float *part_ml [[buffer(15)]],
                        constant sc_attn_args &a [[buffer(16)]], threadgroup float *tile [[threadgroup(0)]],
                        threadgroup float *st [[threadgroup(1)]], threadgroup float *stats [[threadgroup(2)]],
                        uint3 tg [[threadgroup_position_in_grid]], uint tid [[thread_index_in_threadgroup]],
                        uint sg [[simdgroup_index_in_threadgroup]], uint lane [[thread_index_in_simdgroup]]) {
    const int D = a.head_dim, R = a.rows, mb = a.rows_per_head, M = a.q_len, Hkv = a.kv_heads;
    const int s_idx = int(tg.x), hk = int(tg.y) / a.row_blocks, rb = int(tg.y) % a.row_blocks, b = int(tg.z);
    const int kr = b * Hkv + hk, ND = D / 8;
    const int n_b = a.has_kv_lens ? int(kv_lens[b]) : a.kv_len;
    const int i0 = rb * mb, mrows = min(mb, M - i0);
    threadgroup float *m_row = stats, *l_row = stats + MMA_ROWS, *alpha_row = stats + 2 * MMA_ROWS;

    // Q: staged 8 rows at a time (one simdgroup's) in the tile buffer, scaled
    // into log2 units and rotated like K, then held as 8x8 fragments
    simdgroup_float8x8 Qf[MMA_DB], Of[MMA_DB];
    for (int db = 0; db < MMA_DB; db++) Of[db] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    for (int s = 0; s < MMA_SG; s++) {
        if (int(sg) == s) {
            for (int i = 0; i < 8; i++) {
                const int r = s * 8 + i, g = r / mb, ii = r % mb;
                const bool ok = r < R && ii < mrows;
                const long qb = long(b) * a.q_sb + long(hk * a.group + g) * a.q_sh + long(i0 + ii) * a.q_st;
                for (int c = int(lane); c < D; c += 32) {
                    float x = 0.0f;
                    if (ok) x = fc_q_f16 ? float(((device const half *)q)[qb + c]) : ((device const float *)q)[qb + c];
                    tile[i * D + c] = x * a.qscale;
                }
                if (fc_k_rot) sc::hadamard_simd(tile + i * D, lane, D, a.rot_block, a.rot_norm);
            }
            simdgroup_barrier(mem_flags::mem_threadgroup);
            for (int db = 0; db < ND; db++) simdgroup_load(Qf[db], tile + db * 8, ulong(D));
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid < MMA_ROWS) {
        m_row[tid] = -INFINITY;
        l_row[tid] = 0.0f;
    }

    const int lo = s_idx * a.chunk;
    int hi = min(lo + a.chunk, n_b);
    if (a.causal) hi = min(hi, n_b - M + i0 + mrows);
    // this lane's place in the softmax: row (of its simdgroup's 8), and 4 of the 16 keys
    const int srow = int(sg) * 8 + int(lane) / 4, kq = (int(lane) % 4) * 4;
    const int sg_ii = srow % mb;
    const bool row_ok = srow < R && sg_ii < mrows;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    for (int j0 = lo; j0 < hi; j0 += MMA_BK) {
        const int nk = min(MMA_BK, hi - j0);
        // tile-load stage: K[j0 .. j0+16) dequantized, fp32
        for (int e = int(tid); e < MMA_BK * D; e += 32 * MMA_SG) {
            const int kk = e / D, c = e % D;
            tile[e] = kk < nk ? sc::kv_elem(fc_k_enc, fc_k_layout, fc_k_zp, fc_k_sf32, fc_k_out, fc_kv_f32, k_data, k_scales,
                                            k_zeros, k_oidx, k_oval, a.k_sb, a.k_sh, a.k_st, a.k_T, a.k_G, a.k_cap,
                                            a.k_row_bytes, D, Hkv, kr, j0 + kk, c)
                              : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // S = Q K^T: 8 rows x 16 keys per simdgroup
        for (int kb = 0; kb < MMA_BK / 8; kb++) {
            simdgroup_float8x8 S = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
            for (int db = 0; db < ND; db++) {
                simdgroup_float8x8 Kt;
                simdgroup_load(Kt, tile + kb * 8 * D + db * 8, ulong(D), ulong2(0, 0), true);
                simdgroup_multiply_accumulate(S, Qf[db], Kt, S);
            }
            simdgroup_store(S, st + int(sg) * 8 * MMA_BK + kb * 8, ulong(MMA_BK));
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // online softmax: 4 lanes per row, 4 keys each
        float sv[4];
        float mx = -INFINITY;
        for (int t = 0; t < 4; t++) {
            const int j = j0 + kq + t;
            const bool vis = row_ok && kq + t < nk && (!a.causal || j <= n_b - M + i0 + sg_ii);
            const float x = st[srow * MMA_BK + kq + t];
            sv[t] = vis ? (isfinite(x) ? x : NAN) : -INFINITY; // non-finite: a NaN p (see sc_attn_vec)
            mx = max(mx, sv[t]);
        }
        mx = max(mx, simd_shuffle_xor(mx, 1));
        mx = max(mx, simd_shuffle_xor(mx, 2));
        const float mold = m_row[srow];
        const float mnew = max(mold, mx);
        float psum = 0.0f;
        for (int t = 0; t < 4; t++) {
            const float p = isnan(sv[t]) ? sv[t] : (mnew == -INFINITY || sv[t] == -INFINITY) ? 0.0f : exp2(sv[t] - mnew);
            st[srow * MMA_BK + kq + t] = p;
            psum += p;
        }
        psum += simd_shuffle_xor(psum, 1);
        psum += simd_shuffle_xor(psum, 2);
        const float alpha = (mnew == -INFINITY || mold == -INFINITY) ? (mold == mnew ? 1.0f : 0.0f)
                                                                    : exp2(mold - mnew);
        threadgroup_barrier(mem_flags::mem_threadgroup);
        if (lane % 4 == 0) {
            m_row[srow] = mnew;
            l_row[srow] = l_row[srow] * alpha + psum;
            alpha_row[srow] = alpha;
        }
        // tile-load stage: V[j0 .. j0+16), into the same buffer
        for (int e = int(tid); e < MMA_BK * D; e += 32 * MMA_SG) {
            const int kk = e / D, c = e % D;
            tile[e] = kk < nk ? sc::kv_elem(fc_v_enc, fc_v_layout, fc_v_zp, fc_v_sf32, fc_v_out, fc_kv_f32, v_data, v_scales,
                                            v_zeros, v_oidx, v_oval, a.v_sb, a.v_sh, a.v_st, a.v_T, a.v_G, a.v_cap,
                                            a.v_row_bytes, D, Hkv, kr, j0 + kk, c)
                              : 0.0f;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // O = O * alpha (per row) + P V
        const int frow = int(sg) * 8 + (int((lane / 4) & 4) + int(lane / 2) % 4); // this lane's fragment row
        const float al = alpha_row[frow];
        for (int db = 0; db < ND; db++) Of[db].thread_elements() *= al;
        for (int kb = 0; kb < MMA_BK / 8; kb++) {
            simdgroup_float8x8 P;
            simdgroup_load(P, st + int(sg) * 8 * MMA_BK + kb * 8, ulong(MMA_BK));
            for (int db = 0; db < ND; db++) {
                simdgroup_float8x8 V;
                simdgroup_load(V, tile + kb * 8 * D + db * 8, ulong(D));
                simdgroup_multiply_accumulate(Of[db], P, V, Of[db]);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // out: each simdgroup in turn stages its 8 rows and finishes them
    for (int s = 0; s < MMA_SG; s++) {
        if (int(sg) == s) {
            for (int db = 0; db < ND; db++) simdgroup_store(Of[db], tile + db * 8, ulong(D));
            simdgroup_barrier(mem_flags::mem_threadgroup);
            for (int i = 0; i < 8; i++) {
                const int r = s * 8 + i;
                if (r >= R) continue;
                float o[NCH];
                for (int ci = 0; ci < NCH; ci++) {
                    const int c = int(lane) + 32 * ci;
                    o[ci] = c < D ? tile[i * D + c] : 0.0f;
                }
                if (fc_partial) {
                    const long item = (long(b) * Hkv + hk) * a.row_blocks + rb;
                    const long base = (item * a.splits + s_idx) * R + r;
                    if (lane == 0) {
                        part_ml[base * 2] = m_row[r];
                        part_ml[base * 2 + 1] = l_row[r];
                    }
                    for (int ci = 0; ci < NCH; ci++) {
                        const int c = int(lane) + 32 * ci;
                        if (c < D) part_o[base * D + c] = o[ci];
                    }
                } else if (r % mb < mrows) {
                    // finish_row stages through tmp: use the rows past this one's 8
                    finish_row(a, out, v_mean, tile + 8 * D, lane, b, hk, r, i0, o, l_row[r]);
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
}

// Layout probe: sizeof(sc_attn_args) and a few fields, checked by the host.
kernel void sc_attn_args_probe(device long *out [[buffer(0)]], constant sc_attn_args &a [[buffer(16)]],
                               uint lane [[thread_index_in_simdgroup]]) {
    if (lane == 0) {
        out[0] = long(sizeof(sc_attn_args));
        out[1] = a.v_st;
        out[2] = a.batch;
        out[3] = a.has_kv_lens;
        out[4] = long(a.qscale * 1024.0f);
        out[5] = a.v_row_bytes;
        out[6] = long(a.rot_norm * 1024.0f);
    }
}
