"""Emulation time of the Metal KV packing kernels (host emulation only).

Reports wall time per command buffer, so the CI budget of the Metal tests
stays known. These are NOT GPU timings: under the host emulation every
threadgroup's threads run as fibers on the CPU. On a Mac the same script
reports the GPU's time for the command buffer (never published from here).

    python bench/metal_emulation.py [--attention]
"""
import time

import numpy as np

from sagecore.cache import TensorStore
from sagecore.formats import KVFormat
from sagecore.metal import device, kernels


def main():
    info = device().info()
    print(f"device: {info['name']} ({'host emulation' if info['emulated'] else 'GPU'})")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 256, 128)).astype(np.float16)
    for fid in ("int8.t1.g32.s16", "int4.t1.g32.s16+rot", "int8.t32.g1.s16+smooth", "fp16"):
        st = TensorStore(KVFormat.parse(fid), 1, 8, 128, 256)
        kernels.quantize(st, x, 0)  # build + warm the pipeline cache
        best_q = best_d = 1e9
        out = np.empty(x.shape, np.float32)
        for _ in range(3):
            t0 = time.perf_counter()
            kernels.quantize(st, x, 0)
            best_q = min(best_q, time.perf_counter() - t0)
            t0 = time.perf_counter()
            kernels.dequantize(st, out, 0)
            best_d = min(best_d, time.perf_counter() - t0)
        print(f"{fid:26s} 8x256x128  quantize {best_q * 1e3:8.1f} ms   dequantize {best_d * 1e3:8.1f} ms")


def attention():
    """Whole attention plans on the Metal device beside the CPU kernels (a sanity anchor)."""
    import sagecore
    rng = np.random.default_rng(0)

    def best(fn):
        fn()
        b = 1e9
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            b = min(b, time.perf_counter() - t0)
        return b
    for M, N in ((1, 4096), (1, 16384), (64, 512), (256, 256)):
        q = rng.standard_normal((1, 32, M, 128)).astype(np.float32)
        k = rng.standard_normal((1, 8, N, 128)).astype(np.float16)
        v = rng.standard_normal((1, 8, N, 128)).astype(np.float16)
        for name in ("fp16", "int8", "int4"):
            c = sagecore.QuantKVCache(name, batch=1, kv_heads=8, head_dim=128, capacity=N)
            c.append(k, v)
            tm = best(lambda: c.attend(q, backend="metal"))
            tc = best(lambda: c.attend(q, backend="cpu"))
            print(f"M={M:4d} N={N:6d} {name:5s} metal {tm * 1e3:8.1f} ms   cpu {tc * 1e3:7.2f} ms")


if __name__ == "__main__":
    import sys
    main()
    if "--attention" in sys.argv[1:]:
        attention()
