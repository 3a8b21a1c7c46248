"""`python -m sagecore bench`: CPU attention on the standard workloads
(DESIGN section 9), side by side with the project's fp16 path and PyTorch.

Llama-3-8B-like shapes: B=1, 32 query / 8 kv heads, d=128.
- decode M=1 at N = 4k, 16k, 32k (and 128k with --full); "warm" attends over
  one cache, "cold" rotates through enough separate caches (like layers) to
  exceed the last-level cache --cold-factor times, so KV comes from DRAM;
- prefill M=N=2048 causal; chunked prefill M=512 against N=8192.
Reported: best time over repeats, KV bytes read per second (codes + scales of
the attended keys) and that as a fraction of the machine's read bandwidth
measured in the same run (sc_read_probe over a buffer larger than the LLC);
torch.nn.functional.scaled_dot_product_attention (bf16 and fp32,
enable_gqa=True) in the same run when torch is installed; and how much vector
throughput the threads deliver together (compute_scaling: on the shared VMs
two vCPUs sometimes share one core's vector units, which slows the
compute-bound paths -- int8/int4 at the integer settings -- and not fp16).

    OPENBLAS_NUM_THREADS=1 python -m sagecore bench [--full] [--json out.json]
"""
import argparse
import contextlib
import json
import sys
import time

import numpy as np

from sagecore import _cpu
from sagecore.cache import QuantKVCache

B, HQ, HKV, D = 1, 32, 8, 128
POLICIES = ["fp16", "int8", "int4", "q8_0"]


def llc_bytes():
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1], 1)
        return int(s.rstrip("KMG")) * mult
    except OSError:
        return 64 << 20


def cold_count(nbytes, factor=4.0):
    """How many copies of an nbytes working set a cold run rotates through:
    factor x the LLC in total (at least 2), so every call reads from DRAM."""
    return max(2, int(np.ceil(factor * llc_bytes() / max(1, nbytes))))


def probe_buffer(nbytes=None):
    """A buffer for sc_read_probe that cannot stay in the caches: nbytes
    (default: 2x the LLC, at least 1 GiB), written once."""
    return np.ones((nbytes or max(2 * llc_bytes(), 1 << 30)) // 8, np.uint64)


def read_bandwidth(nbytes=None):
    """This machine's DRAM read bandwidth now (bytes/s): the best of 5 reads of
    a probe_buffer by sc_read_probe on the kernels' threads."""
    probe = probe_buffer(nbytes)
    return probe.nbytes / min(_cpu.read_probe(probe) for _ in range(5))


def compute_scaling(n=30_000_000):
    """How many single threads' worth of vector throughput the kernels'
    threads deliver together now: threads x t(1 thread) / t(all threads)
    for the same multiply-adds per thread (sc_compute_probe; best of 3
    each). 2.0 on two free cores; ~1.0 when this VM's two vCPUs share one
    core's vector units, which on the shared development machines comes and
    goes within minutes (docs/benchmarks.md, session 13)."""
    th = _cpu.get_num_threads()
    if th <= 1:
        return 1.0
    try:
        _cpu.set_num_threads(1)
        one = min(_cpu.compute_probe(n)[0] for _ in range(3))
    finally:
        _cpu.set_num_threads(th)
    every = min(_cpu.compute_probe(n)[0] for _ in range(3))
    return th * one / every


def kv_bytes(cache):
    return sum(a.nbytes for _, a in cache._content())


def best_of(fn, reps):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def _progress(done, total, what):
    width = 30
    fill = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {what:40s}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def alternate(fns, rounds, before_round=None):
    """Time each of fns (each returns its own time per call) once per round,
    the order rotated by one every round so that no fn always runs first or
    right after the same neighbour (a position effect of up to 1.3x was seen
    on the shared machine, session 13); before_round() runs at the start of
    every round (probes). Returns one list of times per fn, index r of each
    list from round r."""
    times = [[] for _ in fns]
    for r in range(rounds):
        if before_round is not None:
            before_round()
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            times[i].append(fns[i]())
    return times


def paired_ratio(base, other):
    """Median over rounds of base[r] / other[r]: a speed-up of `other` over
    `base` from times taken in the same rounds, so a drift of the machine
    between rounds cancels (the ratio of two medians does not pair them)."""
    return float(np.median(np.asarray(base, float) / np.asarray(other, float)))


def timer(fn, reps=1, per=None):
    """A callable for alternate(): runs fn reps times, returns the seconds
    divided by per (default reps), i.e. per call of whatever fn stands for."""
    def t():
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / (per or reps)
    return t


def round_robin(fns, rounds, reps=1):
    """Best time per call of each fn, measured round-robin (after one warm-up
    call each) so that a burst of machine noise hits every path alike."""
    for fn in fns:
        fn()
    return [min(ts) for ts in alternate([timer(fn, reps) for fn in fns], rounds)]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sagecore bench")
    ap.add_argument("--full", action="store_true", help="also decode at N=131072")
    ap.add_argument("--cold-factor", type=float, default=4.0)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold (DRAM) decode runs")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    ap.add_argument("--quick", action="store_true", help="N=4096 decode and the chunk only (smoke run)")
    ap.add_argument("--small-only", action="store_true",
                    help="only the small-call (N=16 decode, fixed cost per call) comparison")
    ap.add_argument("--prefill-ab", action="store_true",
                    help="only prefill 2048 causal: int8 (fp32-level), int8 with precision='bf16', int4 with "
                         "precision='int8' and torch bf16, timed round-robin in one process (best of 8 each)")
    ap.add_argument("--decode-ab", type=int, metavar="N", nargs="?", const=32768,
                    help="only cold decode at N keys (default 32768): fp16, int8 and int4 (each also with "
                         "precision='bf16') and torch bf16, timed round-robin in one process (rotating through caches "
                         "totalling --cold-factor x the LLC per path)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --decode-ab (default 5)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "metal"],
                    help="backend to measure (metal: only on a Mac with the Metal backend built)")
    args = ap.parse_args(argv)
    if args.backend != "cpu":
        from sagecore.backends import capabilities
        caps = capabilities(args.backend)
        if not caps.available:
            print(f"error: backend {args.backend!r} is unavailable: {caps.unavailable_reason}", file=sys.stderr)
            return 2
        if caps.emulated:
            print("error: the Metal device here is the host emulation, which runs kernels on the CPU for "
                  "correctness and measures no GPU time; bench --backend metal needs a Mac with an Apple GPU",
                  file=sys.stderr)
            return 2
        return _bench_metal(args)
    torch = None
    try:
        if args.no_torch:
            raise ImportError
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(_cpu.get_num_threads())
    except ImportError:
        torch = None
    if args.prefill_ab:
        return _prefill_ab(torch)
    if args.decode_ab:
        if args.rounds < 1:
            print(f"error: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
            return 2
        return _decode_ab(torch, args.decode_ab, rounds=args.rounds, cold_factor=args.cold_factor)
    rng = np.random.default_rng(0)
    llc = llc_bytes()
    bw = read_bandwidth()
    scal = compute_scaling()
    print(f"threads {_cpu.get_num_threads()}, isa {_cpu.cpu_info()['active_isa']}, LLC {llc >> 20} MiB, "
          f"read bandwidth (sc_read_probe, same run) {bw / 1e9:.1f} GB/s, vector throughput of the threads "
          f"together {scal:.2f}x one thread (compute_scaling, at the start)")
    rows = []

    def report(name, path, t, nbytes, extra=""):
        sys.stderr.write("\r" + " " * 80 + "\r")
        gbs = nbytes / t / 1e9
        rows.append(dict(workload=name, path=path, ms=t * 1e3, kv_gbs=gbs, frac_bw=gbs * 1e9 / bw))
        print(f"{name:22s} {path:14s} {t * 1e3:9.2f} ms  KV {gbs:6.2f} GB/s  {gbs * 1e9 / bw:5.2f} of read bw {extra}")

    decode_ns = [] if args.small_only else [4096] if args.quick else \
        [4096, 16384, 32768] + ([131072] if args.full else [])
    prefill = [] if args.small_only else [("chunk 512 x 8192", 512, 8192)] if args.quick else \
        [("prefill 2048 causal", 2048, 2048), ("chunk 512 x 8192", 512, 8192)]
    steps = 1 + len(decode_ns) * (len(POLICIES) + 2 + (1 if torch is not None else 0)) + len(prefill)
    step = 0
    # fixed cost per call: decode at N=16, where almost everything is overhead
    _progress(step, steps, "small call N=16")
    step += 1
    import sagecore
    qs = rng.standard_normal((B, HQ, 1, D)).astype(np.float16)
    ks = rng.standard_normal((B, HKV, 16, D)).astype(np.float16)
    vs = rng.standard_normal((B, HKV, 16, D)).astype(np.float16)
    os_ = np.empty(qs.shape, np.float32)
    reps_small = 2000

    names = ["sdpa", "C kernel"]
    fns = [lambda: sagecore.sdpa(qs, ks, vs),
           lambda: _cpu.attention_tensors(qs, ks, vs, os_, None, D ** -0.5, False, 1, None)]
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x.astype(np.float32)).bfloat16() for x in (qs, ks, vs))
        fq, fk, fv = (torch.from_numpy(x.astype(np.float32)) for x in (qs, ks, vs))
        names += ["torch-bfloat16", "torch-float32"]
        fns += [lambda: F.scaled_dot_product_attention(tq, tk, tv, enable_gqa=True),
                lambda: F.scaled_dot_product_attention(fq, fk, fv, enable_gqa=True)]
    with (torch.no_grad() if torch is not None else contextlib.nullcontext()):
        small = list(zip(names, round_robin(fns, 7, reps_small)))
    t_sd, t_c = small[0][1], small[1][1]
    sys.stderr.write("\r" + " " * 80 + "\r")
    for name, t in small:
        rows.append(dict(workload="small call N=16", path=name, ms=t * 1e3, kv_gbs=0.0, frac_bw=0.0))
        print(f"{'small call N=16':22s} {name:14s} {t * 1e6:9.2f} us")
    print(f"{'':22s} python cost per sdpa call {(t_sd - t_c) * 1e6:.2f} us"
          + (f"; torch bf16 / sdpa {small[2][1] / t_sd:.2f}x, torch fp32 / sdpa {small[3][1] / t_sd:.2f}x"
             if len(small) > 2 else ""))
    q = rng.standard_normal((B, HQ, 1, D)).astype(np.float32)
    out = np.empty_like(q)
    for N in decode_ns:
        k = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        v = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        # FlashAttention over plain fp16 tensors (sdpa), and numpy's materialized softmax(QK^T)V in fp32
        _progress(step, steps, f"decode N={N} sdpa fp16")
        step += 1
        t = best_of(lambda: sagecore.sdpa(q, k, v, out=out), args.reps)
        report(f"decode N={N} warm", "sdpa-fp16", t, k.nbytes + v.nbytes)
        _progress(step, steps, f"decode N={N} numpy")
        step += 1
        kf, vf = k.astype(np.float32), v.astype(np.float32)
        qg = q.reshape(B, HKV, HQ // HKV, D)

        def numpy_sdpa():
            s_ = qg @ kf.transpose(0, 1, 3, 2) * D ** -0.5
            s_ -= s_.max(-1, keepdims=True)
            p_ = np.exp(s_)
            p_ /= p_.sum(-1, keepdims=True)
            return p_ @ vf
        t = best_of(numpy_sdpa, args.reps)
        report(f"decode N={N} warm", "numpy-fp32", t, kf.nbytes + vf.nbytes)
        del kf, vf
        for pol in POLICIES:
            _progress(step, steps, f"decode N={N} {pol}")
            step += 1
            one = QuantKVCache(pol, batch=B, kv_heads=HKV, head_dim=D, capacity=N)
            one.append(k, v)
            nb = kv_bytes(one)
            # int8 and int4 also with bf16-class operands allowed (AVX512-VNNI: QK^T and PV in integers),
            # int4 with 8-bit operands as well (precision="int8": VPDPBUSD)
            # (the plain label: the fp32 setting, named; a policy's default may be lower)
            variants = [(pol, {"precision": "fp32"})] + ([(f"{pol}-bf16", {"precision": "bf16"})] if pol in ("int8", "int4") else []) \
                + ([("int4-int8", {"precision": "int8"})] if pol == "int4" else [])
            for label, kw in variants:
                t = best_of(lambda: one.attend(q, out=out, **kw), args.reps)
                report(f"decode N={N} warm", label, t, nb)
            if args.no_cold:
                del one
                continue
            ncache = cold_count(nb, args.cold_factor)
            caches = [one]
            for _ in range(ncache - 1):
                c = QuantKVCache(pol, batch=B, kv_heads=HKV, head_dim=D, capacity=N)
                c.append(k, v)
                caches.append(c)
            for label, kw in variants:
                for c in caches:  # touch once
                    c.attend(q, out=out, **kw)
                t0 = time.perf_counter()
                rounds = 3
                for _ in range(rounds):
                    for c in caches:
                        c.attend(q, out=out, **kw)
                t = (time.perf_counter() - t0) / (rounds * len(caches))
                report(f"decode N={N} cold", label, t, nb, f"({len(caches)} caches)")
            del caches, one
        if torch is not None:
            _progress(step, steps, f"decode N={N} torch")
            step += 1
            for dt in (torch.bfloat16, torch.float32):
                nb = 2 * B * HKV * N * D * (2 if dt == torch.bfloat16 else 4)
                ncache = cold_count(nb, args.cold_factor)
                kt = [torch.from_numpy(k.astype(np.float32)).to(dt) for _ in range(ncache)]
                vt = [torch.from_numpy(v.astype(np.float32)).to(dt) for _ in range(ncache)]
                qt = torch.from_numpy(q).to(dt)
                with torch.no_grad():
                    t = best_of(lambda: F.scaled_dot_product_attention(qt, kt[0], vt[0], enable_gqa=True), args.reps)
                    report(f"decode N={N} warm", f"torch-{str(dt)[6:]}", t, nb)
                    if args.no_cold:
                        continue
                    t0 = time.perf_counter()
                    for _ in range(3):
                        for a, b in zip(kt, vt):
                            F.scaled_dot_product_attention(qt, a, b, enable_gqa=True)
                    t = (time.perf_counter() - t0) / (3 * ncache)
                    report(f"decode N={N} cold", f"torch-{str(dt)[6:]}", t, nb)
                del kt, vt

    for name, M, N in prefill:
        _progress(step, steps, name)
        step += 1
        k = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        v = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        qp = rng.standard_normal((B, HQ, M, D)).astype(np.float32)
        op = np.empty_like(qp)
        for pol in POLICIES:
            c = QuantKVCache(pol, batch=B, kv_heads=HKV, head_dim=D, capacity=N)
            c.append(k, v)
            t = best_of(lambda: c.attend(qp, out=op, is_causal=True, precision="fp32"), max(2, args.reps // 3))
            report(name, pol, t, kv_bytes(c))
            if pol == "int8":  # bf16 operands allowed: torch bf16's precision class (AMX: 1 product, not 3)
                t = best_of(lambda: c.attend(qp, out=op, is_causal=True, precision="bf16"), max(2, args.reps // 3))
                report(name, "int8-bf16", t, kv_bytes(c))
        if torch is not None:
            for dt in (torch.bfloat16, torch.float32):
                qt = torch.from_numpy(qp).to(dt)
                kt = torch.from_numpy(k.astype(np.float32)).to(dt)
                vt = torch.from_numpy(v.astype(np.float32)).to(dt)
                # torch's is_causal is top-left aligned; pass the right-aligned mask explicitly for M != N
                mask = None if M == N else torch.from_numpy(
                    np.arange(N)[None, :] <= (N - M + np.arange(M))[:, None])
                with torch.no_grad():
                    fn = (lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)) \
                        if mask is None else \
                        (lambda: F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True))
                    t = best_of(fn, max(2, args.reps // 3))
                report(name, f"torch-{str(dt)[6:]}", t, 2 * B * HKV * N * D * (2 if dt == torch.bfloat16 else 4))
    _progress(steps, steps, "done")
    # side-by-side ratios from this run
    by = {(r["workload"], r["path"]): r["ms"] for r in rows}
    for tp in ("torch-bfloat16", "torch-float32"):
        if ("small call N=16", tp) in by:
            print(f"  {'small call N=16':22s} sdpa  vs {tp:14s} "
                  f"{by[('small call N=16', tp)] / by[('small call N=16', 'sdpa')]:5.2f}x")
    print("\nratios (time of the other path / time of ours, same run):")
    for (wl, path), ms in by.items():
        if path in ("int8", "int4", "sdpa-fp16", "int8-bf16", "int4-bf16", "int4-int8"):
            parts = [f"vs fp16 {by[(wl, 'fp16')] / ms:5.2f}x"] if (wl, "fp16") in by else []
            other = "int8-bf16" if path == "int4-int8" else "int8" + path[4:]
            if path.startswith("int4") and (wl, other) in by:
                parts.append(f"vs {other} {by[(wl, other)] / ms:5.2f}x")
            if (wl, "torch-bfloat16") in by:
                parts.append(f"vs torch bf16 {by[(wl, 'torch-bfloat16')] / ms:5.2f}x")
            print(f"  {wl:22s} {path:9s} " + "  ".join(parts))
    _print_targets(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(read_bw=bw, compute_scaling=scal, rows=rows), f, indent=1)
    return 0


#: issue 3's speed targets: (label, workload, path, reference path or None for
#: the read-bandwidth fraction, minimum)
TARGETS = [
    ("int8 decode 32k cold: KV bytes/s / read bandwidth", "decode N=32768 cold", "int8", None, 0.8),
    ("int8 decode 32k cold vs torch bf16", "decode N=32768 cold", "int8", "torch-bfloat16", 6.0),
    ("int4 decode 32k cold vs int8", "decode N=32768 cold", "int4", "int8", 1.7),
    ("int8 decode 32k cold vs fp16 cache", "decode N=32768 cold", "int8", "fp16", 1.8),
    ("prefill 2048 causal int8 vs torch bf16", "prefill 2048 causal", "int8", "torch-bfloat16", 1.2),
]


def _print_targets(rows) -> None:
    """The targets this run measured, each with its value and whether it is met
    (the bf16-setting variants alongside, for information)."""
    by = {(r["workload"], r["path"]): r for r in rows}
    lines = []
    for label, wl, path, ref, goal in TARGETS:
        pairs = [(path, ref, ""), (path + "-bf16", ref + "-bf16" if ref in ("int8", "int4") else ref, " (bf16)")]
        if path == "int4":  # each format at its fastest precision that meets its accuracy targets
            pairs.append(("int4-int8", "int8-bf16" if ref == "int8" else ref, " (int4 at int8, int8 at bf16)"))
        for p, r, tag in pairs:
            if (wl, p) not in by or (r is not None and (wl, r) not in by):
                continue
            val = by[(wl, p)]["frac_bw"] if r is None else by[(wl, r)]["ms"] / by[(wl, p)]["ms"]
            name = label if p == path else label.replace(path, p, 1).replace(f"vs {ref}", f"vs {r}") + tag
            lines.append(f"  {name:66s} {val:5.2f}{'' if r is None else 'x'}  target >= {goal:g}: "
                         f"{'met' if val >= goal else 'NOT met'}")
    if lines:
        print("\ntargets (issue 3; same run):")
        print("\n".join(lines))



def _prefill_ab(torch, rounds=8):
    """Prefill 2048 causal, B=1, 32/8 heads, d128: the int8 cache at both
    precisions, the int4 cache at its policy's ("int8": integer K and V
    where the CPU has AVX512-VNNI) and torch's bf16 SDPA, alternated so that
    machine noise hits all of them alike; prints best times and same-run
    ratios."""
    rng = np.random.default_rng(0)
    M = N = 2048
    k = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
    v = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
    q = rng.standard_normal((B, HQ, M, D)).astype(np.float32)
    o = np.empty_like(q)
    c = QuantKVCache("int8", batch=B, kv_heads=HKV, head_dim=D, capacity=N)
    c.append(k, v)
    c4 = QuantKVCache("int4", batch=B, kv_heads=HKV, head_dim=D, capacity=N)
    c4.append(k, v)
    fns = {"int8": lambda: c.attend(q, out=o, is_causal=True, precision="fp32"),
           "int8-bf16": lambda: c.attend(q, out=o, is_causal=True, precision="bf16"),
           "int4-int8": lambda: c4.attend(q, out=o, is_causal=True, precision="int8")}
    if torch is not None:
        import torch.nn.functional as F
        tq, tk, tv = (torch.from_numpy(x.astype(np.float32)).bfloat16() for x in (q, k, v))
        fns["torch-bfloat16"] = lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True, enable_gqa=True)
    with (torch.no_grad() if torch is not None else contextlib.nullcontext()):
        best = dict(zip(fns, round_robin(list(fns.values()), rounds)))
    print(f"prefill 2048 causal, threads {_cpu.get_num_threads()}, isa {_cpu.cpu_info()['active_isa']}, "
          f"round-robin best of {rounds}")
    for name, t in best.items():
        print(f"  {name:16s} {t * 1e3:8.1f} ms"
              + (f"   torch bf16 / this {best['torch-bfloat16'] / t:5.2f}x" if "torch-bfloat16" in best else ""))
    return 0


def _decode_ab(torch, n=32768, rounds=5, cold_factor=4.0, probe_bytes=None):
    """Cold decode at n keys, B=1, 32/8 heads, d128: our fp16, int8 (both
    precisions) and int4 caches and torch's bf16 SDPA. Each path rotates
    through its own caches (cold_factor x the LLC in total, so every call
    reads K/V from DRAM); the paths alternate round by round, so that machine
    noise hits all of them alike. Prints best and median per call and the
    same-round ratios, and the KV bytes per second of each path as a fraction
    of the read bandwidth (issue 3's first target), which is measured in
    every round as well (best of 3 reads): on a shared machine it moves too
    (28-54 GB/s seen on one machine), so each round's fraction uses that
    round's probe."""
    probe = probe_buffer(probe_bytes)
    rng = np.random.default_rng(0)
    k = rng.standard_normal((B, HKV, n, D)).astype(np.float16)
    v = rng.standard_normal((B, HKV, n, D)).astype(np.float16)
    q = rng.standard_normal((B, HQ, 1, D)).astype(np.float32)
    o = np.empty_like(q)

    def rotation(make, nbytes, call):
        items = [make() for _ in range(cold_count(nbytes, cold_factor))]
        return lambda: [call(x) for x in items], len(items), nbytes

    def cache(pol):
        c = QuantKVCache(pol, batch=B, kv_heads=HKV, head_dim=D, capacity=n)
        c.append(k, v)
        return c

    paths = {}
    fp32 = {"precision": "fp32"}  # named: the int8/int4 policies' defaults are lower (bf16 / int8)
    for name, pol, kw in (("fp16", "fp16", fp32), ("int8", "int8", fp32), ("int8-bf16", "int8", {"precision": "bf16"}),
                          ("int4", "int4", fp32), ("int4-bf16", "int4", {"precision": "bf16"}),
                          ("int4-int8", "int4", {"precision": "int8"})):
        paths[name] = rotation(lambda pol=pol: cache(pol), kv_bytes(cache(pol)),
                               lambda c, kw=kw: c.attend(q, out=o, **kw))
    if torch is not None:
        import torch.nn.functional as F
        tq = torch.from_numpy(q).bfloat16()
        paths["torch-bfloat16"] = rotation(
            lambda: (torch.from_numpy(k.astype(np.float32)).bfloat16(), torch.from_numpy(v.astype(np.float32)).bfloat16()),
            2 * k.size * 2, lambda kv: F.scaled_dot_product_attention(tq, kv[0], kv[1], enable_gqa=True))
    with (torch.no_grad() if torch is not None else contextlib.nullcontext()):
        for fn, _, _ in paths.values():  # touch once
            fn()
        bws, scal = [], []

        def probes():
            # best of 3: other load on the machine can only lower a probe (one
            # single probe read 15.9 GB/s beside rounds of 60), never raise it
            bws.append(max(probe.nbytes / _cpu.read_probe(probe) for _ in range(3)))
            scal.append(compute_scaling())

        # each fn runs a path over all its caches: time per call = / count
        times = dict(zip(paths, alternate([timer(fn, per=count) for fn, count, _ in paths.values()], rounds, probes)))
    print(f"decode N={n} cold, threads {_cpu.get_num_threads()}, isa {_cpu.cpu_info()['active_isa']}, "
          f"round-robin over {rounds} rounds; read bandwidth (sc_read_probe, every round) "
          f"{min(bws) / 1e9:.1f}-{max(bws) / 1e9:.1f} GB/s; vector throughput of the threads together "
          f"(compute_scaling, every round) {min(scal):.2f}-{max(scal):.2f}x one thread")
    med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    for name, t in times.items():
        parts = [f"  {name:16s} best {min(t) * 1e3:7.2f} ms  median {med[name] * 1e3:7.2f} ms"]
        if name != "fp16":
            parts.append(f"fp16 / this {med['fp16'] / med[name]:5.2f}x")
        other = "int8-bf16" if name == "int4-int8" else "int8" + name[4:]
        if name.startswith("int4") and other in med:
            parts.append(f"{other} / this {med[other] / med[name]:5.2f}x")
        if "torch-bfloat16" in med and name != "torch-bfloat16":
            parts.append(f"torch bf16 / this {med['torch-bfloat16'] / med[name]:5.2f}x")
        nb = paths[name][2]
        frac = sorted(nb / ti / b for ti, b in zip(t, bws))  # each round against its own probe
        parts.append(f"KV/read bw: best {frac[-1]:.3g} median {frac[len(frac) // 2]:.3g}")
        print("   ".join(parts))
    # The compute-bound paths need the threads' vector units: report the
    # rounds in which the machine gave them (near) all of it separately.
    th = _cpu.get_num_threads()
    full = [r for r, x in enumerate(scal) if x >= 0.9 * th]
    if th > 1:
        print(f"rounds with the threads at >= {0.9 * th:.1f}x one thread's vector throughput: {len(full)} of {rounds}")
    if th > 1 and full:
        fm = {name: float(np.median([t[r] for r in full])) for name, t in times.items()}
        for name in ("int8-bf16", "int4-int8"):
            fr = float(np.median([paths[name][2] / times[name][r] / bws[r] for r in full]))
            extra = (f", fp16 / this {fm['fp16'] / fm[name]:.2f}x" if name == "int8-bf16"
                     else f", int8-bf16 / this {fm['int8-bf16'] / fm[name]:.2f}x")
            print(f"  in them: {name:10s} median {fm[name] * 1e3:6.2f} ms, KV/read bw {fr:.3g}{extra}")
    return 0


def metal_read_bandwidth(nbytes: int = 1 << 28) -> float:
    """Bytes per second the Metal device reads (sc_read_probe over a fresh buffer, best of 5)."""
    from sagecore.metal import device, library
    dev, lib = device(), library("probe")
    per = 64
    n4 = nbytes // 16
    threads = n4 // per
    src, out = dev.buffer(threads * per * 16), dev.buffer(threads * 4)
    best = 1e9
    for _ in range(5):
        c = dev.command_buffer()
        c.set_pipeline(lib.pipeline("sc_read_probe"))
        c.set_buffer(0, src)
        c.set_buffer(1, out)
        c.set_bytes(2, np.array([per], np.uint32))
        c.dispatch((threads // 256, 1, 1), (256, 1, 1))
        c.commit()
        c.wait()
        best = min(best, c.gpu_time())
    return threads * per * 16 / best


def _bench_metal(args) -> int:  # pragma: no cover - needs a Mac with an Apple GPU
    """Decode and prefill on the Metal GPU: GPU time of the plan's command
    buffer, KV bytes per second and their fraction of the device's measured
    read bandwidth, quantized against fp16. Never run in this project's CI
    (no Apple hardware); no Apple numbers are published from it."""
    import sagecore
    from sagecore.metal import attention as mattn
    from sagecore.metal import device
    info = device().info()
    bw = metal_read_bandwidth()
    print(f"metal device: {info['name']} (Apple GPU family {info['gpu_family']}); read bandwidth "
          f"{bw / 1e9:.1f} GB/s (sc_read_probe)")
    rng = np.random.default_rng(0)
    B, HQ, HKV, D = 1, 32, 8, 128
    rows = []

    def gpu_best(fn, reps):
        fn()
        best = 1e9
        for _ in range(max(3, reps)):
            fn()
            best = min(best, mattn.LAST_GPU_TIME)
        return best

    work = [("decode", 1, n) for n in ([4096] if args.quick else [4096, 16384, 32768])]
    work += [] if args.quick else [("prefill causal", 2048, 2048), ("chunk", 512, 8192)]
    for kind, M, N in work:
        k = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        v = rng.standard_normal((B, HKV, N, D)).astype(np.float16)
        q = rng.standard_normal((B, HQ, M, D)).astype(np.float32)
        base = None
        for name in ("fp16", "int8", "int4"):
            cache = sagecore.QuantKVCache(name, batch=B, kv_heads=HKV, head_dim=D, capacity=N)
            cache.append(k, v)
            t = gpu_best(lambda: cache.attend(q, backend="metal"), args.reps)
            gbs = cache.nbytes / t / 1e9
            base = t if name == "fp16" else base
            label = f"{kind} M={M} N={N}"
            rows.append(dict(workload=label, path=name, ms=t * 1e3, kv_gbs=gbs, frac_bw=gbs * 1e9 / bw))
            print(f"{label:28s} {name:6s} {t * 1e3:9.3f} ms  KV {gbs:7.1f} GB/s  {gbs * 1e9 / bw:5.2f} of read bw"
                  f"  {'' if name == 'fp16' else f'{base / t:5.2f}x fp16'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=info, read_bw=bw, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    main()
