"""Packing GB/s per format and ISA beside memcpy, one core, one run.

Each quantize trial is interleaved with a memcpy trial of the same bytes, and
the ratio is best quantize vs best memcpy over those interleaved trials, so
drift in this shared machine's speed hits both sides alike.

    OPENBLAS_NUM_THREADS=1 python bench/packing_report.py   (-> docs/benchmarks.md)
    OPENBLAS_NUM_THREADS=1 python bench/packing_report.py --head-dim 64 96 256 --formats int8.t1.gD.s16+rot

(the same 8 MiB of fp16 input at every head dim: 8 heads x 4096 x 128 / D tokens)
"""
import argparse
import time

import numpy as np

from sagecore import _cpu
from sagecore.cache import TensorStore
from sagecore.formats import KVFormat

FORMATS = ["int8.t1.g32.s16", "int8.t1.gD.s16+rot", "int8.t32.g1.s16+smooth", "int4.t64.g1.s16+zp+smooth",
           "int4.t1.g32.s16+rot", "int4.t1.gD.s16+rot",
           "fp16"]


def interleaved(fn, ref, reps=21):
    best_f = best_r = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        best_r, best_f = min(best_r, t1 - t0), min(best_f, t2 - t1)
    return best_f, best_r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head-dim", type=int, nargs="+", default=[128], help="head dims (default 128)")
    ap.add_argument("--formats", nargs="+", default=FORMATS, help="format ids (default: the report's set)")
    ap.add_argument("--reps", type=int, default=21, help="interleaved trials per cell (default 21)")
    args = ap.parse_args(argv)
    _cpu.set_num_threads(1)
    for D in args.head_dim:
        report(D, args.formats, args.reps)


def report(D, formats, reps):
    x = (np.random.default_rng(0).standard_normal((1, 8, 4096 * 128 // D, D)) * 2).astype(np.float16)
    dst = np.empty_like(x)
    copy = lambda: np.copyto(dst, x)  # noqa: E731
    isas = _cpu.supported_isas()
    print(f"input: {x.nbytes / 2**20:.0f} MiB fp16 K (8 heads x {x.shape[2]} tokens x d{D}); GB/s of input; "
          f"(x memcpy) = ratio to np.copyto interleaved in the same trials")
    print(f"{'format':28s} " + " ".join(f"{i:>20s}" for i in isas))
    for fid in formats:
        f = KVFormat("fp16") if fid == "fp16" else KVFormat.parse(fid)
        if f.encoding != "fp16" and D % f.resolved_channel_group(D):
            print(f"{fid:28s} (channel group does not divide d{D})")
            continue
        st = TensorStore(f, 1, 8, D, x.shape[2])
        if f.smooth:
            st.arrays["mean"][...] = 0.1
        cells = []
        for isa in isas:
            _cpu.set_isa(isa)
            tq, tm = interleaved(lambda: st.packed.quantize(x, 0), copy, reps)
            cells.append(f"{x.nbytes / tq / 1e9:6.2f} ({tm / tq:4.2f}x)")
        _cpu.set_isa(isas[-1])
        print(f"{fid:28s} " + " ".join(f"{c:>20s}" for c in cells))


if __name__ == "__main__":
    main()
