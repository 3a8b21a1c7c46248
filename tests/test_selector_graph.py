"""Selector decisions, overrides, the "why not" error, plans and the plan cache."""
import json
import logging

import numpy as np
import pytest

import sagecore
from sagecore import errors, selector
from sagecore.executor import executor, plan_for
from sagecore.graph import STAGES, AttentionRequest, PlanCache, build_plan, plan_cache
from sagecore.profile import Profile, default_profile, load_profile


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("SAGECORE_BACKEND", "SAGECORE_SPLIT_K", "SAGECORE_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SAGECORE_CACHE_DIR", str(tmp_path))
    selector.reset()
    yield
    monkeypatch.undo()
    selector.reset()


def req(**kw):
    base = dict(batch=1, q_heads=32, kv_heads=8, q_len=1, kv_len=4096, head_dim=128)
    base.update(kw)
    return AttentionRequest(**base)


# ------------------------------------------------------------------ routing
@pytest.mark.parametrize("kf,vf,path", [
    ("fp16", "fp16", "FlashAttention"),
    ("int8.t32.g1.s16+smooth", "int8.t1.g32.s16", "QuantAttention"),
    ("int4.t64.g1.s16+zp+smooth", "int4.t1.g32.s16+rot", "QuantAttention"),
    ("fp16", "int8.t1.g32.s16", "QuantAttention"),
])
def test_path_follows_formats(kf, vf, path):
    d = selector.select(req(k_format=kf, v_format=vf, kv_source="store"))
    assert d.backend == "cpu" and d.path == path
    assert any(path in r for r in d.reasons)
    metal_why = dict(d.declined).get("metal", "")
    from sagecore import metal
    assert "host emulation" in metal_why or not metal.emulated()


@pytest.mark.parametrize("M,variant", [(1, "decode"), (8, "decode"), (9, "prefill"), (2048, "prefill")])
def test_variant_threshold_from_profile(M, variant):
    assert selector.select(req(q_len=M)).variant == variant


def test_variant_threshold_is_data():
    d = default_profile("cpu").to_dict()
    d["decode_max_q_len"] = 1
    prof = Profile(d, "test")
    assert selector.select(req(q_len=2), profile=prof).variant == "prefill"
    assert selector.select(req(q_len=2)).variant == "decode"


@pytest.mark.parametrize("B,Hkv,N,expect_split", [
    (1, 8, 32768, False),   # 8 items fill 2 threads
    (1, 1, 32768, True),    # one item: split
    (1, 1, 1024, False),    # too short to split
    (4, 8, 131072, False),
])
def test_split_k_decisions(B, Hkv, N, expect_split):
    d = selector.select(req(batch=B, kv_heads=Hkv, q_heads=4 * Hkv, kv_len=N))
    assert (d.split_k > 1) == expect_split, d.explain()
    assert any("split-K" in r for r in d.reasons)


def test_split_k_argument_and_env_override(monkeypatch):
    assert selector.select(req(split_k=3)).split_k == 3
    monkeypatch.setenv("SAGECORE_SPLIT_K", "5")
    selector.reset()
    d = selector.select(req())
    assert d.split_k == 5 and "SAGECORE_SPLIT_K=5" in d.reasons
    assert selector.select(req(split_k=2)).split_k == 2  # the argument wins over the environment


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("SAGECORE_BACKEND", "reference")
    selector.reset()
    d = selector.select(req())
    assert d.path == "SdpaReference" and "SAGECORE_BACKEND=reference" in d.reasons
    # an explicit argument is not overridden
    assert selector.select(req(backend="cpu")).backend == "cpu"


@pytest.mark.parametrize("var,val", [("SAGECORE_BACKEND", "gpu"), ("SAGECORE_SPLIT_K", "many"),
                                     ("SAGECORE_SPLIT_K", "-1")])
def test_bad_env_override_is_a_typed_error(monkeypatch, var, val):
    monkeypatch.setenv(var, val)
    selector.reset()
    with pytest.raises(errors.InvalidArgumentError, match=var):
        selector.select(req())


def test_reference_only_when_asked():
    assert selector.select(req()).backend == "cpu"
    assert selector.select(req(backend="reference")).backend == "reference"


def test_why_not_error_lists_every_backend():
    with pytest.raises(errors.NoBackendError) as ei:
        selector.select(req(head_dim=100))
    reasons = ei.value.reasons
    assert set(reasons) == {"cpu", "metal", "reference"}
    assert "head_dim" in reasons["cpu"] and "100" in reasons["cpu"]
    assert "head_dim" in reasons["metal"] or "host emulation" in reasons["metal"]
    assert "backend='reference'" in reasons["reference"]


def test_explicit_backend_that_declines_is_an_error_not_a_fallback():
    with pytest.raises(errors.NoBackendError) as ei:
        selector.select(req(backend="metal", q_heads=64, kv_heads=1))  # 64 heads per kv head: Metal declines
    assert "query heads per kv head" in ei.value.reasons["metal"] and "not requested" in ei.value.reasons["cpu"]
    assert selector.select(req(backend="metal")).backend == "metal"  # asked for: served, even when emulated


def test_sdpa_surfaces_no_backend():
    q = np.zeros((1, 2, 1, 100), np.float32)
    with pytest.raises(errors.NoBackendError):
        sagecore.sdpa(q, q, q)
    with pytest.raises(errors.NoBackendError):
        sagecore.sdpa(q, q, q, backend="metal")
    with pytest.raises(errors.NoBackendError):
        sagecore.sdpa(q, q, q, backend="metal", return_lse=True)


def test_debug_logs_each_decision(monkeypatch, caplog):
    monkeypatch.setenv("SAGECORE_DEBUG", "1")
    selector.reset()
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 40, 64)).astype(np.float16)
    with caplog.at_level(logging.DEBUG, logger="sagecore.selector"):
        sagecore.sdpa(q, k, k)
        sagecore.sdpa(q, k, k)  # repeat calls are logged too (no silent fast path)
    msgs = [r.getMessage() for r in caplog.records if r.name == "sagecore.selector"]
    assert len(msgs) == 2 and "FlashAttention on cpu" in msgs[0] and "because" in msgs[0]


# ------------------------------------------------------------------ profile
def test_profile_file_is_used_and_validated(tmp_path):
    from sagecore.profile import device_name, profile_path
    dev = device_name("cpu")
    d = default_profile(dev).to_dict()
    d["split_k"]["min_kv_len"] = 1 << 30
    path = profile_path(dev)
    with open(path, "w") as f:
        json.dump(d, f)
    selector.reset()
    assert load_profile("cpu").path == path
    dd = selector.select(req(kv_heads=1, q_heads=4, kv_len=65536))
    assert dd.split_k == 1 and "min_kv_len 1073741824" in " ".join(dd.reasons)
    d["split_k"]["min_kv_len"] = "big"
    with open(path, "w") as f:
        json.dump(d, f)
    with pytest.raises(errors.CorruptFileError, match="min_kv_len"):
        load_profile("cpu", refresh=True)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(errors.CorruptFileError, match="tune"):
        load_profile("cpu", refresh=True)


# ------------------------------------------------------------------ plans
def test_plan_structure_split_and_fused():
    r = req(kv_heads=1, q_heads=4, kv_len=65536, k_format="int8.t32.g1.s16+smooth", v_format="int8.t1.g32.s16",
            kv_source="store")
    d = selector.select(r, profile=None)
    d4 = type(d)(d.backend, d.path, d.variant, 4, d.reasons, d.declined)
    plan = build_plan(r, d4)
    assert [p.name for p in plan.passes] == ["split_part", "split_reduce"]
    part, red = plan.passes
    assert ("splits", 4) in part.grid and part.writes == ("part_o", "part_ml")
    assert red.reads[:2] == ("part_o", "part_ml") and "split_reduce" in red.stages
    assert {b.name for b in plan.buffers if b.role == "scratch"} == {"part_o", "part_ml"}
    assert "tile_load[int8.t32.g1.s16+smooth]" in part.stages
    assert all(s.split("[")[0] in STAGES for p in plan.passes for s in p.stages)
    text = plan.describe()
    for word in ("split_part", "split_reduce", "part_o", "splits=4", "QuantAttention", "why:"):
        assert word in text
    d1 = type(d)(d.backend, d.path, d.variant, 1, d.reasons, d.declined)
    fused = build_plan(r, d1)
    assert [p.name for p in fused.passes] == ["attention"] and "finalize" in fused.passes[0].stages
    assert not [b for b in fused.buffers if b.role == "scratch"]


def test_plan_cache_same_object_for_same_key():
    a = plan_for(req())
    b = plan_for(req(kv_len=4097))  # kv_len is a run-time argument: same plan
    c = plan_for(req(q_len=2))
    e = plan_for(req(causal=True))
    assert a is b
    assert c is not a and e is not a and c is not e
    f = plan_for(req(kv_heads=1, q_heads=4, kv_len=65536))
    g = plan_for(req(kv_heads=1, q_heads=4, kv_len=1024))  # different split decision: different plan
    assert f is not g and f.decision.split_k > 1 and g.decision.split_k == 1


def test_plan_cache_lru_and_threads():
    from concurrent.futures import ThreadPoolExecutor
    pc = PlanCache(capacity=4)
    d = selector.select(req())
    plans = [pc.get(req(q_len=m), d) for m in range(1, 7)]
    assert len(pc) == 4
    assert pc.get(req(q_len=6), d) is plans[-1]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda _: pc.get(req(q_len=100), d), range(32)))
    assert all(p is got[0] for p in got)


def test_executor_rejects_unknown_passes():
    r = req()
    d = selector.select(r)
    plan = build_plan(r, d)
    plan.passes = plan.passes + plan.passes
    with pytest.raises(errors.UnsupportedError, match="cannot run passes"):
        executor("cpu").prepare(plan)
    with pytest.raises(errors.UnsupportedError, match="cannot run passes"):
        executor("metal").prepare(plan)
    with pytest.raises(errors.UnsupportedError):
        executor("tpu")


def test_sdpa_fast_path_matches_slow_path_and_validates():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 8, 1, 64)).astype(np.float32)
    k = rng.standard_normal((1, 2, 50, 64)).astype(np.float16)
    v = rng.standard_normal((1, 2, 50, 64)).astype(np.float16)
    first = sagecore.sdpa(q, k, v)
    from sagecore import attention
    assert len(attention._FAST) == 1
    second = sagecore.sdpa(q, k, v)
    np.testing.assert_array_equal(first, second)
    ref = sagecore.sdpa(q, k, v, backend="reference")
    np.testing.assert_allclose(second, ref, atol=2e-3)
    # same signature, but strided in a way the kernels cannot read: still a typed error
    kb = np.zeros((1, 2, 50, 128), np.float16)[..., ::2]
    with pytest.raises(errors.InvalidArgumentError, match="contiguous"):
        sagecore.sdpa(q, kb, v)


def test_cache_attend_through_plans():
    rng = np.random.default_rng(2)
    k = rng.standard_normal((1, 2, 300, 64)).astype(np.float32)
    v = rng.standard_normal((1, 2, 300, 64)).astype(np.float32)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=512)
    c.append(k, v)
    plan_cache.clear()
    o = c.attend(q)
    assert len(plan_cache) == 1
    p = next(iter(plan_cache._d.values()))
    assert p.decision.path == "QuantAttention" and p.request.kv_source == "store"
    o_ref = c.attend(q, backend="reference")
    np.testing.assert_allclose(o, o_ref, atol=2e-3)
    np.testing.assert_allclose(c.attend(q, backend="metal"), o_ref, atol=2e-3)
    with pytest.raises(errors.NoBackendError):
        c.attend(q, backend="metal", return_lse=True)


def test_row_blocking_follows_the_core(isa):
    """The plan's work items are the C core's: 64 rows per item, 256 on the
    AMX path (items of more than 16 rows at head dims % 32 == 0)."""
    from sagecore.graph import row_blocking
    amx = isa == "amx"
    assert row_blocking(4, 2048, 128) == ((64, 32) if amx else (16, 128))
    assert row_blocking(4, 2048, 80) == (16, 128)   # d80: no tile path
    assert row_blocking(4, 3, 128) == (3, 1)        # 12 rows: decode-sized
    assert row_blocking(1, 300, 64) == ((256, 2) if amx else (64, 5))


def built_requests(monkeypatch) -> list:
    """The kv_len of every request built for a call, from now on (a fast-path
    miss on a new split count passes the kept request with kv_len: not counted)."""
    from sagecore import executor as ex
    calls = []
    real = ex.plan_for
    monkeypatch.setattr(ex, "plan_for",
                        lambda r, kv_len=None: (kv_len is None and calls.append(r.kv_len)) or real(r, kv_len))
    return calls


def test_cache_attend_fast_path_with_kv_lens_and_lse(monkeypatch):
    """A batched decode loop (per-sequence kv_lens that change every step,
    return_lse) over a cache of two head segments in different formats takes
    the fast path after its first call and gives the full path's outputs and
    log-sum-exps bit for bit; its lengths are validated like the full path's."""
    from sagecore.policy import policy_from_dict
    pol = policy_from_dict({"k": {"encoding": "int8", "token_group": 32, "channel_group": 1, "smooth": True},
                            "v": {"encoding": "int8"},
                            "overrides": [{"layers": "*", "heads": [1], "k": {"encoding": "int4"},
                                           "v": {"encoding": "int4"}}]})
    rng = np.random.default_rng(4)
    c = sagecore.QuantKVCache(pol, batch=2, kv_heads=2, head_dim=64, capacity=256)
    assert len({(f[1].format_id, f[2].format_id) for f in c.formats}) == 2  # two segments
    c.append(*(rng.standard_normal((2, 2, 2, 100, 64)).astype(np.float32)))
    calls = built_requests(monkeypatch)
    q = rng.standard_normal((2, 4, 1, 64)).astype(np.float32)
    for step in range(6):
        lens = [len(c) - 3 * step - 5, len(c) - step - 1]
        got, lse = c.attend(q, kv_lens=lens, return_lse=True)
        full, full_lse = c.attend(q, kv_lens=lens, return_lse=True, copy=True)
        np.testing.assert_array_equal(got, full)
        np.testing.assert_array_equal(lse, full_lse)
        assert not np.array_equal(got, c.attend(q, copy=True))  # the lengths were applied
        c.append(*(rng.standard_normal((2, 2, 2, 1, 64)).astype(np.float32)))
    assert len(calls) == 2 * (1 + 6 * 2)  # a request per segment; of the fast-path calls only the first's
    for bad, exc in (([len(c) + 1, 1], errors.InvalidArgumentError), ([3.5, 1], errors.ArgumentTypeError)):
        with pytest.raises(exc) as ei:
            c.attend(q, kv_lens=bad, return_lse=True)
        assert ei.value.argument == "kv_lens"


def test_cache_attend_fast_path_follows_a_decode_loop(monkeypatch):
    """Repeated plain calls skip request building and routing but still take
    the split decision at every length (one item: split-K past min_kv_len), see
    appends, capacity growth and selector.reset(); results are those of the
    full path (copy=True always takes it)."""
    rng = np.random.default_rng(3)
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=1, head_dim=64, capacity=1024)
    c.append(*(rng.standard_normal((2, 1, 1, 1990, 64)).astype(np.float32)))
    calls = built_requests(monkeypatch)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    out = np.empty_like(q)
    splits = set()
    for step in range(70):  # 1990 -> 2060 keys: across split.min_kv_len 2048 and a capacity growth
        got = c.attend(q, out=out)
        full = c.attend(q, copy=True)
        np.testing.assert_array_equal(got, full)
        splits.add(selector.select(AttentionRequest(1, 4, 1, 1, len(c), 64, k_format=c.formats[0][1].format_id,
                                                    v_format=c.formats[0][2].format_id, kv_source="store",
                                                    kv_dtype="packed")).split_k)
        c.append(*(rng.standard_normal((2, 1, 1, 1, 64)).astype(np.float32)))
    assert len(splits) > 1, splits  # the loop crossed a split decision
    assert len(calls) == 1 + 70  # every full call built a request, of the plain calls only the first
    with pytest.raises(errors.InvalidArgumentError, match="out"):
        c.attend(q, out=np.empty((1, 4, 2, 64), np.float32))
    n = len(calls)
    monkeypatch.setenv("SAGECORE_SPLIT_K", "3")
    selector.reset()  # drops the fast path: the next plain call routes again
    c.attend(q, out=out)
    assert len(calls) == n + 1
