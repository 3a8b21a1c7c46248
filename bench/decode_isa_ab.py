"""Per-key cost of decode over a quantized cache on two or more ISA paths,
alternated in one process (ns per key per kv head, one thread, split-K off).

    OPENBLAS_NUM_THREADS=1 python bench/decode_isa_ab.py [--policy int8] [--n 4096]
        [--q-heads 32] [--precision bf16] [--rounds 10] [--isas avx512,avx512_vnni]

Each round times every listed ISA once, so machine noise (this is a shared
2-vCPU machine) hits all of them alike; best and median over the rounds are
printed. The cache fits in L2 at the default N (8 kv heads x 4096 keys x 256
bytes), which isolates the kernel's per-key work from DRAM.
"""
import argparse
import time

import numpy as np

from sagecore import QuantKVCache, _cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="int8")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--isas", default=None, help="comma-separated (default: every supported ISA from avx512 on)")
    args = ap.parse_args()
    supported = _cpu.supported_isas()
    isas = args.isas.split(",") if args.isas else [i for i in supported if i in ("avx512", "avx512_vnni", "amx")]
    for isa in isas:
        if isa not in supported:
            raise SystemExit(f"--isas: {isa!r} is not supported here (supported: {', '.join(supported)})")
    best = supported[-1]
    _cpu.set_num_threads(1)
    rng = np.random.default_rng(0)
    b, hq, hkv, d, n = 1, args.q_heads, args.kv_heads, 128, args.n
    c = QuantKVCache(args.policy, batch=b, kv_heads=hkv, head_dim=d, capacity=n)
    c.append(rng.standard_normal((b, hkv, n, d), dtype=np.float32),
             rng.standard_normal((b, hkv, n, d), dtype=np.float32))
    q = rng.standard_normal((b, hq, 1, d), dtype=np.float32)
    o = np.empty((b, hq, 1, d), np.float32)
    reps = max(10, 1_000_000 // (n * hkv))
    res = {isa: [] for isa in isas}
    try:
        for _ in range(args.rounds):
            for isa in isas:
                _cpu.set_isa(isa)
                c.attend(q, out=o, split_k=1, precision=args.precision)
                t0 = time.perf_counter()
                for _ in range(reps):
                    c.attend(q, out=o, split_k=1, precision=args.precision)
                res[isa].append((time.perf_counter() - t0) / reps * 1e9 / (n * hkv))
    finally:
        _cpu.set_isa(best)
    print(f"{args.policy}, precision {args.precision}, {hq}/{hkv} heads, N {n}, 1 thread, {args.rounds} rounds:")
    for isa, v in res.items():
        v.sort()
        print(f"  {isa:12s} best {v[0]:5.1f}  median {v[len(v) // 2]:5.1f} ns per key per kv head")


if __name__ == "__main__":
    main()
