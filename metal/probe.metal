// probe.metal -- device read bandwidth: each thread sums a contiguous run of
// float4s (so reads stream), one partial per thread. Used by
// `python -m sagecore bench --backend metal` to put KV bandwidth in
// proportion ("fraction of the device's bandwidth").
#include <metal_stdlib>
using namespace metal;

#include "sc_metal_args.h"

kernel void sc_read_probe(device const float4 *x [[buffer(0)]], device float *out [[buffer(1)]],
                          constant uint &per_thread [[buffer(2)]], uint gid [[thread_position_in_grid]]) {
    float4 acc = float4(0.0f);
    const uint base = gid * per_thread;
    for (uint i = 0; i < per_thread; i++) acc += x[base + i];
    out[gid] = acc.x + acc.y + acc.z + acc.w;
}
