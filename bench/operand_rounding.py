"""Accuracy of reduced-precision kernel operands on the accuracy data sets,
simulated in numpy (float64) exactly as the integer decode kernels round:

  q16  query rows x K's per-channel scales (per token group) rounded to int16
       against the row's max: what the AVX512-VNNI QK path does (bf16 setting)
  q8   the same rounded to int8: SageAttention's choice (one VPDPBUSD per 64
       codes), not built -- it misses the int8 targets on the llm data
  q8g16 q8 with a scale per 16 channels (a separate sum per group): still
       misses the int8 targets (session 12)
  p8   P' = p x V's cell scale rounded to u8 against the row's max over a
       32-key tile (the PV path computes int16), built, measured, removed
  p8c  the same with a max per row, cell and 32 keys: within the targets by a
       small margin; built in session 12 (VPDPBUSD PV for int8 V), no faster
       end to end on this machine, removed (docs/benchmarks.md)

Each line: cosine and rel L1 of the attention output against float64
attention over the original K/V (the metric of sagecore.accuracy.TARGETS).

    python bench/operand_rounding.py [--data llm real]
"""
import argparse

import numpy as np

from sagecore import accuracy
from sagecore.cache import QuantKVCache
from sagecore.reference import quality, sdpa_reference


def _round(x, axes, qmax):
    a = np.abs(x).max(axis=axes, keepdims=True) / qmax
    return np.where(a > 0, np.round(x / np.where(a > 0, a, 1)) * a, 0.0)


def simulate(q, k, v, causal, q_bits=None, p_bits=None, tile=32, q_group=None, p_cell=False):
    B, Hq, M, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    g = Hq // Hkv
    c = QuantKVCache("int8", batch=B, kv_heads=Hkv, head_dim=D, capacity=N)
    c.append(k, v)
    kd, vd = (x.astype(np.float64) for x in c.dequantize())
    ks, vs = c._segments[0].k.arrays, c._segments[0].v.arrays
    T = c._segments[0].k.T
    kmean = ks["mean"].reshape(B, Hkv, 1, D).astype(np.float64)
    kcodes = ks["data"].view(np.int8)[:, :N, :D].astype(np.float64).reshape(B, Hkv, N // T, T, D)
    ksc = ks["scales"].astype(np.float64).reshape(B, Hkv, -1, D)[:, :, :N // T]
    qg = q.astype(np.float64).reshape(B, Hkv, g, M, D)
    qf = qg[:, :, :, :, None, :] * ksc[:, :, None, None]  # [b h g m group d]
    if q_bits:
        G = q_group or D
        qf = _round(qf.reshape(*qf.shape[:-1], D // G, G), -1, 2 ** (q_bits - 1) - 1).reshape(qf.shape)
    s = np.einsum("bhgmzd,bhztd->bhgmzt", qf, kcodes).reshape(B, Hkv, g, M, N)
    s = (s + np.einsum("bhgmd,bhzd->bhgmz", qg, kmean)) / np.sqrt(D)
    if causal:
        s = np.where(np.arange(N)[None, :] > np.arange(M)[:, None] + N - M, -np.inf, s)
    p = np.exp(s - s.max(-1, keepdims=True))
    l = p.sum(-1, keepdims=True)
    if p_bits:
        vcodes = vs["data"].view(np.int8)[:, :N, :D].astype(np.float64).reshape(B, Hkv, N, D)
        vsc = vs["scales"].astype(np.float64).reshape(B, Hkv, N, -1)
        ncell = vsc.shape[-1]
        o = np.zeros((B, Hkv, g, M, D))
        for t0 in range(0, N, tile):
            pp = p[..., t0:t0 + tile, None] * vsc[:, :, None, None, t0:t0 + tile]  # [b h g m t cell]
            pp = _round(pp, -2 if p_cell else (-2, -1), 2 ** p_bits - 1)
            ct = vcodes[:, :, t0:t0 + tile].reshape(B, Hkv, -1, ncell, D // ncell)
            o += np.einsum("bhgmtc,bhtcz->bhgmcz", pp, ct).reshape(B, Hkv, g, M, D)
        o = o / l
        if vs["mean"] is not None:
            o += vs["mean"].reshape(B, Hkv, 1, 1, D)
    else:
        o = np.einsum("bhgmn,bhnd->bhgmd", p / l, vd)
    return quality(o.reshape(B, Hq, M, D), sdpa_reference(q, k, v, is_causal=causal))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["llm"], choices=["llm", "real"])
    args = ap.parse_args()
    for name, cases in accuracy.datasets(tuple(args.data)).items():
        target = accuracy.TARGETS[("int8", name)]
        print(f"{name}: int8 targets cosine >= {target[0]}, rel L1 <= {target[1]}")
        for case, q, k, v, causal in cases:
            for label, kw in (("q16", dict(q_bits=16)), ("q8", dict(q_bits=8)), ("q8g16", dict(q_bits=8, q_group=16)),
                              ("p8", dict(q_bits=16, p_bits=8)), ("p8c", dict(q_bits=16, p_bits=8, p_cell=True))):
                m = simulate(q, k, v, causal, **kw)
                ok = m["cosine"] >= target[0] and (target[1] is None or m["rel_l1"] <= target[1])
                print(f"  {case:18s} {label:5s} cos {m['cosine']:.6f}  rel L1 {m['rel_l1']:.5f}  "
                      f"{'within' if ok else 'MISSES'} the targets")


if __name__ == "__main__":
    main()
