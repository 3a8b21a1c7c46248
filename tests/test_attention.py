"""CPU attention kernels (sc_attention via QuantKVCache.attend) against the
float64 reference over the same stored K/V.

The kernel is judged against attention over cache.dequantize(): that isolates
the kernel (tiling, masking, softmax, split-K, GQA) from the storage format's
own error, which tests/test_accuracy.py judges. Tolerances live in TOL.
"""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sagecore

from sagecore import _cpu
from sagecore.cache import QuantKVCache
from sagecore.errors import InvalidArgumentError, UnsupportedError
from sagecore.reference import quality, sdpa_reference

#: Kernel vs float64 reference over the dequantized cache, per output dtype.
TOL = {"float32": dict(rel_l1=2e-5, max_abs=2e-4), "float16": dict(rel_l1=2e-3, max_abs=4e-3),
       # the AMX path's bf16x3 products (below): near-tied logits of order 1e4
       # move by ~1e4 * 2^-16, which shows in the worst element only
       "float32-amx": dict(rel_l1=2e-5, max_abs=1e-3)}
#: An ISA path against the portable one (elementwise). The AMX path computes
#: prefill-sized items in bf16x3 on the tile engine: each product carries
#: ~2^-16 relative error instead of fp32's 2^-24.
ISA_TOL = {"amx": dict(rtol=1e-4, atol=2e-5)}
ISA_TOL_DEFAULT = dict(rtol=1e-5, atol=1e-6)

POLICIES = ["fp16", "int8", "int4", "int8k-int4v", "q8_0"]


def build(policy, B, Hkv, N, D, rng, lens=None):
    k = (rng.standard_normal((B, Hkv, N, D)) * 1.5 + 0.5).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    c = QuantKVCache(policy, batch=B, kv_heads=Hkv, head_dim=D, capacity=max(N, 1))
    if N:
        c.append(k, v)
    return c


def check(c, q, causal, kv_lens=None, split_k=0, out_dtype="float32"):
    out = np.empty(q.shape, out_dtype)
    # precision="fp32": this judges the kernel at fp32 level (the policies' own, lower
    # default precisions are judged against their accuracy targets in test_accuracy.py)
    got, lse = c.attend(q, is_causal=causal, kv_lens=kv_lens, split_k=split_k, out=out, return_lse=True,
                        precision="fp32")
    kd, vd = c.dequantize()
    ref, rlse = sdpa_reference(q, kd, vd, is_causal=causal, kv_lens=kv_lens, return_lse=True)
    tol = TOL[out_dtype + ("-amx" if out_dtype == "float32" and _cpu.cpu_info()["active_isa"] == "amx" else "")]
    got64 = got.astype(np.float64)
    assert np.isfinite(got64).all()
    err = np.abs(got64 - ref)
    scale = max(1.0, float(np.abs(ref).max()))
    assert err.max() <= tol["max_abs"] * scale, err.max()
    if np.abs(ref).sum() > 0:
        assert quality(got64, ref)["rel_l1"] <= tol["rel_l1"]
    live = np.isfinite(rlse)
    assert np.array_equal(np.isfinite(lse), live)
    np.testing.assert_allclose(lse[live], rlse[live], rtol=1e-5, atol=1e-4)
    # rows that see no key are exactly zero
    assert np.all(got64[~live] == 0)
    return got


def sweep_cases():
    dims = [64, 80, 96, 128, 192, 256]
    grid = itertools.product(POLICIES, dims, [1, 4, 8], [1, 3, 64, 512], [1, 31, 33, 4097], [False, True], [1, 3])
    cases = []
    for pol, D, group, M, N, causal, B in grid:
        if pol in ("int8", "int4", "int8k-int4v", "q8_0") and D % 32:
            continue  # these policies use 32-channel groups: 80 is not divisible
        Hkv = 1 if group == 8 else 2
        if B * Hkv * group * M * N * D > 6e7:
            continue  # large ones run in the slow step
        cases.append((pol, D, group, M, N, causal, B))
    rng = np.random.default_rng(2026)
    idx = rng.choice(len(cases), size=min(520, len(cases)), replace=False)
    return [cases[i] for i in sorted(idx)]


SWEEP = sweep_cases()


def test_sweep_is_large_and_covers_every_value():
    assert len(SWEEP) >= 500
    for pos, values in enumerate([POLICIES, [64, 96, 128, 192, 256], [1, 4, 8], [1, 3, 64, 512],
                                  [1, 31, 33, 4097], [False, True], [1, 3]]):
        assert {c[pos] for c in SWEEP} >= set(values), pos


@pytest.mark.parametrize("pol,D,group,M,N,causal,B", SWEEP)
def test_parity_sweep(pol, D, group, M, N, causal, B):
    rng = np.random.default_rng(hash((pol, D, group, M, N, causal, B)) % 2**32)
    Hkv = 1 if group == 8 else 2
    c = build(pol, B, Hkv, N, D, rng)
    q = rng.standard_normal((B, Hkv * group, M, D)).astype(np.float32)
    lens = None if B == 1 else [N, max(0, N - 7), N // 2][:B]
    check(c, q, causal, kv_lens=lens)


@pytest.mark.parametrize("pol", POLICIES)
def test_split_k_equivalence(pol, rng):
    c = build(pol, 1, 2, 3000, 128, rng)
    q = rng.standard_normal((1, 8, 3, 128)).astype(np.float32)
    base = c.attend(q, split_k=1)
    for s in (2, 3, 7, 16, 0):
        got = c.attend(q, split_k=s)
        np.testing.assert_allclose(got, base, rtol=2e-5, atol=2e-5)
    check(c, q, True, split_k=5)


def test_auto_split_uses_splits_for_long_decode():
    threads = _cpu.get_num_threads()
    # too few (batch x kv-head) items for the cores and a long cache: split
    assert _cpu.attention_auto_splits(1, 1, 8, 1, 32768) > 1
    assert (_cpu.attention_auto_splits(1, 8, 32, 1, 32768) > 1) == (8 < 2 * threads)
    # short caches or plenty of items: no split
    assert _cpu.attention_auto_splits(1, 1, 8, 1, 512) == 1
    assert _cpu.attention_auto_splits(64, 8, 32, 1, 32768) == 1


@pytest.mark.parametrize("pol", POLICIES)
def test_isa_paths_agree(pol, rng, isa):
    c = build(pol, 2, 2, 300, 128, rng)
    q = rng.standard_normal((2, 8, 7, 128)).astype(np.float32)
    got = c.attend(q, kv_lens=[300, 123], precision="fp32")  # the portable path's level
    _cpu.set_isa("portable")
    ref = c.attend(q, kv_lens=[300, 123], precision="fp32")
    _cpu.set_isa(isa)
    np.testing.assert_allclose(got, ref, **ISA_TOL.get(isa, ISA_TOL_DEFAULT))


#: d80: V (and q8_0's K) in 16-channel groups, 80 not being a multiple of 32
ISA_DIMS = ([(pol, d, hq) for pol in ("fp16", "int8", "int4", "q8_0") for d, hq in ((32, 8), (96, 4), (256, 3))]
            + [(pol, 80, 2) for pol in ("fp16", {"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g16.s16"},
                                        {"k": "int4.t64.g1.s16+zp+smooth", "v": "int4.t1.g16.s16"},
                                        {"k": "int8.t1.g16.s16", "v": "int8.t1.g16.s16"})])


@pytest.mark.parametrize("pol,d,hq", ISA_DIMS, ids=lambda x: x if isinstance(x, (str, int)) else x["k"])
def test_isa_paths_agree_head_dims(pol, d, hq, rng, isa):
    """Every ISA path against the portable one off d128: the microkernels'
    channel blocking (AVX2: 8/16/32-channel blocks, AVX-512: 16/64) and row
    blocking (4 rows, then 2, then 1) meet their remainders here."""
    c = build(pol, 1, 2, 203, d, rng)
    for m in (1, 5):
        q = rng.standard_normal((1, 2 * hq, m, d)).astype(np.float32)
        got = c.attend(q, is_causal=True, precision="fp32")  # the portable path's level
        _cpu.set_isa("portable")
        ref = c.attend(q, is_causal=True, precision="fp32")
        _cpu.set_isa(isa)
        np.testing.assert_allclose(got, ref, **ISA_TOL.get(isa, ISA_TOL_DEFAULT))


def test_prefill_items_extreme_logits_each_isa(rng, isa):
    # 4 query heads per kv head x 64 rows: items of more than 16 rows, which
    # the AMX path runs on the tile engine (rows padded to 32, a partial tile)
    c = build("int8", 1, 2, 500, 64, rng)
    for scale in (1.0, 1e3):
        q = (rng.standard_normal((1, 8, 64, 64)) * scale).astype(np.float32)
        check(c, q, False)
        check(c, q, True)


def bf16_prefill(isa):
    """Whether prefill items on this ISA level take bf16 products at the bf16
    setting: AMX tiles, or VDPBF16PS on avx512_vnni where the CPU has AVX512-BF16."""
    return isa == "amx" or (isa == "avx512_vnni" and "avx512bf16" in _cpu.cpu_info()["features"].split())


def test_precision_bf16(rng, isa):
    """precision="bf16" lets the AMX path and, on CPUs with AVX512-BF16, the
    avx512_vnni level round prefill QK/PV operands to bf16: within bf16-level
    error of the reference there, and identical to fp32 elsewhere (a
    permission, not a demand)."""
    c = build("int8", 1, 2, 300, 128, rng)
    q = rng.standard_normal((1, 8, 64, 128)).astype(np.float32)  # 256-row items
    exact = c.attend(q, is_causal=True, precision="fp32")
    fast = c.attend(q, is_causal=True, precision="bf16")
    if bf16_prefill(isa):
        kd, vd = c.dequantize()
        err = quality(fast.astype(np.float64), sdpa_reference(q, kd, vd, is_causal=True))["rel_l1"]
        assert 1e-4 < err < 1e-2  # bf16 operands: 2^-8 relative, visibly coarser than bf16x3
    else:
        np.testing.assert_array_equal(fast, exact)


@pytest.mark.parametrize("pol,d,hq,m,n", [("int8", 128, 8, 64, 300), ("fp16", 128, 4, 33, 517),
                                           ("int4", 64, 8, 17, 129), ("q8_0", 96, 16, 5, 64),
                                           ({"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g16.s16"}, 80, 2, 40, 77),
                                           ("fp16", 256, 4, 20, 1), ("int8", 32, 4, 64, 2049)])
def test_precision_bf16_prefill_items(rng, isa, pol, d, hq, m, n):
    """Items of more than 16 rows at the bf16 setting over head dims 32-256,
    odd and single key counts, GQA 1-8: bf16-level error against the float64
    reference where the ISA level takes bf16 products, fp32 results elsewhere;
    split-K and per-row key lengths take the same path."""
    c = build(pol, 2, 2, n, d, rng)
    q = rng.standard_normal((2, 2 * hq, m, d)).astype(np.float32)
    lens = [n, max(1, n // 3)]
    kd, vd = c.dequantize()
    ref = sdpa_reference(q, kd, vd, is_causal=True, kv_lens=lens)
    exact = c.attend(q, is_causal=True, kv_lens=lens, precision="fp32")
    for s in (1, 3):
        fast = c.attend(q, is_causal=True, kv_lens=lens, precision="bf16", split_k=s)
        if bf16_prefill(isa) and hq * m > 16:
            err = quality(fast.astype(np.float64), ref)["rel_l1"]
            assert err < 1e-2, err  # bf16 operands: 2^-8 relative per element
            assert not np.array_equal(fast, exact)  # the bf16 products were used
        else:
            np.testing.assert_allclose(fast, exact, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("pol,d,hq,m,n", [("int8", 128, 8, 512, 700), ("fp16", 64, 4, 300, 333),
                                           ("int4", 96, 2, 544, 1030)])
def test_prefill_shared_tiles_match_small_calls(rng, isa, pol, d, hq, m, n, precision):
    """Many row blocks per kv head at the bf16 setting: AVX512-BF16 converts
    every K/V tile once per call for all of them (sc_attn_bf_prepack). The
    same rows computed 32 at a time (too few blocks to share tiles; each
    call's kv_lens cut so that its rows see what they saw) must come out
    bitwise the same: a row's tiles, visibility and products do not change,
    only where its K/V tiles were converted. (fp32: the same check of the
    per-row-block path, which decodes tiles per item everywhere.)"""
    c = build(pol, 2, 2, n, d, rng)
    q = rng.standard_normal((2, 2 * hq, m, d)).astype(np.float32)
    lens = [n, n - 7]
    full = c.attend(q, is_causal=True, kv_lens=lens, precision=precision, split_k=1)
    parts = [c.attend(np.ascontiguousarray(q[:, :, c0:c0 + 32]), is_causal=True, precision=precision, split_k=1,
                      kv_lens=[n_b - m + min(m, c0 + 32) for n_b in lens]) for c0 in range(0, m, 32)]
    np.testing.assert_array_equal(full, np.concatenate(parts, axis=2))


def test_precision_is_validated(rng):
    c = build("int8", 1, 2, 30, 64, rng)
    q = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
    for bad in ("fp16", "BF16", 1):  # (None: the policy's precision, tests/test_api.py)
        with pytest.raises(InvalidArgumentError, match="precision"):
            c.attend(q, precision=bad)
    k = rng.standard_normal((1, 2, 30, 64)).astype(np.float16)
    with pytest.raises(InvalidArgumentError, match="precision"):
        sagecore.sdpa(q, k, k, precision="fp8")
    out = np.empty_like(q)
    for code in (3, -1):  # the C core checks it too (0 fp32, 1 bf16, 2 int8)
        with pytest.raises(InvalidArgumentError, match="precision"):
            _cpu.attention_tensors(q, k, k, out, None, 0.125, False, 0, None, code)


def test_extreme_logits_no_nan(rng):
    c = build("int8", 1, 2, 500, 64, rng)
    q = (rng.standard_normal((1, 4, 3, 64)) * 1e3).astype(np.float32)  # scores of order 1e4
    got = check(c, q, False)
    assert np.isfinite(got).all()


def test_all_equal_keys_and_single_key(rng):
    c = QuantKVCache("int8", batch=1, kv_heads=1, head_dim=64, capacity=64)
    k = np.ones((1, 1, 100, 64), np.float32)
    v = rng.standard_normal((1, 1, 100, 64)).astype(np.float32)
    c.append(k, v)
    q = rng.standard_normal((1, 2, 1, 64)).astype(np.float32)
    got = check(c, q, False)
    _, vd = c.dequantize()
    np.testing.assert_allclose(got[0, :, 0], np.broadcast_to(vd[0, 0].mean(0), (2, 64)), atol=1e-5)
    one = QuantKVCache("q8_0", batch=1, kv_heads=1, head_dim=64)
    one.append(k[:, :, :1], v[:, :, :1])
    got = check(one, q, True)
    np.testing.assert_allclose(got[0, :, 0], np.broadcast_to(one.dequantize()[1][0, 0, 0], (2, 64)), atol=1e-6)


def test_fully_masked_rows_are_zero(rng):
    c = build("int4", 2, 1, 5, 64, rng)
    q = rng.standard_normal((2, 2, 8, 64)).astype(np.float32)  # M > N: early rows see nothing
    got = check(c, q, True, kv_lens=[5, 0])
    assert np.all(got[0, :, :3] == 0) and np.all(got[1] == 0)


def test_fp16_queries_and_outputs(rng):
    c = build("int8", 1, 2, 200, 128, rng)
    q = rng.standard_normal((1, 8, 4, 128)).astype(np.float16)
    check(c, q, True, out_dtype="float16")


def test_bnhd_layout(rng):
    c = build("int8", 1, 2, 100, 64, rng)
    q = rng.standard_normal((1, 4, 3, 64)).astype(np.float32)
    a = c.attend(q)
    b = c.attend(np.ascontiguousarray(q.transpose(0, 2, 1, 3)), layout="BNHD")
    np.testing.assert_allclose(b.transpose(0, 2, 1, 3), a, rtol=1e-6, atol=1e-7)


def test_bad_arguments(rng):
    c = build("int8", 1, 2, 10, 64, rng)
    with pytest.raises(InvalidArgumentError, match="multiple"):
        c.attend(np.zeros((1, 3, 1, 64), np.float32))
    with pytest.raises(InvalidArgumentError, match="head_dim"):
        c.attend(np.zeros((1, 2, 1, 32), np.float32))
    with pytest.raises(InvalidArgumentError, match="kv_lens"):
        c.attend(np.zeros((1, 2, 1, 64), np.float32), kv_lens=[11])
    with pytest.raises(InvalidArgumentError, match="out"):
        c.attend(np.zeros((1, 2, 1, 64), np.float32), out=np.zeros((1, 2, 2, 64), np.float32))
    odd = QuantKVCache("fp16", batch=1, kv_heads=1, head_dim=48)
    odd.append(np.ones((1, 1, 2, 48), np.float32), np.ones((1, 1, 2, 48), np.float32))
    with pytest.raises(UnsupportedError, match="head_dim 48"):
        odd.attend(np.zeros((1, 1, 1, 48), np.float32))


@pytest.mark.realdata
@pytest.mark.parametrize("policy,data", [("int8", "llm"), ("int8", "real"), ("int4", "llm"), ("int4", "real")])
def test_accuracy_targets_hold_for_kernel_outputs(policy, data):
    from sagecore import accuracy
    cases = accuracy.datasets((data,))[data]
    m = accuracy.evaluate(policy, cases, attend=lambda cache, q, causal: cache.attend(q, is_causal=causal))
    cos_min, l1_max = accuracy.TARGETS[(policy, data)]
    assert m["cosine"] >= cos_min, m
    if l1_max is not None:
        assert m["rel_l1"] <= l1_max, m


# int8/int4 layouts the AVX-512 kernels read in place (per-channel K scales
# folded into q per token group, with the minimums' q-dot for zero points;
# per-token cell scales applied per 16 codes), with fp32 scales, groups
# smaller than a tile, odd row counts (R % 4 != 0), rotation and smoothing
# around them; and layouts that must still take the tile decoder (outliers,
# zero points of per-token cells)
Q8_POLICIES = [
    {"k": "int8.t8.g1.s32+rot", "v": "int8.t1.g16.s32"},
    {"k": "int8.t1.g16.s16+smooth", "v": "int8.t1.g64.s16+rot+smooth"},
    {"k": "int8.t64.g1.s16", "v": "int8.t1.g128.s32"},
    {"k": "int8.t32.g1.s16+zp", "v": "int8.t1.g32.s16+out2"},
    {"k": "int4.t16.g1.s32+zp+smooth", "v": "int4.t1.g16.s16"},
    {"k": "int4.t1.g32.s16+rot", "v": "int4.t1.g64.s32+smooth+rot"},
    {"k": "int4.t8.g1.s16", "v": "int4.t1.g32.s16+zp"},
]


@pytest.mark.parametrize("pol", Q8_POLICIES, ids=lambda p: p["k"] + "/" + p["v"])
@pytest.mark.parametrize("hq", [3, 8])
def test_int8_in_place_layouts_match_portable_and_reference(pol, hq, rng, isa):
    B, Hkv, N, D = 1, 1, 203, 128
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float32)
    c = QuantKVCache(pol, batch=B, kv_heads=Hkv, head_dim=D, capacity=256)
    c.append(k, v)
    q = rng.standard_normal((B, hq, 5, D)).astype(np.float32)
    got = c.attend(q, is_causal=True)
    _cpu.set_isa("portable")
    ref = c.attend(q, is_causal=True)
    _cpu.set_isa(isa)
    np.testing.assert_allclose(got, ref, **ISA_TOL.get(isa, dict(rtol=1e-5, atol=2e-6)))
    kd, vd = c.dequantize(np.float32)
    np.testing.assert_allclose(got, sdpa_reference(q, kd, vd, is_causal=True), rtol=1e-4, atol=2e-5)


def split_and_lens_quality(pol, hq, m, n, d, rng, precision):
    """Quality (against float64 over the stored K/V) of a batch of 2 with key
    lengths n and n // 3, without and with 3 key splits, at ``precision``."""
    lens = [n, n // 3]
    c = build(pol, 2, 2, n, d, rng)
    q = (rng.standard_normal((2, hq, m, d)) * 2).astype(np.float32)
    kd, vd = c.dequantize()
    ref = sdpa_reference(q, kd, vd, is_causal=True, kv_lens=lens)
    return [quality(c.attend(q, split_k=s, is_causal=True, kv_lens=lens, precision=precision).astype(np.float64), ref)
            for s in (1, 3)]


NO_BF16_SCRIPT = r"""
import json, sys, numpy as np, sagecore
from sagecore.reference import sdpa_reference, quality
rng = np.random.default_rng(5)
out = {}
for pol, hq, m, n, d in (("int4", 8, 64, 300, 128), ("int4", 4, 300, 400, 96), ("int8k-int4v", 4, 40, 200, 128)):
    c = sagecore.QuantKVCache(pol, batch=1, kv_heads=2, head_dim=d, capacity=n)
    c.append(rng.standard_normal((1, 2, n, d)).astype(np.float32), rng.standard_normal((1, 2, n, d)).astype(np.float32))
    q = (rng.standard_normal((1, 2 * hq, m, d)) * 2).astype(np.float32)
    bf = c.attend(q, split_k=1, is_causal=True, precision="bf16")
    i8 = c.attend(q, split_k=1, is_causal=True, precision="int8")
    kd, vd = c.dequantize()
    ref = sdpa_reference(q, kd, vd, is_causal=True)
    out[f"{pol}-d{d}"] = dict(same=bool(np.array_equal(bf, i8)), i8=quality(i8.astype(np.float64), ref),
                              bf=quality(bf.astype(np.float64), ref))
json.dump(out, sys.stdout)
"""


@pytest.mark.skipif("avx512vnni" not in _cpu.cpu_info()["features"].split(),
                    reason="the integer prefill kernels need an AVX512-VNNI CPU")
def test_int8_prefill_items_without_avx512bf16():
    """An AVX512-VNNI CPU without AVX512-BF16 (SAGECORE_AVX512BF16=0, read
    once at process start, hence the subprocess): prefill items at "int8"
    still take the integer K and V kernels (the other operand in fp32), and
    "bf16" computes at fp32 level there (no bf16 products)."""
    r = subprocess.run([sys.executable, "-c", NO_BF16_SCRIPT], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, SAGECORE_AVX512BF16="0", SAGECORE_ISA="avx512_vnni"))
    assert r.returncode == 0, r.stderr[-3000:]
    for name, res in json.loads(r.stdout).items():
        assert not res["same"], name
        assert res["i8"]["cosine"] > 0.998 and res["i8"]["rel_l1"] < 0.08, (name, res)
        assert res["bf"]["rel_l1"] < 1e-4, (name, res)  # bf16 operands would show ~2^-9


#: int8 K as in the int8 policy, V in 16-channel cells: a policy for d80
D80 = {"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g16.s16"}
#: int4 K without zero points (symmetric codes), groups of 80 keys (tiles of
#: 80 > 64: the int4 unpack runs in chunks), V in 32-channel cells
INT4_SYM = {"k": "int4.t80.g1.s16", "v": "int4.t1.g32.s16"}
#: V cells of 64 and 128 channels: the integer PV's per-key cell scales are
#: spread over 32-channel cells (two or four of them share one scale)
V_G64 = {"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g64.s16"}
V_G128 = {"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g128.s16"}


@pytest.mark.parametrize("pol,hq,m,n,d", [("int8", 8, 1, 700, 128), ("int8", 16, 1, 701, 128),
                                           ("int8", 2, 3, 333, 128), ("int8", 8, 3, 95, 128),
                                           ("q8_0", 8, 1, 701, 128), ("int8", 8, 1, 300, 64),
                                           (D80, 8, 1, 300, 80), ("int8", 8, 1, 300, 96),
                                           ("int8", 8, 1, 301, 80), ("int8", 2, 3, 141, 80),
                                           ("int8", 8, 1, 300, 256), ("int4", 8, 1, 701, 128),
                                           ("int4", 2, 3, 333, 128), ("int8k-int4v", 8, 1, 300, 128),
                                           (INT4_SYM, 8, 1, 203, 64), (INT4_SYM, 4, 1, 150, 96),
                                           (V_G64, 8, 1, 333, 128), (V_G128, 8, 1, 333, 128),
                                           (V_G64, 8, 1, 200, 192), ("int8", 4, 1, 141, 192),
                                           ("int8", 2, 1, 300, 128), ("int8", 6, 1, 200, 64)])
def test_precision_bf16_integer_decode(rng, isa, pol, hq, m, n, d):
    """Decode over int8 and int4 caches: with precision="bf16" the AVX512-VNNI
    paths (avx512_vnni, amx) compute QK^T (int16 queries x K codes) and PV
    (int16 P x V codes) in integer arithmetic, int4 codes unpacked to bytes
    first; elsewhere the option changes nothing."""
    # GQA 1, 3, 4, 8; rows per item 1 to 12 (1 and 3: the k16 scores' rows not in fours); odd key
    # counts (a key pair padded);
    # 1 to 8 V cells per key (cells of 32 to 128 channels, d64 to d256; one
    # cell at d80 and d96: the last 16 or 32 channels under a mask);
    # key counts past one 128-key tile with a partial last tile
    c = build(pol, 1, 2, n, d, rng)
    q = (rng.standard_normal((1, hq, m, d)) * 2).astype(np.float32)
    exact = c.attend(q, split_k=1, is_causal=True, precision="fp32")
    fast = c.attend(q, split_k=1, is_causal=True, precision="bf16")
    if isa in ("avx512_vnni", "amx"):
        assert not np.array_equal(fast, exact)
        kd, vd = c.dequantize()
        err = quality(fast.astype(np.float64), sdpa_reference(q, kd, vd, is_causal=True))["rel_l1"]
        assert err < 2e-4  # int16 q and P: ~2^-16 of each row's max, far inside bf16's 2^-8
        # split-K and per-row key lengths take the same integer paths
        for qual in split_and_lens_quality(pol, hq, m, n, d, rng, "bf16"):
            assert qual["rel_l1"] < 2e-4
    else:
        np.testing.assert_array_equal(fast, exact)


#: symmetric int4 K and int4 V in 64-channel cells (two 32-channel lanes share a scale)
INT4_G64 = {"k": "int4.t64.g1.s16", "v": "int4.t1.g64.s16"}


@pytest.mark.parametrize("pol,hq,m,n,d,integer", [
    ("int4", 4, 17, 300, 128, True), ("int4", 8, 300, 333, 64, True), ("int4", 2, 600, 700, 80, True),
    ("int4", 4, 64, 129, 96, True), ("int4", 4, 40, 200, 256, True),
    ("int8k-int4v", 4, 64, 300, 128, True), ("int8k-int4v", 8, 300, 400, 96, True),
    (INT4_SYM, 4, 30, 300, 128, False), ("int8", 4, 64, 300, 128, False)])
def test_precision_int8_prefill_items(rng, isa, pol, hq, m, n, d, integer):
    """Prefill items (more than 16 rows) at precision="int8" on AVX512-VNNI
    with AVX512-BF16 take the decode's integer kernels where the formats
    allow: int4 K in the k16 layout (8-bit q' per row and token group,
    VPDPBUSD) and symmetric int4 V with one scale per token (8-bit P' per row
    and tile); the other operand in bf16, with and without the shared bf16
    tiles (m 300 and 600 take them; int8k-int4v: bf16 K tiles). Token-rows
    int4 K with 32-channel V cells, and int8 codes, compute as at "bf16".
    Split-K and per-row key lengths take the same paths."""
    c = build(pol, 1, 2, n, d, rng)
    q = (rng.standard_normal((1, 2 * hq, m, d)) * 2).astype(np.float32)
    bf = c.attend(q, split_k=1, is_causal=True, precision="bf16")
    i8 = c.attend(q, split_k=1, is_causal=True, precision="int8")
    if not (integer and isa == "avx512_vnni" and bf16_prefill(isa)):
        np.testing.assert_array_equal(i8, bf)
        return
    assert not np.array_equal(i8, bf)
    kd, vd = c.dequantize()
    qual = quality(i8.astype(np.float64), sdpa_reference(q, kd, vd, is_causal=True))
    assert qual["cosine"] > 0.998 and qual["rel_l1"] < 0.08, qual  # as test_precision_int8_decode's 8-bit q'
    for qual in split_and_lens_quality(pol, 2 * hq, m, n, d, rng, "int8"):
        assert qual["cosine"] > 0.998 and qual["rel_l1"] < 0.08, qual


@pytest.mark.parametrize("pol,hq,m,n,d,qk8,pv8", [
    ("int4", 8, 1, 701, 128, True, True), ("int4", 16, 1, 333, 128, True, True),
    ("int4", 2, 1, 300, 128, True, True), ("int4", 8, 3, 200, 256, True, True), ("int4", 6, 1, 300, 96, True, True),
    ("int4", 8, 1, 300, 64, True, True), ("int4", 8, 1, 257, 192, True, True),
    (INT4_SYM, 8, 1, 203, 64, True, False), (INT4_SYM, 8, 1, 300, 128, True, True),
    ("int8k-int4v", 2, 1, 301, 64, False, True), (INT4_SYM, 4, 1, 150, 96, False, False),
    ("int8k-int4v", 8, 3, 300, 192, False, True), ("int4", 8, 1, 300, 80, True, True),
    ("int4", 8, 3, 157, 96, True, True),
    (INT4_G64, 8, 1, 333, 256, True, True), ("int8k-int4v", 8, 1, 300, 128, False, True),
    ("int8", 8, 1, 300, 128, False, False), ("q8_0", 8, 1, 300, 128, False, False)])
def test_precision_int8_decode(rng, isa, pol, hq, m, n, d, qk8, pv8):
    """precision="int8" (8-bit operands): on AVX512-VNNI, int4 K codes meet
    int8 q' in VPDPBUSD (whole 64-channel blocks, rows in fours) and symmetric
    int4 V codes meet u8 P' (d a multiple of 128; with one scale per token
    any d, the rest in blocks of up to 64 channels: pvb_pass64); in the k16
    layout int4 K takes 8-bit q' at any d (the last 16-48 channels rounded
    alone); everything else computes as
    at "bf16", and int8 codes keep 16-bit operands (8-bit ones miss the int8
    accuracy targets)."""
    c = build(pol, 1, 2, n, d, rng)
    q = (rng.standard_normal((1, hq, m, d)) * 2).astype(np.float32)
    bf = c.attend(q, split_k=1, is_causal=True, precision="bf16")
    i8 = c.attend(q, split_k=1, is_causal=True, precision="int8")
    if isa not in ("avx512_vnni", "amx") or not (qk8 or pv8):
        np.testing.assert_array_equal(i8, bf)
        return
    assert not np.array_equal(i8, bf)
    kd, vd = c.dequantize()
    ref = sdpa_reference(q, kd, vd, is_causal=True)
    qual = quality(i8.astype(np.float64), ref)
    # 2^-8 of each row's largest q' and P': here (peaked softmax) up to ~5e-2
    # relative against attention over the same codes in float64; the int4
    # codes' own error against the original K/V is ~2e-1 (docs/accuracy.md)
    tol = 0.08 if qk8 else 0.02  # 8-bit P' alone: ~1e-2
    assert qual["cosine"] > 0.998 and qual["rel_l1"] < tol, qual
    # split-K and per-row key lengths take the same paths
    for qual in split_and_lens_quality(pol, hq, m, n, d, rng, "int8"):
        assert qual["cosine"] > 0.998 and qual["rel_l1"] < tol, qual
