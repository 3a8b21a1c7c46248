// kv_pack.metal -- KV quantize (transform pass + encode pass) and dequantize,
// one pipeline per format through function constants (sc_metal_args.h).
//
//   sc_kv_transform  grid (n_tokens, rows), threads D: fp16-round, subtract
//                    the mean, rotate -> xt [rows][n][D] float scratch
//   sc_kv_encode     grid (groups, rows), threads D: outliers, cell ranges,
//                    scales, codes -> the store
//   sc_kv_decode     grid (groups, rows), threads D: the store -> a plain
//                    [B][H][n][D] tensor (fp16 or fp32)
//   sc_kv_store_f16 / sc_kv_load_f16: the same for the fp16 (unquantized) format
// err[0] = 1: a non-finite / beyond-fp16 source value; err[1] = 1: a cell
// range that fp16 scales cannot hold.
#include <metal_stdlib>
using namespace metal;

#include "sc_metal_args.h"

constant int fc_encoding [[function_constant(SC_FC_ENCODING)]];
constant bool fc_zero_point [[function_constant(SC_FC_ZERO_POINT)]];
constant bool fc_scale_f32 [[function_constant(SC_FC_SCALE_F32)]];
constant bool fc_rotate [[function_constant(SC_FC_ROTATE)]];
constant bool fc_smooth [[function_constant(SC_FC_SMOOTH)]];
constant int fc_outliers [[function_constant(SC_FC_OUTLIERS)]];
constant bool fc_io_f16 [[function_constant(SC_FC_IO_F16)]];
constant int fc_layout [[function_constant(SC_FC_LAYOUT)]];

#include "kv_pack.h"

kernel void sc_kv_transform(device const void *src [[buffer(0)]], device float *xt [[buffer(1)]],
                            device const float *mean [[buffer(2)]], device int *err [[buffer(3)]],
                            constant sc_kv_pack_args &a [[buffer(4)]], threadgroup float *shm [[threadgroup(0)]],
                            uint3 tg [[threadgroup_position_in_grid]], uint c [[thread_index_in_threadgroup]]) {
    const int t = int(tg.x), row = int(tg.y), D = a.head_dim;
    const long i = sc::plain_index(a, row, t, c);
    float v;
    if (fc_io_f16) {
        v = float(((device const half *)src)[i]);
        if (!isfinite(v)) err[0] = 1;
    } else {
        const float raw = ((device const float *)src)[i];
        if (!(fabs(raw) <= 65504.0f)) err[0] = 1;
        v = float(half(raw));
    }
    v = v - (fc_smooth ? mean[row * D + int(c)] : 0.0f);
    if (fc_rotate) v = sc::hadamard_row(shm, c, v, a.rot_block, a.rot_norm);
    xt[(long(row) * a.n_tokens + t) * D + c] = v;
}

kernel void sc_kv_encode(device float *xt [[buffer(0)]], device uchar *data [[buffer(1)]],
                         device void *scales [[buffer(2)]], device void *zeros [[buffer(3)]],
                         device ushort *out_idx [[buffer(4)]], device ushort *out_val [[buffer(5)]],
                         device int *err [[buffer(6)]], constant sc_kv_pack_args &a [[buffer(7)]],
                         threadgroup float *shm [[threadgroup(0)]], threadgroup int *codes [[threadgroup(1)]],
                         uint3 tg [[threadgroup_position_in_grid]], uint c [[thread_index_in_threadgroup]]) {
    const int D = a.head_dim, T = a.token_group, G = a.channel_group, ncell = D / G;
    const int row = int(tg.y), tok0 = int(tg.x) * T;
    const int nt = min(T, a.n_tokens - tok0), gs = (a.t0 + tok0) / T;
    const int cell = int(c) / G, c0 = cell * G;
    const long cb = sc::cell_base(a, row, gs);
    device float *x = xt + (long(row) * a.n_tokens + tok0) * D;
    threadgroup float *smax = shm, *smin = shm + D, *sinv = shm + 2 * D, *smin_cell = shm + 2 * D + ncell;

    if (fc_outliers > 0) {
        if (int(c) == c0)
            sc::select_outliers(x, D, G, c0, nt, fc_outliers, out_idx + (cb + cell) * fc_outliers,
                                out_val + (cb + cell) * fc_outliers);
        threadgroup_barrier(mem_flags::mem_device);
    }

    // per-channel extremes over the group's tokens
    float mx = fc_zero_point ? -INFINITY : 0.0f, mn = INFINITY;
    for (int t = 0; t < nt; t++) {
        const float v = x[t * D + int(c)];
        if (fc_zero_point) {
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        } else {
            const float av = fabs(v);
            mx = av > mx ? av : mx;
        }
    }
    smax[c] = mx;
    smin[c] = mn;
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // one thread per cell: range, scale (and minimum)
    if (int(c) == c0) {
        float hi = smax[c0], lo = smin[c0];
        for (int j = 1; j < G; j++) {
            const float p = smax[c0 + j], q = smin[c0 + j];
            hi = p > hi ? p : hi;
            lo = q < lo ? q : lo;
        }
        const float span = float(fc_zero_point ? sc::code_hi() - sc::code_lo() : sc::code_hi());
        const bool bad = !(hi <= 3.4e38f) || (fc_zero_point && !(lo >= -3.4e38f)) ||
                         (!fc_scale_f32 && (fc_zero_point ? (lo < -65504.0f || (hi - lo) / span > 65504.0f)
                                                          : hi / span > 65504.0f));
        float scale = 0.0f, minv = 0.0f;
        if (bad) {
            err[1] = 1;
        } else if (fc_zero_point) {
            if (!fc_scale_f32) {
                const ushort mh = sc::f2h_floor(lo);
                minv = sc::h2f_bits(mh);
                const ushort sh = sc::f2h_ceil((hi - minv) / span);
                scale = sc::h2f_bits(sh);
                ((device ushort *)zeros)[cb + cell] = mh;
                ((device ushort *)scales)[cb + cell] = sh;
            } else {
                minv = lo;
                scale = (hi - lo) / span;
                ((device float *)zeros)[cb + cell] = minv;
                ((device float *)scales)[cb + cell] = scale;
            }
        } else if (!fc_scale_f32) {
            const ushort sh = sc::f2h_ceil(hi / span);
            scale = sc::h2f_bits(sh);
            ((device ushort *)scales)[cb + cell] = sh;
        } else {
            scale = hi / span;
            ((device float *)scales)[cb + cell] = scale;
        }
        sinv[cell] = scale > 0.0f ? 1.0f / scale : 0.0f;
        smin_cell[cell] = minv;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const float inv = sinv[cell], m = smin_cell[cell];
    const float flo = float(sc::code_lo()), fhi = float(sc::code_hi());
    device uchar *row0 = data + long(row) * a.capacity * a.row_bytes; // codes: sc_code_offset
    const long tg0 = long(a.t0) + tok0;
    for (int t = 0; t < nt; t++) {
        float v = (x[t * D + int(c)] - (fc_zero_point ? m : 0.0f)) * inv;
        v = v < flo ? flo : v;
        v = v > fhi ? fhi : v;
        const int code = int(rint(v));
        if (fc_encoding == 2) {
            row0[sc_code_offset(fc_layout, tg0 + t, int(c), a.row_bytes)] = uchar(code & 0xFF);
        } else {
            codes[c] = code + (fc_zero_point ? 0 : 8);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            if ((c & 1u) == 0)
                row0[sc_code_offset(fc_layout, tg0 + t, int(c) / 2, a.row_bytes)] =
                    uchar((codes[c] & 0xF) | ((codes[c + 1] & 0xF) << 4));
            threadgroup_barrier(mem_flags::mem_threadgroup);
        }
    }
    // k16: the rest of a partial group's last 16-token block is zero words,
    // as the C core writes it (a block's bytes depend only on its tokens)
    if (fc_layout == 1 && (c & 1u) == 0)
        for (int t = nt; t < ((nt + 15) & ~15); t++) row0[sc_code_offset(fc_layout, tg0 + t, int(c) / 2, a.row_bytes)] = 0;
}

kernel void sc_kv_decode(device const uchar *data [[buffer(0)]], device const void *scales [[buffer(1)]],
                         device const void *zeros [[buffer(2)]], device const ushort *out_idx [[buffer(3)]],
                         device const ushort *out_val [[buffer(4)]], device const float *mean [[buffer(5)]],
                         device void *dst [[buffer(6)]], constant sc_kv_pack_args &a [[buffer(7)]],
                         threadgroup float *shm [[threadgroup(0)]], uint3 tg [[threadgroup_position_in_grid]],
                         uint c [[thread_index_in_threadgroup]]) {
    const int D = a.head_dim, T = a.token_group, G = a.channel_group;
    const int row = int(tg.y), tok0 = int(tg.x) * T;
    const int nt = min(T, a.n_tokens - tok0), gs = (a.t0 + tok0) / T;
    const int cell = int(c) / G, c0 = cell * G;
    const long cb = sc::cell_base(a, row, gs);
    const float s = sc::load_scale(scales, cb + cell);
    const float m = fc_zero_point ? sc::load_scale(zeros, cb + cell) : (fc_encoding == 3 ? -8.0f * s : 0.0f);
    const bool has_m = fc_zero_point || fc_encoding == 3;
    device const uchar *row0 = data + long(row) * a.capacity * a.row_bytes; // codes: sc_code_offset
    const long tg0 = long(a.t0) + tok0;
    for (int t = 0; t < nt; t++) {
        float code;
        if (fc_encoding == 2) {
            const uchar u = row0[sc_code_offset(fc_layout, tg0 + t, int(c), a.row_bytes)];
            code = fc_zero_point ? float(u) : float(as_type<char>(u));
        } else {
            const uchar u = row0[sc_code_offset(fc_layout, tg0 + t, int(c) / 2, a.row_bytes)];
            code = float((c & 1u) ? (u >> 4) : (u & 0xF));
        }
        float v = code * s;
        v = has_m ? v + m : v;
        for (int j = 0; j < fc_outliers; j++) {
            const ushort p = out_idx[(cb + cell) * fc_outliers + j];
            if (p != 0xFFFF && int(p) / G == t && int(p) % G == int(c) - c0)
                v = sc::h2f_bits(out_val[(cb + cell) * fc_outliers + j]);
        }
        if (fc_rotate) v = sc::hadamard_row(shm, c, v, a.rot_block, a.rot_norm);
        v = fc_smooth ? v + mean[row * D + int(c)] : v;
        const long o = sc::plain_index(a, row, tok0 + t, c);
        if (fc_io_f16) ((device half *)dst)[o] = half(v);
        else ((device float *)dst)[o] = v;
    }
}

// The fp16 format: the store holds the values as halves (no smoothing or
// rotation applies), grid (n_tokens, rows), threads D.
kernel void sc_kv_store_f16(device const void *src [[buffer(0)]], device half *data [[buffer(1)]],
                            device int *err [[buffer(2)]], constant sc_kv_pack_args &a [[buffer(3)]],
                            uint3 tg [[threadgroup_position_in_grid]], uint c [[thread_index_in_threadgroup]]) {
    const int t = int(tg.x), row = int(tg.y);
    const long i = sc::plain_index(a, row, t, c);
    half h;
    if (fc_io_f16) {
        h = ((device const half *)src)[i];
        if (!isfinite(float(h))) err[0] = 1;
    } else {
        const float raw = ((device const float *)src)[i];
        if (!(fabs(raw) <= 65504.0f)) err[0] = 1;
        h = half(raw);
    }
    data[(long(row) * a.capacity + a.t0 + t) * a.head_dim + c] = h;
}

kernel void sc_kv_load_f16(device const half *data [[buffer(0)]], device void *dst [[buffer(1)]],
                           constant sc_kv_pack_args &a [[buffer(2)]], uint3 tg [[threadgroup_position_in_grid]],
                           uint c [[thread_index_in_threadgroup]]) {
    const int t = int(tg.x), row = int(tg.y);
    const half h = data[(long(row) * a.capacity + a.t0 + t) * a.head_dim + c];
    const long o = sc::plain_index(a, row, t, c);
    if (fc_io_f16) ((device half *)dst)[o] = h;
    else ((device float *)dst)[o] = float(h);
}

// Layout probe: the host checks that MSL (or the emulation's C++) and its own
// view of sc_kv_pack_args agree on size and offsets.
kernel void sc_kv_args_probe(device long *out [[buffer(0)]], constant sc_kv_pack_args &a [[buffer(1)]],
                             uint c [[thread_index_in_threadgroup]]) {
    if (c == 0) {
        out[0] = long(sizeof(sc_kv_pack_args));
        out[1] = a.stride_b;
        out[2] = a.stride_h;
        out[3] = a.stride_t;
        out[4] = a.heads;
        out[5] = a.n_tokens;
        out[6] = a.rot_block;
        out[7] = long(a.rot_norm * 1024.0f);
        out[8] = a.reserved;
    }
}
