// kv_pack.h -- bodies of the KV packing kernels (entry points: kv_pack.metal).
//
// The same arithmetic as the C core's portable packer (csrc/pack/pack.c), in
// the same order, so the packed bytes match it: inputs rounded to fp16, the
// row mean subtracted, the block-Hadamard butterflies in the C order, cell
// ranges from per-channel extremes, scales rounded up to fp16, rint codes.
// Expects the function constants fc_* of kv_pack.metal to be declared first.
// Written in the emulatable subset (DESIGN section 8): threadgroup memory
// through parameters, every barrier reached by every thread.
#pragma once

#include "sc_half.h"
#include "sc_metal_args.h"

namespace sc {

// smallest fp16 >= x (x >= 0, finite)
inline ushort f2h_ceil(float x) {
    ushort h = f2h_bits(x);
    if (h2f_bits(h) < x) h = ushort(h + 1);
    return h;
}

// largest fp16 <= x (finite, within the fp16 range)
inline ushort f2h_floor(float x) {
    ushort h = f2h_bits(x);
    if (h2f_bits(h) > x) {
        if (h == 0) h = ushort(0x8001);
        else if (h & 0x8000) h = ushort(h + 1);
        else h = ushort(h - 1);
    }
    return h;
}

// In-place block-Hadamard transform of one row held one value per thread in
// shm[0..D): the C core's butterflies (a+b, a-b per pair, stage by stage),
// then the 1/sqrt(block) scale. Every thread of the threadgroup calls it.
inline float hadamard_row(threadgroup float *shm, uint c, float v, int block, float norm) {
    shm[c] = v;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (int h = 1; h < block; h *= 2) {
        const float mine = shm[c];
        const float other = shm[c ^ uint(h)];
        threadgroup_barrier(mem_flags::mem_threadgroup);
        shm[c] = (c & uint(h)) ? other - mine : mine + other;
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    const float r = shm[c] * norm;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    return r;
}

inline long plain_index(constant sc_kv_pack_args &a, int row, int t, uint c) {
    const int b = row / a.heads, h = row % a.heads;
    return long(b) * a.stride_b + long(h) * a.stride_h + long(t) * a.stride_t + long(c);
}

inline int cells(constant sc_kv_pack_args &a) { return a.head_dim / a.channel_group; }

// first cell of store token group gs of row
inline long cell_base(constant sc_kv_pack_args &a, int row, int gs) {
    return (long(row) * (a.capacity / a.token_group) + gs) * cells(a);
}

inline float load_scale(device const void *base, long i) {
    return fc_scale_f32 ? ((device const float *)base)[i] : h2f_bits(((device const ushort *)base)[i]);
}

inline int code_hi() { return fc_encoding == 2 ? (fc_zero_point ? 255 : 127) : (fc_zero_point ? 15 : 7); }
inline int code_lo() { return fc_zero_point ? 0 : -code_hi(); }

// Pick the k largest |x| of one cell (ties: lowest position), record them and
// overwrite them with the first non-selected value (pack.c select_outliers).
inline void select_outliers(device float *x, int D, int G, int c0, int nt, int k, device ushort *idx,
                            device ushort *val) {
    const int n = nt * G;
    const int kk = k < n ? k : n;
    for (int j = kk; j < k; j++) {
        idx[j] = ushort(0xFFFF);
        val[j] = ushort(0);
    }
    for (int j = 0; j < kk; j++) {
        int best = -1;
        float bestv = -1.0f;
        for (int p = 0; p < n; p++) {
            bool taken = false;
            for (int q = 0; q < j; q++) taken = taken || idx[q] == ushort(p);
            if (taken) continue;
            const float a = fabs(x[(p / G) * D + c0 + p % G]);
            if (a > bestv) {
                bestv = a;
                best = p;
            }
        }
        idx[j] = ushort(best);
        val[j] = f2h_bits(x[(best / G) * D + c0 + best % G]);
    }
    int fill = 0;
    for (int p = 0; p < n; p++) {
        bool taken = false;
        for (int q = 0; q < kk; q++) taken = taken || idx[q] == ushort(p);
        if (!taken) {
            fill = p;
            break;
        }
    }
    const float fv = x[(fill / G) * D + c0 + fill % G];
    for (int j = 0; j < kk; j++) x[(idx[j] / G) * D + c0 + idx[j] % G] = fv;
}

}  // namespace sc
