"""Command line: ``python -m sagecore {info,demo,accuracy,bench,tune}``."""

from __future__ import annotations

import argparse
import sys
import time


def _info(args) -> int:
    import sagecore
    from sagecore import _cpu, backends
    from sagecore.policy import builtin_policies

    cpu = _cpu.cpu_info()
    print(f"sagecore {sagecore.__version__}")
    print(f"python   {sys.version.split()[0]} on {sys.platform}")
    print(f"cpu      features: {cpu['features'] or '(none detected)'}")
    print(f"         isa: best {cpu['best_isa']}, active {cpu['active_isa']} "
          f"(usable: {', '.join(_cpu.supported_isas())}; force with SAGECORE_ISA)")
    print(f"         threads: {cpu['threads']}")
    vnni = "VNNI integer QK/PV in decode at precision='bf16', 8-bit over int4 codes at 'int8'"
    # the avx2 level's AVX-VNNI integer decode (csrc/cpu.c: sc_cpu_avxvnni_mode)
    avx2 = {"vex": "AVX2 + AVX-VNNI (integer decode over k16 K at precision='bf16'/'int8')",
            "evex-twin": "AVX2 + the EVEX twin of its AVX-VNNI decode (SAGECORE_AVXVNNI=evex: testing)"}.get(
                cpu["avxvnni"], "AVX2")
    kernels = {"portable": "portable C", "avx2": avx2, "avx512": "AVX-512", "avx512_vnni": f"AVX-512 ({vnni})",
               "amx": f"AVX-512 (decode; {vnni}) + AMX bf16x3 tiles (prefill)",
               "neon": "NEON", "neon_dotprod": "NEON (dotprod integer QK for int8 K)"}
    print(f"attention kernels: {kernels.get(cpu['active_isa'], cpu['active_isa'])} path; head dims "
          f"32, 64, 80, 96, 128, 192, 256; split-K automatic for long caches with few heads")
    _metal_info()
    print("backends")
    for name in backends.BACKENDS:
        caps = backends.capabilities(name)
        state = "available" if caps.available else f"unavailable: {caps.unavailable_reason}"
        print(f"  {name:10s} {state}")
    print("encodings fp16, int8, int4 (options: smooth, rotate, outliers, zero_point; code layouts: rows, k16)")
    print("built-in policies")
    for name, pol in builtin_policies().items():
        bits = (pol.k.bits_per_element(128) + pol.v.bits_per_element(128)) / 2
        print(f"  {name:12s} k={pol.k.format_id:32s} v={pol.v.format_id:22s} {bits:5.2f} bits/elem @d128, "
              f"precision {pol.precision}")
    return 0


def _metal_info():
    from sagecore import errors, metal
    try:
        info = metal.device().info()
    except errors.MetalError as e:
        print(f"metal    unavailable: {e}")
        return
    if info["emulated"]:
        print(f"metal    {info['name']}: metal/*.metal compiled as C++, threadgroups run as fibers on the CPU "
              "(kernel logic only: no GPU timing or precision)")
    else:
        print(f"metal    {info['name']} (Apple GPU family {info['gpu_family']}, "
              f"{info['max_threadgroup_memory'] // 1024} KB threadgroup memory, "
              f"simdgroup matrix {'yes' if info['simdgroup_matrix'] else 'no'})")
    print("         kernels: KV quantize/dequantize for every quantized format (sagecore.metal.kernels); "
          "attention sc_attn_vec (decode), sc_attn_mma (prefill), sc_attn_reduce (split-K) "
          "(sagecore.metal.attention)")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _demo(args) -> int:
    from sagecore import workloads
    from sagecore.cache import QuantKVCache
    from sagecore.policy import builtin_policies
    from sagecore.reference import quality, sdpa_reference

    B, Hq, Hkv, D, N = 1, 32, 8, 128, args.tokens
    print(f"LLM-like KV cache: batch {B}, {Hq} query / {Hkv} kv heads, head_dim {D}, {N} tokens")
    print("  (K with large-offset channels, RoPE-rotated Q/K, an attention-sink token)")
    q, k, v = workloads.llm_like(batch=B, q_heads=Hq, kv_heads=Hkv, q_len=1, kv_len=N, head_dim=D,
                                 seed=args.seed)
    ref = sdpa_reference(q, k, v, is_causal=True)
    fp16_bytes = 2 * k.size * 2
    from sagecore import _cpu
    print(f"  attention: the CPU kernels via QuantKVCache.attend() ({_cpu.cpu_info()['active_isa']} path, "
          f"{_cpu.get_num_threads()} threads), one decode step of all {Hq} query heads")
    print(f"\n{'policy':12s} {'memory':>10s} {'vs fp16':>8s} {'bits':>6s} {'cosine':>10s} "
          f"{'min head':>10s} {'rel L1':>8s} {'append':>9s} {'attend':>9s}  precision")
    def build(pol):
        cache = QuantKVCache(pol, batch=B, kv_heads=Hkv, head_dim=D, capacity=N)
        t0 = time.perf_counter()
        # prefill in chunks, then a few decode steps, like a serving loop
        step = 512
        for s in range(0, N - 4, step):
            e = min(s + step, N - 4)
            cache.append(k[:, :, s:e], v[:, :, s:e])
        for s in range(N - 4, N):
            cache.append(k[:, :, s:s + 1], v[:, :, s:s + 1])
        return cache, time.perf_counter() - t0

    built = {}
    for name, pol in builtin_policies().items():
        # median of three builds: on 2 cores the first can collide with numpy's
        # BLAS threads still spinning after the previous attention
        runs = [build(pol) for _ in range(3)]
        cache = runs[0][0]
        t_append = sorted(t for _, t in runs)[1]
        built[name] = cache
        out = cache.attend(q)
        t_attend = min(_timed(lambda: cache.attend(q)) for _ in range(5))
        m = quality(out, ref)
        print(f"{name:12s} {cache.nbytes / 2**20:8.2f}MB {cache.nbytes / fp16_bytes:7.3f}x "
              f"{cache.bits_per_element():6.2f} {m['cosine']:10.6f} {m['min_head_cosine']:10.6f} "
              f"{m['rel_l1']:8.4f} {t_append * 1e3:7.1f}ms {t_attend * 1e3:7.1f}ms  {cache.policy.precision}")
    # what the selector chose for the last cache, and why (the same request attend() made)
    from sagecore.executor import plan_for
    from sagecore.graph import AttentionRequest
    name = "int8"
    seg = built[name]._segments[0]
    req = AttentionRequest(B, Hq, Hkv, 1, N, D, k_format=seg.k.fmt.format_id, v_format=seg.v.fmt.format_id,
                           kv_source="store", kv_dtype="packed", q_dtype=str(q.dtype), causal=True,
                           precision=built[name].policy.precision)
    print(f"\nselector, for the {name} cache's decode step:")
    print("\n".join("  " + line for line in plan_for(req).describe().splitlines()))
    print("\nmemory = every buffer the cache holds (codes, scales, side tables, staging);"
          " cosine/rel L1 against float64 attention over the original K/V;\n"
          "append = median of 3 builds of the whole cache (chunks of 512, then 4 single tokens);\n"
          "attend = best of 5 decode steps through the kernels, at the policy's precision (docs/formats.md).")
    return 0


def _accuracy(args) -> int:
    from sagecore import accuracy
    from sagecore.errors import UnsupportedError
    from sagecore.policy import builtin_policies

    names = args.policy or list(builtin_policies())
    try:
        sets = accuracy.datasets(tuple(args.data))
    except UnsupportedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'policy':12s} {'data':5s} {'bits':>5s} {'cosine':>9s} {'min head':>9s} {'min row':>9s} "
          f"{'rel L1':>7s} {'target':>18s}")
    ok = True
    for name in names:
        for dname, cases in sets.items():
            m = accuracy.evaluate(name, cases)
            tgt = accuracy.TARGETS.get((name, dname))
            verdict = ""
            if tgt:
                good = m["cosine"] >= tgt[0] and (tgt[1] is None or m["rel_l1"] <= tgt[1])
                ok &= good
                verdict = f"{'ok' if good else 'MISS'} cos>={tgt[0]}" + (f" L1<={tgt[1]}" if tgt[1] else "")
            print(f"{name:12s} {dname:5s} {m['bits_per_element']:5.2f} {m['cosine']:9.6f} "
                  f"{m['min_head_cosine']:9.6f} {m['min_cosine']:9.6f} {m['rel_l1']:7.4f} {verdict:>18s}")
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sagecore", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, CPU features, backends, formats and policies")
    d = sub.add_parser("demo", help="build a realistic KV cache per built-in policy: memory, accuracy, time")
    d.add_argument("--tokens", type=int, default=4096)
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="attention on the standard workloads vs fp16 and torch (see --help)",
                   add_help=False)
    sub.add_parser("tune", help="measure this machine's crossovers and write its device profile (see --help)",
                   add_help=False)
    a = sub.add_parser("accuracy", help="accuracy of built-in policies on LLM-like and real activations")
    a.add_argument("--policy", action="append", help="policy name or file (repeatable); default: built-ins")
    a.add_argument("--data", nargs="+", default=["llm", "real"], choices=["llm", "real"])
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from sagecore import bench
        return bench.main(argv[1:])
    if argv[:1] == ["tune"]:
        from sagecore import tune
        return tune.main(argv[1:])
    args = p.parse_args(argv)
    return {"info": _info, "demo": _demo, "accuracy": _accuracy}[args.cmd](args)
