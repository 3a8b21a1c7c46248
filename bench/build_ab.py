"""Per-key decode cost of two or more *builds* of the C kernels, alternated in
one process (ns per key per kv head, one thread, split-K off; the order
rotates every round, and the ratio to the first build is the median of the
per-round ratios).

    OPENBLAS_NUM_THREADS=1 python bench/build_ab.py DIR [DIR ...] [--policy int8]
        [--precision bf16|int8] [--n 4096] [--rounds 20] [--cold] [--threads 2] [--isa avx2]
        [--m 2048 --causal]

``--m M`` times M query rows per call (a prefill chunk; default 1, decode),
``--causal`` with the right-aligned causal mask; the cost is then printed
per query row and key (ns per query-key pair and kv head, per thread).

Each DIR is a source tree with ``sagecore/_cpu*.so`` built in place (for
instance a ``git worktree`` built with different ``CFLAGS=-D...``). Every
build's extension is loaded into this process under its own module object;
all of them run over the *same* packed cache arrays (one QuantKVCache, its
stores re-wrapped by each build's ``PackedStore``), and each round times every
build once in turn. On this shared 2-vCPU machine the speed of the whole
machine drifts by up to 2x between minutes, so timing builds in separate
processes compares phases of the machine rather than code; alternating calls
in one process does not.

``--cold`` rotates through enough caches to exceed 4x the last-level cache
(every call reads from DRAM) instead of reusing one cache that fits in L2/L3.

``--against POLICY[@PRECISION]`` (e.g. ``int8@bf16``; the precision defaults
to ``--precision``) also times that path in every build, in the same rounds,
and prints per build the paired ratio of its time to the main path's: how a
build moves a target such as issue 3's "int4 at the int8 setting vs int8 at
bf16" rather than one path alone.
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import os
import time

import numpy as np

from sagecore import QuantKVCache
from sagecore.bench import alternate, cold_count, paired_ratio
from sagecore.errors import InvalidArgumentError
from sagecore.graph import PRECISION_CODES

from policy_ab import split  # POLICY[@PRECISION], as policy_ab.py takes its policies


def load_build(root: str, tag: int):
    paths = glob.glob(os.path.join(root, "sagecore", "_cpu*.so"))
    if len(paths) != 1:
        raise SystemExit(f"{root}: expected one sagecore/_cpu*.so (build it with setup.py build_ext --inplace), "
                         f"found {len(paths)}")
    # the module's init symbol is PyInit__cpu: the name's last part must stay "_cpu"
    loader = importlib.machinery.ExtensionFileLoader(f"sagecore_ab{tag}._cpu", paths[0])
    spec = importlib.util.spec_from_file_location(f"sagecore_ab{tag}._cpu", paths[0], loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def wrap(mod, store):
    a = store.arrays
    return mod.PackedStore(store.params, a["data"], a["scales"], a["zeros"], a["out_idx"], a["out_val"], a["mean"],
                           store.rows, store.capacity)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--policy", default="int8")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--precision", default="fp32", choices=list(PRECISION_CODES))
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--m", type=int, default=1, help="query rows per call (default 1: decode)")
    ap.add_argument("--causal", action="store_true", help="right-aligned causal mask")
    ap.add_argument("--isa", default=None, help="force this ISA level in every build (default: the best)")
    ap.add_argument("--against", default=None, metavar="POLICY[@PRECISION]",
                    help="also time this path in every build; print its time / the main path's, paired by round")
    args = ap.parse_args()
    against = None
    if args.against:
        try:
            pol, prec = split(args.against, args.precision)
        except InvalidArgumentError as e:
            raise SystemExit(f"--against: expected POLICY@PRECISION ({e})") from None
        against = (pol, PRECISION_CODES[prec])
    mods = [load_build(d, i) for i, d in enumerate(args.dirs)]
    for m in mods:
        m.set_num_threads(args.threads)
        if args.isa:
            m.set_isa(args.isa)
    rng = np.random.default_rng(0)
    b, hq, hkv, d, n = 1, args.q_heads, args.kv_heads, args.head_dim, args.n
    k = rng.standard_normal((b, hkv, n, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, n, d), dtype=np.float32)

    def make(policy):
        c = QuantKVCache(policy, batch=b, kv_heads=hkv, head_dim=d, capacity=n)
        c.append(k, v)
        if len(c._segments) != 1:
            raise SystemExit(f"{policy}: one segment (the same format for every head) expected")
        return c._segments[0]

    def caches(policy):
        first = make(policy)
        nbytes = first.k.nbytes + first.v.nbytes
        return [first] + ([make(policy) for _ in range(cold_count(nbytes) - 1)] if args.cold else [])

    m_ = args.m
    q = rng.standard_normal((b, hq, m_, d), dtype=np.float32)
    paths = [(args.policy, PRECISION_CODES[args.precision])] + ([against] if against else [])
    segs = [caches(pol) for pol, _ in paths]
    outs = [np.empty((b, hq, m_, d), np.float32) for _ in mods]
    stores = [[[(wrap(m, s.k), wrap(m, s.v)) for s in sg] for sg in segs] for m in mods]

    def run(i, p=0):
        m, o, st, prec = mods[i], outs[i], stores[i][p], paths[p][1]
        calls = len(st) if args.cold else max(1 if m_ > 1 else 10, 1_000_000 // (n * hkv * m_))
        t0 = time.perf_counter()
        for c in range(calls):
            ks, vs = st[c % len(st)]
            m.attention(q, ks, vs, o, hkv, n, None, d ** -0.5, args.causal, 1 if m_ == 1 else 0, None, prec)
        return (time.perf_counter() - t0) / calls

    for i in range(len(mods)):
        run(i)
        if i and not np.allclose(outs[i], outs[0], rtol=1e-2, atol=1e-3):
            print(f"note: {args.dirs[i]} differs from {args.dirs[0]} "
                  f"(max |diff| {np.abs(outs[i] - outs[0]).max():.3g}): an experiment that changes results")
    jobs = [(i, p) for i in range(len(mods)) for p in range(len(paths))]
    res = alternate([lambda i=i, p=p: run(i, p) for i, p in jobs], args.rounds)
    own = [r for (i, p), r in zip(jobs, res) if p == 0]  # the main path's times, per build
    other = [r for (i, p), r in zip(jobs, res) if p == 1]
    per = n * hkv * m_ / args.threads
    rows = f"M {m_}{' causal' if args.causal else ''}, " if m_ > 1 else ""
    print(f"{args.policy}, precision {args.precision}, {hq}/{hkv} heads, {rows}N {n}{' cold' if args.cold else ''}, "
          f"{args.threads} thread(s), isa {mods[0].cpu_info()['active_isa']}, {args.rounds} rounds, "
          f"ns per {'query row and ' if m_ > 1 else ''}key per kv head (per thread)")
    for j, (dname, r) in enumerate(zip(args.dirs, own)):
        s = sorted(r)
        line = (f"  {dname:32s} best {s[0] * 1e9 / per:6.1f}  median {s[len(s) // 2] * 1e9 / per:6.1f}  "
                f"vs first, paired by round {paired_ratio(own[0], r):5.3f}x")
        if against:
            line += (f"  {args.against} {np.median(other[j]) * 1e9 / per:6.1f}, "
                     f"{args.against} / this, paired {paired_ratio(other[j], r):5.3f}x")
        print(line)


if __name__ == "__main__":
    main()
