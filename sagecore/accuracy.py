"""Accuracy of each policy's stored K/V, judged on attention outputs.

For each data set the cache is filled, read back as the kernels see it, and
attention over it is compared with float64 attention over the original K/V.
Metrics (``sagecore.reference.quality``) per case; the summary takes the worst
case of each. The *cosine* is DESIGN section 7's whole-output cosine per case
(one decode step of all heads, one layer of MiniLM, ...); the per-head and
per-row minima are reported as well, since they show the tails.

Data sets:
  llm   LLM-like synthetic (``workloads.llm_like``): decode at N=4096 with
        32/8 heads and a causal chunk of 64 queries against 2048 keys, d=128.
  real  all-MiniLM-L6-v2 activations on its model card, 6 layers x 12 heads,
        d=32, 256 tokens, bidirectional (``workloads.minilm_qkv``).
"""

from __future__ import annotations

import numpy as np

from sagecore.reference import quality, sdpa_reference

__all__ = ["datasets", "evaluate", "TARGETS"]

#: Quality targets per built-in policy and data set: (min cosine, max rel L1).
TARGETS = {
    ("int8", "llm"): (0.9999, 0.016),
    ("int8", "real"): (0.9999, 0.016),
    ("int4", "llm"): (0.96, None),
    ("int4", "real"): (0.99, None),
}


def datasets(which=("llm", "real")) -> dict:
    """name -> list of (case_name, q, k, v, is_causal); float32 BHND arrays."""
    from sagecore import workloads
    out = {}
    if "llm" in which:
        cases = []
        q, k, v = workloads.llm_like(q_len=1, kv_len=4096, seed=0, dtype=np.float32)
        cases.append(("decode-4096", q, k, v, True))
        q, k, v = workloads.llm_like(q_len=64, kv_len=2048, q_heads=8, kv_heads=2, seed=1, dtype=np.float32)
        cases.append(("chunk-64x2048", q, k, v, True))
        out["llm"] = cases
    if "real" in which:
        layers = workloads.minilm_qkv()
        out["real"] = [(f"minilm-layer{i}", q, k, v, False) for i, (q, k, v) in enumerate(layers)]
    return out


def evaluate(policy, cases, attend=None) -> dict:
    """Worst-case metrics of ``policy`` over ``cases``.

    ``attend(cache, q, is_causal)`` computes attention over the cache; the
    default is the reference over ``cache.dequantize()``.
    """
    from sagecore.cache import QuantKVCache
    worst = {"cosine": 1.0, "min_head_cosine": 1.0, "min_cosine": 1.0, "rel_l1": 0.0, "rmse": 0.0}
    bits = None
    for _name, q, k, v, causal in cases:
        B, H, N, D = k.shape
        cache = QuantKVCache(policy, batch=B, kv_heads=H, head_dim=D, capacity=N)
        cache.append(k, v)
        bits = cache.bits_per_element()
        ref = sdpa_reference(q, k, v, is_causal=causal)
        if attend is None:
            kd, vd = cache.dequantize()
            out = sdpa_reference(q, kd, vd, is_causal=causal)
        else:
            out = attend(cache, q, causal)
        m = quality(out, ref)
        for key in ("cosine", "min_head_cosine", "min_cosine"):
            worst[key] = min(worst[key], m[key])
        worst["rel_l1"] = max(worst["rel_l1"], m["rel_l1"])
        worst["rmse"] = max(worst["rmse"], m["rmse"])
    worst["bits_per_element"] = bits
    return worst
