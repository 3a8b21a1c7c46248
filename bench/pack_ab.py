"""Packing speed of two or more *builds* of the C core, alternated in one
process: GB/s of fp16 input per build, format and head dim on one core, and
the median per-round ratio to the first build (build_ab.py's method, for
``quantize`` instead of attention).

    OPENBLAS_NUM_THREADS=1 python bench/pack_ab.py DIR [DIR ...] \
        [--formats int8.t1.gD.s16+rot ...] [--head-dim 64 128 ...] [--rounds 15] [--isa avx2]

Each DIR is a source tree with ``sagecore/_cpu*.so`` built in place. Every
build packs the same 8 MiB of fp16 input (8 heads x 4096 * 128 / D tokens)
into its own copy of the store's arrays, and the packed bytes of every build
are compared with the first build's: a build that stores different bytes is
reported (an experiment that changes the format's bytes is not a speed-up).
"""
import argparse
import time

import numpy as np

from build_ab import load_build, wrap
from sagecore.bench import alternate, paired_ratio
from sagecore.cache import TensorStore
from sagecore.formats import KVFormat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--formats", nargs="+", default=["int8.t1.gD.s16+rot", "int4.t1.gD.s16+rot"])
    ap.add_argument("--head-dim", type=int, nargs="+", default=[128])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=3, help="packs of the input per timing (default 3)")
    ap.add_argument("--isa", default=None, help="force this ISA level in every build (default: the best)")
    args = ap.parse_args(argv)
    mods = [load_build(d, i) for i, d in enumerate(args.dirs)]
    for m in mods:
        m.set_num_threads(1)
        if args.isa:
            m.set_isa(args.isa)
    print(f"one core, isa {mods[0].cpu_info()['active_isa']}, {args.rounds} rounds; GB/s of fp16 input, "
          f"best (median), and the paired ratio to {args.dirs[0]}")
    for D in args.head_dim:
        x = (np.random.default_rng(0).standard_normal((1, 8, 4096 * 128 // D, D)) * 2).astype(np.float16)
        for fid in args.formats:
            f = KVFormat.parse(fid)
            if D % f.resolved_channel_group(D):
                print(f"d{D:<4d} {fid:28s} (channel group does not divide d{D})")
                continue
            stores = []
            for m in mods:
                st = TensorStore(f, 1, 8, D, x.shape[2])
                if f.smooth:
                    st.arrays["mean"][...] = 0.1
                stores.append((st, wrap(m, st)))

            def run(i):
                p = stores[i][1]
                t0 = time.perf_counter()
                for _ in range(args.reps):
                    p.quantize(x, 0)
                return (time.perf_counter() - t0) / args.reps

            for i in range(len(mods)):
                run(i)
            same = [all(np.array_equal(a, stores[i][0].arrays[k]) for k, a in stores[0][0].arrays.items()
                        if a is not None) for i in range(len(mods))]
            res = alternate([lambda i=i: run(i) for i in range(len(mods))], args.rounds)
            for i, (dname, r) in enumerate(zip(args.dirs, res)):
                s = sorted(r)
                note = "" if same[i] else "  DIFFERENT BYTES"
                print(f"d{D:<4d} {fid:28s} {dname:24s} {x.nbytes / s[0] / 1e9:6.2f} ({x.nbytes / s[len(s) // 2] / 1e9:5.2f})"
                      f"  {paired_ratio(res[0], r):5.3f}x{note}")


if __name__ == "__main__":
    main()
