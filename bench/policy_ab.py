"""Decode time of two or more *policies*, alternated in one process (the
companion of build_ab.py, which compares builds of the kernels).

    OPENBLAS_NUM_THREADS=1 python bench/policy_ab.py K:V[@PRECISION] [K:V ...] [--n 32768] [--threads 2]
        [--cold] [--rounds 30] [--precision bf16] [--m 1]

Each K:V is a pair of format ids, e.g. ``int8.t32.g1.s16+smooth:int8.t1.g32.s16``,
or a built-in policy name; ``@int8`` etc. after it sets that entry's precision
(default: ``--precision``), so ``int8@bf16 int8@int8`` compares precisions.
Every policy gets caches over the same random fp16 K/V (d128, 32/8 heads); each round times every policy once in turn through
``QuantKVCache.attend``, so the machine's drift hits all of them alike.
``--cold`` rotates through enough caches to exceed 4x the last-level cache;
``--m 512`` times a causal prefill chunk of 512 queries instead of a decode.
Prints best and median per call and the ratio against the first policy: the
median of the per-round ratios (the order rotates every round).
"""
import argparse

import numpy as np

import sagecore
from sagecore import QuantKVCache
from sagecore.bench import alternate, cold_count, kv_bytes, paired_ratio, timer
from sagecore.graph import check_precision


def split(spec: str, default: str):
    """'POLICY[@PRECISION]' -> (policy, checked precision)"""
    pol, _, prec = spec.partition("@")
    return pol, check_precision(prec or default)


def policy(spec: str):
    if ":" not in spec:
        return spec
    k, v = spec.split(":", 1)
    return {"name": spec, "k": k, "v": v}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policies", nargs="+")
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--m", type=int, default=1, help="queries per call (causal, right-aligned)")
    args = ap.parse_args()
    sagecore.set_num_threads(args.threads)
    hq, hkv, d, n = 32, 8, 128, args.n
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
    v = rng.standard_normal((1, hkv, n, d), dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((1, hq, args.m, d), dtype=np.float32).astype(np.float16)
    entries = {spec: split(spec, args.precision) for spec in args.policies}  # spec -> (policy, precision)

    def make(spec):
        c = QuantKVCache(policy(entries[spec][0]), batch=1, kv_heads=hkv, head_dim=d, capacity=n)
        c.append(k, v)
        return c

    caches = {}
    for spec in args.policies:
        first = make(spec)
        count = cold_count(kv_bytes(first)) if args.cold else 1
        caches[spec] = [first] + [make(spec) for _ in range(count - 1)]
    reps = 1 if args.cold else max(3, 400000 // (n * hkv * args.m))
    def timed(spec):  # one call = one attend; each round visits every cache reps times
        cs, precision = caches[spec], entries[spec][1]
        return timer(lambda: [c.attend(q, precision=precision) for c in cs], reps, reps * len(cs))

    times = dict(zip(caches, alternate([timed(spec) for spec in caches], args.rounds)))
    print(f"{'decode' if args.m == 1 else f'prefill M {args.m} x'} N {n}{' cold' if args.cold else ''}, {args.threads} thread(s), precision {args.precision} (unless @), "
          f"{args.rounds} rounds, isa {sagecore._cpu.cpu_info()['active_isa']}")
    base = times[args.policies[0]]
    for spec, ts in times.items():
        a = np.asarray(ts)
        print(f"  {spec:60s} best {a.min() * 1e3:7.3f} ms  median {np.median(a) * 1e3:7.3f} ms  "
              f"first/this {paired_ratio(base, ts):.3f}x  ({caches[spec][0].bits_per_element():.3f} bits)")


if __name__ == "__main__":
    main()
