"""Packing GB/s per format and ISA beside memcpy, one core, one run.

Each quantize trial is interleaved with a memcpy trial of the same bytes, and
the ratio is best quantize vs best memcpy over those interleaved trials, so
drift in this shared machine's speed hits both sides alike.

    OPENBLAS_NUM_THREADS=1 python bench/packing_report.py   (-> docs/benchmarks.md)
"""
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


def main():
    _cpu.set_num_threads(1)
    x = (np.random.default_rng(0).standard_normal((1, 8, 4096, 128)) * 2).astype(np.float16)
    dst = np.empty_like(x)
    copy = lambda: np.copyto(dst, x)  # noqa: E731
    isas = _cpu.supported_isas()
    print(f"input: {x.nbytes / 2**20:.0f} MiB fp16 K (8 heads x 4096 tokens x d128); GB/s of input; "
          f"(x memcpy) = ratio to np.copyto interleaved in the same trials")
    print(f"{'format':28s} " + " ".join(f"{i:>20s}" for i in isas))
    for fid in FORMATS:
        f = KVFormat("fp16") if fid == "fp16" else KVFormat.parse(fid)
        st = TensorStore(f, 1, 8, 128, 4096)
        if f.smooth:
            st.arrays["mean"][...] = 0.1
        cells = []
        for isa in isas:
            _cpu.set_isa(isa)
            tq, tm = interleaved(lambda: st.packed.quantize(x, 0), copy)
            cells.append(f"{x.nbytes / tq / 1e9:6.2f} ({tm / tq:4.2f}x)")
        _cpu.set_isa(isas[-1])
        print(f"{fid:28s} " + " ".join(f"{c:>20s}" for c in cells))


if __name__ == "__main__":
    main()
