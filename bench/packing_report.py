"""Print packing GB/s per format and ISA beside memcpy, one core, one run.

python bench/packing_report.py   (numbers go to docs/benchmarks.md)
"""
import time

import numpy as np

from sagecore import _cpu
from sagecore.cache import TensorStore
from sagecore.formats import KVFormat


def best_of(fn, reps=15):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main():
    _cpu.set_num_threads(1)
    x = (np.random.default_rng(0).standard_normal((1, 8, 4096, 128)) * 2).astype(np.float16)
    dst = np.empty_like(x)
    mc = x.nbytes / best_of(lambda: np.copyto(dst, x)) / 1e9
    print(f"memcpy (np.copyto, 8 MiB fp16): {mc:.2f} GB/s")
    print(f"{'format':28s} " + " ".join(f"{i:>12s}" for i in _cpu.supported_isas()) + "   best/memcpy")
    for fid in ["int8.t1.g32.s16", "int8.t32.g1.s16+smooth", "int4.t64.g1.s16+zp+smooth", "int4.t1.g32.s16+rot",
                "fp16"]:
        f = KVFormat("fp16") if fid == "fp16" else KVFormat.parse(fid)
        st = TensorStore(f, 1, 8, 128, 4096)
        row = []
        for isa in _cpu.supported_isas():
            _cpu.set_isa(isa)
            row.append(x.nbytes / best_of(lambda: st.packed.quantize(x, 0)) / 1e9)
        print(f"{fid:28s} " + " ".join(f"{g:9.2f}GB/s" for g in row) + f"   {max(row) / mc:.2f}")


if __name__ == "__main__":
    main()
