"""Python cost of QuantKVCache.attend over the C kernel call it makes.

    OPENBLAS_NUM_THREADS=1 python bench/attend_overhead.py [N ...]

Decode (B=1, 32/8 heads, d128, int8 cache, precision="bf16", 1 thread):
``cache.attend(q, out=o)`` against ``_cpu.attention`` on the same packed
stores with the same arguments, alternated loop by loop (this machine's speed
drifts); prints the medians and their difference per N. A second line does
the same for a batched decode (B=4) with per-sequence ``kv_lens`` (a list,
as a serving loop passes it) and ``return_lse=True``.
"""
import sys
import time

import numpy as np

from sagecore import _cpu
from sagecore.cache import QuantKVCache


def medians_us(fns, loops):
    """Median time per call (us) of each function, the functions taking turns loop by loop."""
    res = {k: [] for k in fns}
    for _ in range(9):
        for name, f in fns.items():
            f()
            t0 = time.perf_counter()
            for _ in range(loops):
                f()
            res[name].append((time.perf_counter() - t0) / loops)
    return [float(np.median(res[x])) * 1e6 for x in fns]


def cache_and_q(rng, B, n):
    c = QuantKVCache("int8", batch=B, kv_heads=8, head_dim=128, capacity=n)
    c.append(rng.standard_normal((B, 8, n, 128), dtype=np.float32),
             rng.standard_normal((B, 8, n, 128), dtype=np.float32))
    q = rng.standard_normal((B, 32, 1, 128), dtype=np.float32)
    return c, q, np.empty_like(q), c._segments[0]


def main(ns):
    rng = np.random.default_rng(0)
    _cpu.set_num_threads(1)
    for n in ns:
        c, q, o, seg = cache_and_q(rng, 1, n)
        a, k = medians_us({"attend": lambda: c.attend(q, out=o, precision="bf16"),
                           "kernel": lambda: _cpu.attention(q, seg.k.packed, seg.v.packed, o, 8, n, None, 128 ** -0.5,
                                                            True, 1, None, 1)}, 300)
        print(f"N={n:6d}  attend {a:7.1f} us  kernel {k:7.1f} us  Python {a - k:6.1f} us")
        B = 4
        c, q, o, seg = cache_and_q(rng, B, n)
        lse = np.empty((B, 32, 1), np.float32)
        lens = [n - 7 * b for b in range(B)]
        lens_arr = np.array(lens, np.int64)
        a, k = medians_us({"attend": lambda: c.attend(q, out=o, precision="bf16", kv_lens=lens, return_lse=True),
                           "kernel": lambda: _cpu.attention(q, seg.k.packed, seg.v.packed, o, 8, n, lens_arr,
                                                            128 ** -0.5, True, 1, lse, 1)}, 100)
        print(f"N={n:6d}  B={B} kv_lens, lse: attend {a:7.1f} us  kernel {k:7.1f} us  Python {a - k:6.1f} us")


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [256, 2048])
