import json

import pytest

import sagecore
from sagecore.errors import PolicyError
from sagecore.formats import KVFormat
from sagecore.policy import builtin_policies, load_policy


def test_builtins_load():
    pols = builtin_policies()
    assert {"fp16", "int8", "int4"} <= set(pols)
    assert sagecore.load_policy("int8").k.encoding == "int8"
    for p in pols.values():
        p.check_head_dim(128)
        assert p.supported_by("cpu", 128)


def test_toml_file_with_overrides(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("""
name = "mixed"
head_dim = 128
min_kv_len = 256
precision = "bf16"
[k]
encoding = "int8"
token_group = 64
channel_group = "head"
smooth = true
[v]
bits = 4
[[overrides]]
layers = ["0-1", 5]
k = "fp16"
[[overrides]]
layers = "*"
heads = [3]
v = { encoding = "int8" }
""")
    p = load_policy(str(path))
    assert p.name == "mixed" and p.min_kv_len == 256 and p.precision == "bf16"
    assert p.k == KVFormat("int8", token_group=64, channel_group=0, smooth=True)
    assert p.v == KVFormat("int4")
    assert p.formats(0)[0].encoding == "fp16" and p.formats(5)[0].encoding == "fp16"
    assert p.formats(2)[0].encoding == "int8"
    assert p.formats(2, head=3)[1].encoding == "int8" and p.formats(2, head=2)[1].encoding == "int4"
    assert load_policy(p.to_dict()) == p


def test_json_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g32.s16"}))
    p = load_policy(path)
    assert p.k.smooth and p.precision == "fp32"  # the default


def test_precision_is_part_of_the_policy():
    """Two policies that differ only in precision are different policies, and
    the precision survives to_dict (which a saved cache stores)."""
    a = load_policy({"k": "int8.t64.g1.s16+smooth", "v": "int8.t1.g32.s16"})
    b = load_policy({"k": "int8.t64.g1.s16+smooth", "v": "int8.t1.g32.s16", "precision": "bf16"})
    assert a != b and hash(a) != hash(b) and "bf16" in repr(b)
    assert load_policy(b.to_dict()) == b and load_policy(b.to_dict()).precision == "bf16"


@pytest.mark.parametrize("doc,key,match", [
    ({"k": "int8", "v": "fp16", "bogus": 1}, "bogus", "unknown key"),
    ({"k": {"encoding": "int8", "colour": 1}, "v": "fp16"}, "k.colour", "unknown key"),
    ({"k": {"bits": 3}, "v": "fp16"}, "k.bits", "3-bit"),
    ({"k": {"encoding": "int2"}, "v": "fp16"}, "k.encoding", "no backend"),
    ({"k": {"encoding": "int8", "token_group": 0}, "v": "fp16"}, "k.token_group", "1..1024"),
    ({"k": {"encoding": "int8", "smooth": "yes"}, "v": "fp16"}, "k.smooth", "true or false"),
    ({"k": "fp16"}, "v", "missing"),
    ({"k": "fp16", "v": "fp16", "head_dim": 80, "overrides": [{"layers": "*", "v": "int8.t1.g32.s16"}]},
     "overrides[0].v", "does not divide 80"),
    ({"k": "fp16", "v": "fp16", "min_kv_len": -1}, "min_kv_len", "expected"),
    ({"k": "fp16", "v": "fp16", "overrides": [{"layers": "3-1", "k": "fp16"}]}, "overrides[0].layers", "range"),
    ({"k": "fp16", "v": "fp16", "overrides": [{"layers": "*"}]}, "overrides[0]", "must set"),
    ({"k": "fp16", "v": "fp16", "version": 99}, "version", "newer"),
    ({"k": "fp16", "v": "fp16", "precision": "fp16"}, "precision", "one of"),
    ({"k": "fp16", "v": "fp16", "precision": None}, "precision", "one of"),
])
def test_errors_name_source_and_key(tmp_path, doc, key, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match=match) as ei:
        load_policy(str(path))
    assert ei.value.source == str(path) and ei.value.key == key
    assert str(path) in str(ei.value)


def test_unreadable_and_unknown_inputs(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("k = [")
    with pytest.raises(PolicyError, match="TOML"):
        load_policy(str(bad))
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "missing.toml"))
    with pytest.raises(PolicyError, match="neither a built-in"):
        load_policy("int7")
    with pytest.raises(PolicyError):
        load_policy(42)


def test_capability_report():
    p = load_policy("int8")
    assert all(v is None for v in p.capability_report("cpu", 128).values())
    assert all(v is None for v in p.capability_report("metal", 128).values())
    assert any("head_dim" in (v or "") for v in p.capability_report("metal", 48).values())
    rep = p.capability_report("cpu", 48)
    assert any("head_dim" in (v or "") for v in rep.values())


def test_saved_cache_keeps_the_policy_precision(tmp_path):
    """A saved cache's policy carries its precision back; a policy saved
    without one (older files) loads with "fp32"."""
    import numpy as np
    c = sagecore.QuantKVCache("int8", batch=1, kv_heads=1, head_dim=64, capacity=64)
    c.append(*np.random.default_rng(0).standard_normal((2, 1, 1, 40, 64)).astype(np.float32))
    c.save(tmp_path / "c.sck")
    assert sagecore.QuantKVCache.load(tmp_path / "c.sck").policy.precision == "bf16"
    d = c.policy.to_dict()
    del d["precision"]
    assert load_policy(d).precision == "fp32"
