"""Would an MSE-optimal clipping search for int4 scales lift the built-in
int4 policy's accuracy? Simulated in numpy (float64) on the accuracy data
sets, with the built-in int4 formats re-implemented here:

  K  int4.t64.g1.s16+smooth+zp: minus the mean of the first 64 tokens per
     channel, then per channel and 64-token group asymmetric codes 0..15 over
     [lo, hi], scale and zero point stored as fp16
  V  int4.t1.gD.s16+rot: per token the block Hadamard rotation of all D
     channels, then symmetric codes -8..7 against max|x| / 7, scale as fp16

The search shrinks each cell's range by a factor a in [0.6, 1] (21 steps;
K: around the range's centre) and keeps the a of least squared error in the
cell. Decoding is unchanged, so such a search would be an encoder choice
only. The "-" rows (no search) reproduce `python -m sagecore accuracy
--policy int4` within ~3e-4 of cosine (the smoothing and rounding details
differ slightly), so the columns compare like with like.

    python bench/clip_search.py [--data llm real] [--steps 21]

Each line: whole-output cosine, worst head and worst row (the metrics of
sagecore.accuracy), K searched or not, V searched or not, and K or V
quantized alone (which of the two makes the tails).
"""
import argparse

import numpy as np

from sagecore import accuracy
from sagecore.reference import quality, sdpa_reference


def hadamard(n: int) -> np.ndarray:
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / np.sqrt(n)


def _f16(x):
    return x.astype(np.float16).astype(np.float64)


def _best(x, axis, candidates):
    """The candidate dequantization of least squared error per cell."""
    best = err = None
    for d in candidates:
        e = ((d - x) ** 2).sum(axis=axis, keepdims=True)
        if best is None:
            best, err = d, e
        else:
            take = e < err
            best, err = np.where(take, d, best), np.where(take, e, err)
    return best


def quant_asym(x, axis, alphas):
    """Asymmetric 4-bit codes per cell (along axis), range shrunk by each alpha."""
    lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)

    def one(a):
        c, h = (lo + hi) / 2, (hi - lo) / 2 * a
        s = _f16((2 * h) / 15)
        s = np.where(s > 0, s, 1.0)
        zp = _f16(c - h)
        return np.clip(np.round((x - zp) / s), 0, 15) * s + zp
    return _best(x, axis, (one(a) for a in alphas))


def quant_sym(x, axis, alphas):
    """Symmetric 4-bit codes -8..7 per cell against max|x| x alpha / 7."""
    mx = np.abs(x).max(axis=axis, keepdims=True)

    def one(a):
        s = _f16(mx * a / 7)
        s = np.where(s > 0, s, 1.0)
        return np.clip(np.round(x / s), -8, 7) * s
    return _best(x, axis, (one(a) for a in alphas))


def int4_kv(k, v, k_alphas, v_alphas, group=64):
    """The built-in int4 policy's K and V as decoded, float64."""
    k, v = k.astype(np.float64), v.astype(np.float64)
    mean = k[:, :, :group].mean(axis=2, keepdims=True)
    ks = k - mean
    kd = np.empty_like(k)
    for t in range(0, k.shape[2], group):
        kd[:, :, t:t + group] = quant_asym(ks[:, :, t:t + group], 2, k_alphas)
    h = hadamard(v.shape[3])
    vd = quant_sym(v @ h, 3, v_alphas) @ h.T
    return kd + mean, vd


def worst(cases, k_alphas, v_alphas, only=None):
    w = {"cosine": 1.0, "min_head_cosine": 1.0, "min_cosine": 1.0}
    for _name, q, k, v, causal in cases:
        kd, vd = int4_kv(k, v, k_alphas, v_alphas)
        if only == "K":
            vd = v
        elif only == "V":
            kd = k
        m = quality(sdpa_reference(q, kd, vd, is_causal=causal), sdpa_reference(q, k, v, is_causal=causal))
        for key in w:
            w[key] = min(w[key], m[key])
    return w


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["llm", "real"], choices=["llm", "real"])
    ap.add_argument("--steps", type=int, default=21, help="alphas from 1 down to 0.6 (default 21)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps: expected at least 1")
    search = np.linspace(1.0, 0.6, args.steps)
    plain = np.array([1.0])
    print(f"{'data':5} {'K':7} {'V':7} {'cosine':>9} {'min head':>9} {'min row':>9}")
    for name, cases in accuracy.datasets(tuple(args.data)).items():
        rows = [("-", "-", plain, plain, None), ("search", "-", search, plain, None),
                ("-", "search", plain, search, None), ("search", "search", search, search, None),
                ("alone", "exact", plain, plain, "K"), ("exact", "alone", plain, plain, "V")]
        for kl, vl, ka, va, only in rows:
            w = worst(cases, ka, va, only)
            print(f"{name:5} {kl:7} {vl:7} {w['cosine']:9.6f} {w['min_head_cosine']:9.6f} {w['min_cosine']:9.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
