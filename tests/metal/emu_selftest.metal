// Kernels that exercise one emulated feature each (tests/test_metal_emulation.py).
#include <metal_stdlib>
using namespace metal;

struct ScaleArgs {
    float scale;
    uint n;
};

constant bool add_one [[function_constant(0)]];
constant float bias [[function_constant(1)]];

kernel void scale(device const float *x [[buffer(0)]], device float *y [[buffer(1)]],
                  constant ScaleArgs &args [[buffer(2)]], uint gid [[thread_position_in_grid]]) {
    if (gid < args.n) y[gid] = x[gid] * args.scale;
}

kernel void with_constants(device float *y [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
    y[gid] = float(gid) + (add_one ? 1.0f : 0.0f) + bias;
}

// threadgroup reduction with barriers: sum of 256 values per group
kernel void tg_sum(device const float *x [[buffer(0)]], device float *out [[buffer(1)]],
                   threadgroup float *shm [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]],
                   uint3 tg [[threadgroup_position_in_grid]], uint3 ntg [[threads_per_threadgroup]]) {
    shm[tid] = x[tg.x * ntg.x + tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = ntg.x / 2; s > 0; s /= 2) {
        if (tid < s) shm[tid] += shm[tid + s];
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    if (tid == 0) out[tg.x] = shm[0];
}

// the same without the barrier inside the loop: a race
kernel void tg_sum_racy(device const float *x [[buffer(0)]], device float *out [[buffer(1)]],
                        threadgroup float *shm [[threadgroup(0)]], uint tid [[thread_index_in_threadgroup]],
                        uint3 tg [[threadgroup_position_in_grid]], uint3 ntg [[threads_per_threadgroup]]) {
    shm[tid] = x[tg.x * ntg.x + tid];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint s = ntg.x / 2; s > 0; s /= 2) {
        if (tid < s) shm[tid] += shm[tid + s];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tid == 0) out[tg.x] = shm[0];
}

// SIMD-group functions: each lane writes 8 results
kernel void simd_ops(device const float *x [[buffer(0)]], device float *out [[buffer(1)]],
                     uint gid [[thread_position_in_grid]], uint lane [[thread_index_in_simdgroup]],
                     uint sg [[simdgroup_index_in_threadgroup]]) {
    const float v = x[gid];
    device float *o = out + gid * 8;
    o[0] = simd_sum(v);
    o[1] = simd_max(v);
    o[2] = simd_min(v);
    o[3] = simd_prefix_exclusive_sum(v);
    o[4] = simd_shuffle(v, (lane + 5) % 32);
    o[5] = simd_shuffle_xor(v, 3);
    o[6] = simd_shuffle_down(v, 4);
    o[7] = simd_broadcast(v, 7) + float(sg) * 0.0f;
}

// vector types, half, as_type, math
kernel void vectors(device const float4 *x [[buffer(0)]], device float4 *y [[buffer(1)]],
                    device const half *h [[buffer(2)]], device uint *bits [[buffer(3)]],
                    uint gid [[thread_position_in_grid]]) {
    float4 v = x[gid];
    float3 w = float3(v.x, v.y, v.z);
    half2 hh = half2(h[2 * gid], h[2 * gid + 1]);
    float2 hf = float2(hh);
    y[gid] = float4(dot(w, w), fast::exp2(v.w), hf.x * hf.y, max(v.x, v.y)) + float4(1.0f);
    bits[gid] = as_type<uint>(v.x);
}

// simdgroup 8x8 matrices: C = A * B for one 8x8 tile per simdgroup
kernel void mma8(device const float *a [[buffer(0)]], device const half *b [[buffer(1)]],
                 device float *c [[buffer(2)]], uint sg [[simdgroup_index_in_threadgroup]]) {
    simdgroup_float8x8 A, C = make_filled_simdgroup_matrix<float, 8, 8>(0.5f);
    simdgroup_half8x8 B;
    simdgroup_load(A, a + sg * 64, 8);
    simdgroup_load(B, b + sg * 64, 8, ulong2(0, 0), true);
    simdgroup_multiply_accumulate(C, A, B, C);
    simdgroup_store(C, c + sg * 64, 8);
}

// faults the emulator must report
kernel void out_of_bounds(device float *y [[buffer(0)]], uint gid [[thread_position_in_grid]]) {
    y[gid + 1024] = 1.0f; // 4 KB past a 256-byte buffer
}

kernel void divergent_barrier(device float *y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    if (tid < 16) {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    } else {
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }
    y[tid] = 1.0f;
}

kernel void early_return_barrier(device float *y [[buffer(0)]], uint tid [[thread_index_in_threadgroup]]) {
    if (tid == 3) return;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tid] = 1.0f;
}

kernel void divergent_simd(device float *y [[buffer(0)]], uint lane [[thread_index_in_simdgroup]]) {
    float v = 1.0f;
    if (lane < 8) v = simd_sum(v);
    else v = simd_max(v);
    y[lane] = v;
}

kernel void uses_args(device float *y [[buffer(0)]], constant ScaleArgs &args [[buffer(1)]],
                      uint gid [[thread_position_in_grid]]) {
    y[gid] = args.scale;
}

kernel void big_threadgroup(device float *y [[buffer(0)]], threadgroup float *shm [[threadgroup(0)]],
                            uint tid [[thread_index_in_threadgroup]]) {
    shm[tid] = 1.0f;
    y[tid] = shm[tid];
}

// ---- more features, one output slot each (test_more_features)
constant int fc_int [[function_constant(2)]];
constant uint fc_uint [[function_constant(3)]];
constant float fc_float [[function_constant(4)]];
constant ushort fc_ushort [[function_constant(5)]];

struct Padded {
    float3 p; // 16 bytes in MSL buffers
    float tail;
};

kernel void more_features(device const float *x [[buffer(0)]], device float *out [[buffer(1)]],
                          device const Padded *pad [[buffer(2)]], uint2 tpg [[thread_position_in_grid]],
                          ushort lane [[thread_index_in_simdgroup]], uint nsg [[simdgroups_per_threadgroup]],
                          uint width [[threads_per_simdgroup]], uint3 ngrid [[threadgroups_per_grid]],
                          uint2 tgrid [[threads_per_grid]]) {
    const uint i = tpg.x;
    const float v = x[i];
    device float *o = out + i * 16;
    o[0] = simd_prefix_inclusive_sum(v);
    o[1] = simd_shuffle_up(v, 2);
    o[2] = simd_all(v > -100.0f) ? 1.0f : 0.0f;
    o[3] = simd_any(v > 1.5f) ? 1.0f : 0.0f;
    o[4] = simd_broadcast_first(v);
    simdgroup_barrier(mem_flags::mem_none);
    o[5] = float(fc_int) + float(fc_uint) + fc_float + float(fc_ushort);
    const float4 a = float4(v, 2.0f, -3.0f, 0.5f);
    const float4 b = clamp(a, -1.0f, 1.0f);
    o[6] = b.x + b.y + b.z + b.w;
    o[7] = select(1.0f, 2.0f, v > 0.0f);
    o[8] = precise::sqrt(fabs(v)) + fast::exp(0.0f);
    o[9] = float(half(1.5h) * half(2.0h));
    o[10] = pad[1].p.z + pad[1].tail;
    o[11] = float(sizeof(Padded));
    o[12] = float(lane) + float(width) * 0.0f;
    o[13] = float(nsg * 100 + ngrid.x * 10 + tgrid.y);
    const int4 iv = int4(7, -3, 2, 9) / int4(2);
    o[14] = float(iv.x + iv.y + iv.z + iv.w);
    o[15] = all(a > float4(-10.0f)) && any(a < float4(0.0f)) ? 1.0f : 0.0f;
}

kernel void tg_out_of_bounds(device float *y [[buffer(0)]], threadgroup float *shm [[threadgroup(0)]],
                             uint tid [[thread_index_in_threadgroup]]) {
    shm[tid + 1024] = 1.0f; // 4 KB past 128 bytes of threadgroup memory
    y[tid] = shm[tid];
}

// every lane of a 64-thread group writes its threadgroup id: host threads
// may run groups in any order, the output must not care
kernel void many_groups(device uint *y [[buffer(0)]], uint3 tg [[threadgroup_position_in_grid]],
                        uint tid [[thread_index_in_threadgroup]], threadgroup uint *shm [[threadgroup(0)]]) {
    shm[tid] = tg.x * 1000 + tid;
    threadgroup_barrier(mem_flags::mem_threadgroup);
    y[tg.x * 64 + tid] = shm[63 - tid];
}

kernel void swizzles(device float4 *v [[buffer(0)]], device float *out [[buffer(1)]],
                     uint i [[thread_position_in_grid]]) {
    float4 a = v[i];
    float2 s = a.xy + a.zw;          // read, arithmetic
    float3 t = float3(a.xyz) * 2.0f; // through a constructor
    a.zw = float2(a.x, 10.0f);       // write through
    a.xy = a.yz;                     // swizzle to swizzle (reads before writing)
    out[i * 8 + 0] = s.x;
    out[i * 8 + 1] = s.y;
    out[i * 8 + 2] = dot(t, float3(1.0f));
    out[i * 8 + 3] = a.x;
    out[i * 8 + 4] = a.y;
    out[i * 8 + 5] = a.z;
    out[i * 8 + 6] = a.w;
    out[i * 8 + 7] = float4(a.wzyx).x;
}
