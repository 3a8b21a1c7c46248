"""The int4 decode against bench/stream_balance.c's synthetic (int4's bytes
and instruction mix, no format logic), alternated call by call in one
process, cold: how far the real kernel is from what the machine gives a
kernel of its balance at the same moment. (Separate processes minutes apart
compare phases of this shared machine, not code.)

    OPENBLAS_NUM_THREADS=1 python bench/stream_balance_ab.py [--n 32768] [--threads 2]
        [--rounds 10] [--extra 12] [--caches 4]

Each round calls, for each of --caches caches in turn: int4 at "int8", the
synthetic (with --extra added products per key: 12 puts its warm time
near the kernel's), int8 at "bf16". Prints ns per key and kv head per
thread (medians) and the per-round ratios. Session 20 (docs/benchmarks.md):
int4 / synthetic 1.31-1.46 before the V prefetch was spread over pvb_pass's
two passes, 1.13-1.20 after. Needs a C compiler with OpenMP and AVX512-VNNI.
"""
import argparse
import ctypes
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from sagecore import QuantKVCache

ROOT = pathlib.Path(__file__).resolve().parent


def build(tmp: str) -> ctypes.CDLL:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if not cc:
        raise SystemExit("stream_balance_ab: needs a C compiler (CC)")
    so = os.path.join(tmp, "stream_balance.so")
    r = subprocess.run([cc, "-O2", "-fopenmp", "-shared", "-fPIC", "-DSB_LIB", str(ROOT / "stream_balance.c"),
                        "-o", so], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"stream_balance_ab: building the synthetic failed:\n{r.stderr[-2000:]}")
    lib = ctypes.CDLL(so)
    lib.sb_call.restype = ctypes.c_double
    return lib


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32768, help="keys (a multiple of 256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--extra", type=int, default=12, help="products added per key in the synthetic")
    ap.add_argument("--caches", type=int, default=4, help="caches per path, rotated (cold)")
    args = ap.parse_args(argv)
    if args.n < 256 or args.n % 256:
        ap.error("--n: expected a positive multiple of 256")
    for name in ("threads", "rounds", "caches"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: expected at least 1")
    if args.extra < 0:
        ap.error("--extra: expected >= 0")
    hkv, hq, d, n = 8, 32, 128, args.n
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(tmp)
        rc = lib.sb_init(n, args.caches)
        if rc == 1:
            print("stream_balance_ab: the synthetic needs AVX512-VNNI", file=sys.stderr)
            return 1
        if rc:
            raise SystemExit(f"stream_balance_ab: sb_init failed ({rc})")
        rng = np.random.default_rng(0)
        k = rng.standard_normal((1, hkv, n, d), dtype=np.float32)
        v = rng.standard_normal((1, hkv, n, d), dtype=np.float32)

        def make(policy):
            c = QuantKVCache(policy, batch=1, kv_heads=hkv, head_dim=d, capacity=n)
            c.append(k, v)
            return c
        c4 = [make("int4") for _ in range(args.caches)]
        c8 = [make("int8") for _ in range(args.caches)]
        q = rng.standard_normal((1, hq, 1, d), dtype=np.float32)
        out = np.empty((1, hq, 1, d), np.float32)
        from sagecore import _cpu
        _cpu.set_num_threads(args.threads)
        per = n * hkv / args.threads / 1e9  # seconds -> ns per key and kv head per thread
        res = {"int4": [], "synthetic": [], "int8": []}
        for r in range(args.rounds + 1):  # round 0 warms up
            t = dict.fromkeys(res, 0.0)
            for i in range(args.caches):
                t0 = time.perf_counter()
                c4[i].attend(q, precision="int8", out=out)
                t["int4"] += time.perf_counter() - t0
                t["synthetic"] += lib.sb_call(i, args.threads, args.extra)
                t0 = time.perf_counter()
                c8[i].attend(q, precision="bf16", out=out)
                t["int8"] += time.perf_counter() - t0
            if r:
                for key in res:
                    res[key].append(t[key] / args.caches / per)
    a = {key: np.array(x) for key, x in res.items()}
    print(f"N {n} cold ({args.caches} caches per path), {args.threads} threads, synthetic +{args.extra} products, "
          f"{args.rounds} rounds; ns per key and kv head per thread, medians")
    print(f"  int4 at 'int8' {np.median(a['int4']):6.2f}   synthetic {np.median(a['synthetic']):6.2f}   "
          f"int8 at 'bf16' {np.median(a['int8']):6.2f}")
    print(f"  paired by round: int4 / synthetic {np.median(a['int4'] / a['synthetic']):.3f}   "
          f"int8 / int4 {np.median(a['int8'] / a['int4']):.3f}   int8 / synthetic {np.median(a['int8'] / a['synthetic']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
