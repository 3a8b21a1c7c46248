"""Prefill 2048 causal (B=1, 32/8 heads, d128) on several ISA paths and
caches, alternated in one process (best of --rounds per cell, ms).

    python bench/prefill_isa_ab.py [--isas avx2,avx512] [--policies fp16,int8,int4] [--rounds 3] [--precision fp32]
"""
import argparse
import time

import numpy as np

from sagecore import _cpu
from sagecore.cache import QuantKVCache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--isas", default="avx2,avx512")
    ap.add_argument("--policies", default="fp16,int8,int4")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="fp32", help="fp32, bf16, int8, or 'policy' (each policy's default)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    B, HQ, HKV, D, N = 1, 32, 8, 128, args.n
    k = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
    v = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
    q = rng.standard_normal((B, HQ, N, D)).astype(np.float32)
    out = np.empty_like(q)
    isas, pols = args.isas.split(","), args.policies.split(",")
    caches = {}
    for p in pols:
        caches[p] = QuantKVCache(p, batch=B, kv_heads=HKV, head_dim=D, capacity=N)
        caches[p].append(k, v)
    best = {(i, p): 1e9 for i in isas for p in pols}
    active = _cpu.cpu_info()["active_isa"]
    try:
        for _ in range(args.rounds):
            for i in isas:
                _cpu.set_isa(i)
                for p, c in caches.items():
                    t0 = time.perf_counter()
                    c.attend(q, out=out, is_causal=True, precision=None if args.precision == "policy" else args.precision)
                    best[(i, p)] = min(best[(i, p)], time.perf_counter() - t0)
    finally:
        _cpu.set_isa(active)
    print(f"prefill {N} causal, {HQ}/{HKV} heads, d{D}, threads {_cpu.get_num_threads()}, best of {args.rounds}:")
    for (i, p), t in best.items():
        print(f"  {i:12s} {p:6s} {t * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
