"""Per-key cost of decode over plain fp16 K/V, one thread (ns per key per kv head).

    OPENBLAS_NUM_THREADS=1 python bench/decode_per_key.py [q_heads kv_heads [N]]

Isolates the kernel's per-key work (QK, softmax, PV, K/V reads) from fixed
costs: one thread, N=4096 keys per kv head (fits the caches), split-K off.
"""
import sys
import time

import numpy as np

from sagecore import _cpu


def main():
    hq, hkv = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (32, 8)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4096
    _cpu.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = 128
    q = rng.standard_normal((1, hq, 1, d), dtype=np.float32).astype(np.float16)
    k = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
    v = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
    out = np.empty((1, hq, 1, d), np.float32)
    reps = max(10, 2_000_000 // (n * hkv))
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            _cpu.attention_tensors(q, k, v, out, None, d ** -0.5, False, 1, None)
        best = min(best, (time.perf_counter() - t0) / reps)
    print(f"q_heads {hq}, kv_heads {hkv}, N {n}: {best * 1e9 / (n * hkv):.1f} ns per key per kv head "
          f"({_cpu.cpu_info()['active_isa']}, 1 thread)")


if __name__ == "__main__":
    main()
