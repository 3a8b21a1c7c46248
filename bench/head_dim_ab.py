"""Decode time of the built-in int4, int8 and fp16 policies per head dim,
alternated in one process (each at its default precision).

    OPENBLAS_NUM_THREADS=1 python bench/head_dim_ab.py [--n 8192] [--rounds 15] [--threads 1] [D ...]

For each head dim (default: the supported 64, 80, 96, 128, 192, 256) every
policy gets a cache over the same random fp16 K/V (32/8 heads, B=1); each
round times every policy once in turn (5 decode calls), so the machine's
drift hits them alike. Prints ns per key and kv head (median over rounds),
the paired ratios int8 / int4 and fp16 / int8 (medians of per-round ratios),
and ps per key and channel: the per-channel cost shows a head dim whose
kernels fall back to a slower path (docs/benchmarks.md, session 18).
"""
import argparse

import numpy as np

import sagecore
from sagecore import QuantKVCache
from sagecore.bench import alternate, paired_ratio, timer
from sagecore.policy import builtin_policies

POLICIES = ("int4", "int8", "fp16")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dims", nargs="*", type=int, default=[64, 80, 96, 128, 192, 256])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    sagecore.set_num_threads(args.threads)
    hq, hkv, n = 32, 8, args.n
    print(f"decode N {n} (warm), {args.threads} thread(s), 32/8 heads, {args.rounds} rounds, "
          f"isa {sagecore._cpu.cpu_info()['active_isa']}; ns per key and kv head")
    for d in args.dims:
        rng = np.random.default_rng(0)
        k = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
        v = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
        q = rng.standard_normal((1, hq, 1, d), dtype=np.float32).astype(np.float16)
        fns = []
        for name in POLICIES:
            c = QuantKVCache(name, batch=1, kv_heads=hkv, head_dim=d, capacity=n)
            c.append(k, v)
            prec = builtin_policies()[name].precision
            fns.append(timer(lambda c=c, prec=prec: c.attend(q, precision=prec), 5))
        ts = dict(zip(POLICIES, alternate(fns, args.rounds)))
        ns = {p: float(np.median(t)) / (hkv * n) * 1e9 for p, t in ts.items()}
        print(f"  d{d:<3d} int4 {ns['int4']:6.2f}  int8 {ns['int8']:6.2f}  fp16 {ns['fp16']:6.2f}   "
              f"int8/int4 {paired_ratio(ts['int8'], ts['int4']):.2f}x  fp16/int8 {paired_ratio(ts['fp16'], ts['int8']):.2f}x"
              f"   ps per key-channel: int4 {ns['int4'] / d * 1e3:.0f}  int8 {ns['int8'] / d * 1e3:.0f}")


if __name__ == "__main__":
    main()
