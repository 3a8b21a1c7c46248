"""Metal attention kernels (metal/attention.metal) through the plans.

Under the host emulation on Linux (every dispatch with the race check on),
on the GPU on a Mac. The oracle is the float64 reference over what the
kernels consume: the K/V tensors, or the cache's dequantized content (the
quantization error is not the kernels' business; tests/test_accuracy.py
judges the formats). Tolerances are for fp32 accumulation; on a GPU with
fast math they are the same order (exp2 is within a few ulp).
"""
import numpy as np
import pytest

import sagecore
from sagecore import backends, errors
from sagecore.metal import attention as mattn
from sagecore.reference import sdpa_reference


@pytest.fixture(autouse=True)
def race_check(monkeypatch):
    monkeypatch.setattr(mattn, "RACE_CHECK", True)


def close(got, ref, what):
    scale = max(1e-3, float(np.abs(ref).max()))
    err = float(np.abs(got.astype(np.float64) - ref).max()) / scale
    assert err < 2e-5, f"{what}: max error {err:.2e} of max |ref|"


def qkv(rng, B, Hq, Hkv, M, N, D, kv_dtype=np.float16, q_dtype=np.float32):
    q = rng.standard_normal((B, Hq, M, D)).astype(q_dtype)
    k = (rng.standard_normal((B, Hkv, N, D)) * np.exp(rng.normal(0, 0.5, (1, 1, 1, D)))).astype(kv_dtype)
    v = rng.standard_normal((B, Hkv, N, D)).astype(kv_dtype)
    return q, k, v


# (B, Hq, Hkv, M, N, D, causal): GQA 1/4/8, M in {1, 3, 64, 130}, N off the 32-key tile
SHAPES = [(1, 4, 4, 1, 1, 64, False), (1, 8, 2, 1, 33, 128, False), (1, 8, 1, 3, 31, 64, True),
          (2, 8, 2, 64, 100, 64, True), (1, 4, 1, 130, 130, 128, True), (1, 16, 2, 1, 257, 80, False),
          (1, 4, 2, 3, 70, 96, True), (1, 8, 4, 1, 65, 192, False), (1, 2, 1, 5, 40, 256, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}Hq{}Hkv{}M{}N{}D{}{}".format(*s[:6], "c" if s[6] else ""))
@pytest.mark.parametrize("kv_dtype", [np.float16, np.float32])
def test_sdpa_matches_the_reference(shape, kv_dtype, rng):
    B, Hq, Hkv, M, N, D, causal = shape
    q, k, v = qkv(rng, B, Hq, Hkv, M, N, D, kv_dtype)
    got = sagecore.sdpa(q, k, v, is_causal=causal, backend="metal")
    close(got, sdpa_reference(q, k, v, is_causal=causal), f"{shape}")


POLICIES = ["int8", "int4", "int8k-int4v", "q8_0", "fp16",
            {"k": "int8.t4.g16.s32+zp+out2", "v": "int4.t1.g16.s16+out1"},
            {"k": "int4.t1.g32.s16+rot", "v": "int8.t16.g1.s16+zp+smooth"},
            {"k": "int4.t16.g1.s16+zp+k16", "v": "int4.t16.g32.s32+out1+k16"}]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p if isinstance(p, str) else p["k"] + "/" + p["v"])
@pytest.mark.parametrize("shape", [(1, 8, 2, 1, 200, 128, True), (2, 4, 4, 3, 70, 64, True),
                                   (1, 8, 2, 20, 70, 64, True), (1, 8, 1, 64, 96, 64, True)],
                         ids=["decode", "M3", "prefill-tiles", "prefill-dequant"])
def test_cache_attend_matches_the_reference_over_its_content(policy, shape, rng):
    B, Hq, Hkv, M, N, D, causal = shape
    q, k, v = qkv(rng, B, Hq, Hkv, M, N, D)
    cache = sagecore.QuantKVCache(policy, batch=B, kv_heads=Hkv, head_dim=D, capacity=N)
    cache.append(k, v)
    kd, vd = cache.dequantize(np.float32)
    got = cache.attend(q, is_causal=causal, backend="metal")
    if M >= backends.METAL_DEQUANT_MIN_Q_LEN:
        # the pre-pass route holds the dequantized K/V as fp16: exact against
        # that content, and within fp16 rounding of the cache's own
        kd16, vd16 = (x.astype(np.float16).astype(np.float32) for x in (kd, vd))
        close(got, sdpa_reference(q, kd16, vd16, is_causal=causal), f"{policy} {shape} (fp16 content)")
        assert np.abs(got - sdpa_reference(q, kd, vd, is_causal=causal)).max() < 2e-3 * np.abs(vd).max()
        return
    close(got, sdpa_reference(q, kd, vd, is_causal=causal), f"{policy} {shape}")
    cpu = cache.attend(q, is_causal=causal, backend="cpu", precision="fp32")  # the Metal kernels' class
    close(got, cpu.astype(np.float64), "metal vs cpu")


@pytest.mark.parametrize("splits", [1, 2, 3, 7])
def test_split_k_on_and_off_agree(splits, rng):
    q, k, v = qkv(rng, 1, 8, 2, 1, 1000, 64)
    ref = sdpa_reference(q, k, v)
    got = sagecore.sdpa(q, k, v, backend="metal", split_k=splits)
    close(got, ref, f"split_k={splits}")
    cache = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=1000)
    cache.append(k, v)
    a = cache.attend(q, backend="metal", split_k=splits)
    b = cache.attend(q, backend="metal", split_k=1)
    close(a, b.astype(np.float64), "split vs none")


def test_extreme_logits_and_outlier_heavy_keys(rng):
    q, k, v = qkv(rng, 1, 4, 1, 2, 300, 64)
    q *= 300.0  # logits up to ~1e4
    k[..., 5] *= 100  # a 100x outlier channel (still within fp16)
    k = np.clip(k.astype(np.float32), -60000, 60000).astype(np.float16)
    got = sagecore.sdpa(q, k, v, backend="metal", split_k=3)
    assert np.isfinite(got).all()
    close(got, sdpa_reference(q, k, v), "extreme")


def test_fully_masked_rows_are_zeros_and_kv_lens(rng):
    q, k, v = qkv(rng, 2, 4, 2, 4, 40, 64)
    lens = np.array([0, 17])
    got = sagecore.sdpa(q, k, v, backend="metal", kv_lens=lens, is_causal=True)
    assert (got[0] == 0).all() and np.isfinite(got).all()
    close(got, sdpa_reference(q, k, v, kv_lens=lens, is_causal=True), "kv_lens")


def test_fp16_io_and_strided_bnhd_layout(rng):
    q, k, v = qkv(rng, 1, 8, 2, 3, 50, 64, q_dtype=np.float16)
    qn, kn, vn = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v))
    out = np.empty((1, 3, 8, 64), np.float16)
    sagecore.sdpa(qn, kn, vn, layout="BNHD", out=out, backend="metal", is_causal=True)
    ref = sdpa_reference(q, k, v, is_causal=True).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(out.astype(np.float64), ref, atol=2e-3)


def test_metal_declines_what_it_cannot_do(rng):
    q, k, v = qkv(rng, 1, 64, 1, 1, 10, 64)  # 64 query heads per kv head
    with pytest.raises(errors.NoBackendError, match="at most 32 query heads"):
        sagecore.sdpa(q, k, v, backend="metal")
    q, k, v = qkv(rng, 1, 4, 2, 1, 10, 64)
    with pytest.raises(errors.NoBackendError, match="log-sum-exp"):
        sagecore.sdpa(q, k, v, backend="metal", return_lse=True)


def test_auto_never_picks_the_emulated_device(rng):
    from sagecore import metal, selector
    from sagecore.graph import AttentionRequest
    if not metal.emulated():
        pytest.skip("on a Mac, auto may pick the GPU")
    d = selector.select(AttentionRequest(1, 8, 2, 1, 100, 64))
    assert d.backend == "cpu"
    assert any("host emulation" in why for b, why in d.declined if b == "metal")


def test_plan_runs_as_one_command_buffer_with_cached_pipelines(rng):
    from sagecore.metal import library
    q, k, v = qkv(rng, 1, 8, 2, 1, 300, 64)
    lib = library("attention")
    sagecore.sdpa(q, k, v, backend="metal", split_k=2)
    before = lib.pipelines_created
    for _ in range(3):
        sagecore.sdpa(q, k, v, backend="metal", split_k=2)
    assert lib.pipelines_created == before  # no pipeline creation per call


def test_argument_struct_layout_matches_the_kernels():
    from sagecore.metal import device, library
    dev, lib = device(), library("attention")
    a = np.zeros(1, mattn.ATTN_ARGS)
    a["v_st"], a["batch"], a["has_kv_lens"], a["qscale"], a["v_row_bytes"], a["rot_norm"] = 1 << 35, 3, 1, 0.5, 77, 0.25
    out = np.zeros(7, np.int64)
    consts = {i: 0 for i in (10, 13, 15, 18)} | {i: False for i in (11, 12, 14, 16, 17, 19, 20, 21, 22, 23, 24)}
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("sc_attn_args_probe", consts))
    c.set_buffer(0, dev.wrap(out))
    c.set_bytes(16, a)
    c.dispatch((1, 1, 1), (32, 1, 1))
    c.commit()
    c.wait()
    assert out.tolist() == [mattn.ATTN_ARGS.itemsize, 1 << 35, 3, 1, 512, 77, 256]


@pytest.mark.parametrize("M,variant,passes", [
    (1, "decode", ("attention",)),
    (20, "prefill", ("attention",)),
    (64, "prefill-dequant", ("dequantize_kv", "attention")),
])
def test_metal_variants_and_their_plans(M, variant, passes):
    from sagecore import selector
    from sagecore.executor import plan_for
    from sagecore.graph import AttentionRequest
    r = AttentionRequest(1, 8, 2, M, 500, 64, k_format="int8.t32.g1.s16+smooth", v_format="int8.t1.g32.s16",
                         kv_source="store", kv_dtype="packed", causal=True, backend="metal", split_k=1)
    d = selector.select(r)
    assert d.backend == "metal" and d.variant == variant
    plan = plan_for(r)
    assert tuple(p.name for p in plan.passes) == passes
    if variant == "prefill-dequant":
        assert {b.name for b in plan.buffers} >= {"k16", "v16"} and plan.passes[1].reads == ("q", "k16", "v16")
        assert any("pre-pass" in why for why in d.reasons)
    assert "metal" in plan.describe() or variant in plan.describe()


def test_many_query_heads_per_kv_head_decode_on_the_matrix_kernel(rng):
    q, k, v = qkv(rng, 1, 32, 2, 1, 90, 64)  # 16 per kv head: more than the decode kernel's 8 rows
    from sagecore import selector
    from sagecore.graph import AttentionRequest
    assert selector.select(AttentionRequest(1, 32, 2, 1, 90, 64, backend="metal")).variant == "prefill"
    close(sagecore.sdpa(q, k, v, backend="metal"), sdpa_reference(q, k, v), "group 16")


@pytest.mark.parametrize("splits", [2, 5])
def test_prefill_split_k(splits, rng):
    q, k, v = qkv(rng, 1, 4, 2, 24, 300, 64)
    close(sagecore.sdpa(q, k, v, backend="metal", split_k=splits, is_causal=True),
          sdpa_reference(q, k, v, is_causal=True), f"prefill split {splits}")
    cache = sagecore.QuantKVCache("int4", batch=1, kv_heads=2, head_dim=64, capacity=300)
    cache.append(k, v)
    kd, vd = cache.dequantize(np.float32)
    q40 = np.concatenate([q, q[:, :, :16]], 2)  # 40 rows: the dequant pre-pass route (fp16 content)
    kd16, vd16 = (x.astype(np.float16).astype(np.float32) for x in (kd, vd))
    close(cache.attend(q40, backend="metal", split_k=splits), sdpa_reference(q40, kd16, vd16, is_causal=True),
          "prefill-dequant split")
