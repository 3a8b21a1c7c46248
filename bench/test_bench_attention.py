"""Decode attention per format, side by side in one pytest-benchmark run.

Compares, per group (one KV length): sagecore's fp16, int8, int4 and q8_0
caches through QuantKVCache.attend (each at its policy's default precision:
int8 "bf16", int4 "int8", the others "fp32"), and torch SDPA (bf16, enable_gqa) when
torch is installed (`pip install -e ".[bench]"`). Llama-3-8B-like decode:
B=1, 32 query / 8 kv heads, d128, M=1. Warm (one cache); the cold runs and
prefill live in `python -m sagecore bench`.
Run: python -m pytest bench/test_bench_attention.py --benchmark-only --benchmark-group-by=group
"""
import numpy as np
import pytest

from sagecore.cache import QuantKVCache

POLICIES = ["fp16", "int8", "int4", "q8_0"]
_caches = {}


def _cache(policy, n):
    key = (policy, n)
    if key not in _caches:
        rng = np.random.default_rng(0)
        k = rng.standard_normal((1, 8, n, 128)).astype(np.float16)
        v = rng.standard_normal((1, 8, n, 128)).astype(np.float16)
        c = QuantKVCache(policy, batch=1, kv_heads=8, head_dim=128, capacity=n)
        c.append(k, v)
        _caches[key] = c
    return _caches[key]


Q = np.random.default_rng(1).standard_normal((1, 32, 1, 128)).astype(np.float32)


@pytest.mark.parametrize("n", [4096, 32768])
@pytest.mark.parametrize("policy", POLICIES)
def test_decode(benchmark, policy, n):
    benchmark.group = f"decode N={n}"
    c = _cache(policy, n)
    out = np.empty_like(Q)
    benchmark(c.attend, Q, out=out)
    benchmark.extra_info["kv_bytes"] = sum(a.nbytes for _, a in c._content())


@pytest.mark.parametrize("n", [4096, 32768])
def test_decode_torch_bf16(benchmark, n):
    torch = pytest.importorskip("torch", reason="torch is the optional peer (pip install -e '.[bench]')")
    import torch.nn.functional as F
    benchmark.group = f"decode N={n}"
    rng = np.random.default_rng(0)
    k = torch.from_numpy(rng.standard_normal((1, 8, n, 128)).astype(np.float32)).bfloat16()
    v = torch.from_numpy(rng.standard_normal((1, 8, n, 128)).astype(np.float32)).bfloat16()
    q = torch.from_numpy(Q).bfloat16()
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, q, k, v, enable_gqa=True)


# ---- fixed cost per call: decode at N=16 (almost all overhead), sdpa vs torch
_small = {}


def _small_inputs():
    if not _small:
        rng = np.random.default_rng(3)
        _small["q"] = rng.standard_normal((1, 32, 1, 128)).astype(np.float16)
        _small["k"] = rng.standard_normal((1, 8, 16, 128)).astype(np.float16)
        _small["v"] = rng.standard_normal((1, 8, 16, 128)).astype(np.float16)
    return _small["q"], _small["k"], _small["v"]


def test_small_call_sdpa(benchmark):
    import sagecore
    benchmark.group = "small call: decode N=16"
    q, k, v = _small_inputs()
    benchmark(sagecore.sdpa, q, k, v)


def test_small_call_c_kernel(benchmark):
    """The same call straight into the compiled core: sdpa's time minus this is the Python cost."""
    from sagecore import _cpu
    benchmark.group = "small call: decode N=16"
    q, k, v = _small_inputs()
    out = np.empty(q.shape, np.float32)
    benchmark(_cpu.attention_tensors, q, k, v, out, None, 128 ** -0.5, False, 1, None)


def test_small_call_torch_bf16(benchmark):
    torch = pytest.importorskip("torch", reason="torch is the optional peer (pip install -e '.[bench]')")
    import torch.nn.functional as F
    benchmark.group = "small call: decode N=16"
    q, k, v = (torch.from_numpy(x.astype(np.float32)).bfloat16() for x in _small_inputs())
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, q, k, v, enable_gqa=True)


def test_small_call_torch_fp32(benchmark):
    torch = pytest.importorskip("torch", reason="torch is the optional peer (pip install -e '.[bench]')")
    import torch.nn.functional as F
    benchmark.group = "small call: decode N=16"
    q, k, v = (torch.from_numpy(x.astype(np.float32)) for x in _small_inputs())
    with torch.no_grad():
        benchmark(F.scaled_dot_product_attention, q, k, v, enable_gqa=True)
