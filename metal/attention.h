// attention.h -- bodies of the attention kernels (entry points: attention.metal).
//
// K/V element access for every storage format (a plain fp16/fp32 tensor read
// in place, or a store: fp16, int8, int4 with zero points and outlier
// tables), dequantized in registers exactly as the C core decodes them; the
// streaming-softmax row state; the block-Hadamard transform shared by one
// simdgroup. Expects the fc_* function constants of attention.metal.
#pragma once

#include "sc_half.h"
#include "sc_metal_args.h"

namespace sc {

// One stored element (token j of kv row kr, channel c), in the stored domain
// (still rotated and smoothed). enc: 0 tensor, 1 fp16 store, 2 int8, 3 int4;
// layout: the byte order of a store's codes (sc_code_offset).
inline float kv_elem(int enc, int layout, bool zp, bool sf32, int nout, bool f32, device const void *data,
                     device const void *scales, device const void *zeros, device const ushort *oidx,
                     device const ushort *oval, long sb, long sh, long st, int T, int G, int cap, int row_bytes,
                     int D, int Hkv, int kr, int j, int c) {
    if (enc == 0) {
        const long i = long(kr / Hkv) * sb + long(kr % Hkv) * sh + long(j) * st + c;
        return f32 ? ((device const float *)data)[i] : float(((device const half *)data)[i]);
    }
    if (enc == 1) return float(((device const half *)data)[(long(kr) * cap + j) * D + c]);
    const long cb = (long(kr) * (cap / T) + j / T) * (D / G) + c / G;
    const float s = sf32 ? ((device const float *)scales)[cb] : h2f_bits(((device const ushort *)scales)[cb]);
    const float m = zp ? (sf32 ? ((device const float *)zeros)[cb] : h2f_bits(((device const ushort *)zeros)[cb]))
                       : (enc == 3 ? -8.0f * s : 0.0f);
    device const uchar *row0 = (device const uchar *)data + long(kr) * cap * row_bytes;
    float code;
    if (enc == 2) {
        const uchar u = row0[sc_code_offset(layout, j, c, row_bytes)];
        code = zp ? float(u) : float(as_type<char>(u));
    } else {
        const uchar u = row0[sc_code_offset(layout, j, c / 2, row_bytes)];
        code = float((c & 1) ? (u >> 4) : (u & 0xF));
    }
    float v = code * s;
    v = (zp || enc == 3) ? v + m : v;
    for (int t = 0; t < nout; t++) {
        const ushort p = oidx[cb * nout + t];
        if (p != 0xFFFF && int(p) / G == j % T && int(p) % G == c % G) v = h2f_bits(oval[cb * nout + t]);
    }
    return v;
}

// In-place block-Hadamard transform of t[0..D) by the 32 lanes of one
// simdgroup (the C core's butterflies, then the norm). Every lane calls it.
inline void hadamard_simd(threadgroup float *t, uint lane, int D, int block, float norm) {
    simdgroup_barrier(mem_flags::mem_threadgroup);
    for (int h = 1; h < block; h *= 2) {
        float nv[8];
        for (int ci = 0; ci < 8; ci++) {
            const int c = int(lane) + 32 * ci;
            if (c < D) {
                const float mine = t[c], other = t[c ^ h];
                nv[ci] = (c & h) ? other - mine : mine + other;
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
        for (int ci = 0; ci < 8; ci++) {
            const int c = int(lane) + 32 * ci;
            if (c < D) t[c] = nv[ci];
        }
        simdgroup_barrier(mem_flags::mem_threadgroup);
    }
    for (int ci = 0; ci < 8; ci++) {
        const int c = int(lane) + 32 * ci;
        if (c < D) t[c] = t[c] * norm;
    }
    simdgroup_barrier(mem_flags::mem_threadgroup);
}

}  // namespace sc
