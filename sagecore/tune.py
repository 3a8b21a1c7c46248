"""`python -m sagecore tune`: measure this machine's crossovers, write its profile.

Measured, side by side in one run (best of a few repeats, warm caches):
1. decode latency versus KV length for each path -- FlashAttention over fp16
   K/V and QuantAttention over the int8 and int4 policies -- on B=1,
   32 query / 8 kv heads, d=128; the quantized-vs-fp16 crossover is the
   shortest length from which int8 stays faster than fp16
   (``quant_min_kv_len``);
2. split-K: decode with one kv head (one work item, the case split-K exists
   for) without and with splits; ``split_k.min_kv_len`` is the shortest length
   from which splitting stays faster.
The profile is written to ``sagecore.profile.profile_path(device)`` and used by
the selector from then on; the table is printed, and with matplotlib
installed (``pip install sagecore[plot]``) a PNG of latency versus KV length
per path is written next to it.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _best(fn, reps):
    from sagecore.bench import best_of
    fn()  # warm-up: first-call plan building and page faults
    return best_of(fn, reps)


def crossover(lengths, fast, slow):
    """Shortest length from which ``fast`` beats ``slow`` at every longer length
    measured; None if it never does at the longest."""
    best = None
    for n, a, b in zip(reversed(lengths), reversed(fast), reversed(slow)):
        if a < b:
            best = n
        else:
            break
    return best


def main(argv=None) -> int:
    from sagecore import _cpu, selector
    from sagecore.attention import sdpa
    from sagecore.bench import _progress
    from sagecore.cache import QuantKVCache
    from sagecore.profile import Profile, default_profile, device_name, profile_path

    ap = argparse.ArgumentParser(prog="python -m sagecore tune")
    ap.add_argument("--quick", action="store_true", help="fewer lengths and repeats (a smoke run)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", help="profile path (default: the per-user cache directory)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    reps = 2 if args.quick else args.reps
    lengths = [256, 1024, 4096] if args.quick else [256, 512, 1024, 2048, 4096, 8192, 16384]
    split_lengths = [1024, 4096] if args.quick else [512, 1024, 2048, 4096, 8192, 16384, 32768]
    device = device_name("cpu")
    path = args.out or profile_path(device)
    B, HQ, HKV, D = 1, 32, 8, 128
    rng = np.random.default_rng(0)
    paths = ["fp16 flash", "int8 quant", "int4 quant"]
    total = len(lengths) * len(paths) + len(split_lengths)
    step = 0
    lat = {p: [] for p in paths}
    q = rng.standard_normal((B, HQ, 1, D)).astype(np.float32)
    out = np.empty_like(q)
    for n in lengths:
        k = rng.standard_normal((B, HKV, n, D)).astype(np.float16)
        v = rng.standard_normal((B, HKV, n, D)).astype(np.float16)
        for p in paths:
            _progress(step, total, f"decode N={n} {p}")
            step += 1
            if p == "fp16 flash":
                t = _best(lambda: sdpa(q, k, v, out=out), reps)
            else:
                c = QuantKVCache(p.split()[0], batch=B, kv_heads=HKV, head_dim=D, capacity=n)
                c.append(k, v)
                t = _best(lambda: c.attend(q, out=out), reps)
            lat[p].append(t)
    split_t = {"split_k=1": [], "split_k=auto": []}
    prof0 = default_profile(device)
    q1 = rng.standard_normal((1, 4, 1, D)).astype(np.float32)
    o1 = np.empty_like(q1)
    threads = _cpu.get_num_threads()
    for n in split_lengths:
        _progress(step, total, f"split-K N={n}")
        step += 1
        k = rng.standard_normal((1, 1, n, D)).astype(np.float16)
        v = rng.standard_normal((1, 1, n, D)).astype(np.float16)
        s = max(2, min(prof0.target_items_per_thread * threads, n // 256, prof0.max_splits))
        split_t["split_k=1"].append(_best(lambda: sdpa(q1, k, v, out=o1, split_k=1), reps))
        split_t["split_k=auto"].append(_best(lambda: sdpa(q1, k, v, out=o1, split_k=s), reps))
    _progress(total, total, "done")

    quant_x = crossover(lengths, lat["int8 quant"], lat["fp16 flash"])
    split_x = crossover(split_lengths, split_t["split_k=auto"], split_t["split_k=1"])
    d = default_profile(device).to_dict()
    d["source"] = f"tune {time.strftime('%Y-%m-%d %H:%M')}"
    if quant_x is None:          # fp16 stayed faster at the longest length measured
        d["quant_min_kv_len"] = lengths[-1] * 2
    else:                        # 0: int8 already wins at the shortest length
        d["quant_min_kv_len"] = 0 if quant_x == lengths[0] else quant_x
    d["split_k"]["min_kv_len"] = split_x if split_x is not None else split_lengths[-1] * 2
    prof = Profile(d, device, path)
    prof.save(path)
    selector.reset()

    print(f"device {device}; decode B={B} Hq={HQ} Hkv={HKV} D={D}, best of {reps}, ms")
    print(f"{'N':>7s} " + " ".join(f"{p:>12s}" for p in paths) + "   int8/fp16")
    for i, n in enumerate(lengths):
        print(f"{n:7d} " + " ".join(f"{lat[p][i] * 1e3:12.3f}" for p in paths)
              + f"   {lat['fp16 flash'][i] / lat['int8 quant'][i]:8.2f}x")
    print(f"\nsplit-K, one kv head (4 query heads), {threads} threads, ms")
    for i, n in enumerate(split_lengths):
        a, b = split_t["split_k=1"][i], split_t["split_k=auto"][i]
        print(f"{n:7d}  no split {a * 1e3:8.3f}  split {b * 1e3:8.3f}  ({a / b:4.2f}x)")
    print(f"\nquant_min_kv_len = {prof.quant_min_kv_len} (int8 faster than fp16 from there on)")
    print(f"split_k.min_kv_len = {prof.split_min_kv_len}")
    print(f"profile written to {path}")
    if not args.no_plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("(no plot: matplotlib is not installed; pip install 'sagecore[plot]')")
        else:
            fig, ax = plt.subplots(figsize=(6, 4))
            for p in paths:
                ax.loglog(lengths, [t * 1e3 for t in lat[p]], marker="o", label=p)
            ax.set_xlabel("KV length")
            ax.set_ylabel("decode latency (ms)")
            ax.set_title(f"sagecore decode, {device}")
            ax.legend()
            ax.grid(True, which="both", alpha=0.3)
            png = path[:-5] + ".png" if path.endswith(".json") else path + ".png"
            fig.tight_layout()
            fig.savefig(png, dpi=100)
            print(f"plot written to {png}")
    return 0
