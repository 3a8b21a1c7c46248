"""The k16 code layout (format version 2): int8/int4 codes of 16 tokens
interleaved by 4-byte words so the decode scores put the keys in the vector
lanes. Only the byte order differs from the token rows, so a cache must
store the same values and compute the rows layout's result (bitwise where
the arithmetic is integer or the tiles are decoded) on every ISA path, and a
reader of version-1 descriptors must refuse it rather than misread it.
"""
import struct
from binascii import crc32

import numpy as np
import pytest

import sagecore
from sagecore import QuantKVCache, _cpu, errors
from sagecore.cache import TensorStore
from sagecore.formats import FORMAT_VERSION, HEADER_SIZE, KVFormat
from sagecore.policy import builtin_policies, policy_from_dict
from sagecore.reference import quality

ROWS_K = "int4.t64.g1.s16+zp+smooth"
K16_K = ROWS_K + "+k16"
V = "int4.t1.g16.s16+rot"  # 16-channel cells: every head dim


def test_descriptor_round_trips_and_version():
    f = KVFormat.parse(K16_K)
    assert f.layout == "k16" and f.version == 2 and f.format_id == K16_K
    assert KVFormat.from_bytes(f.to_bytes()) == f
    assert KVFormat.from_json(f.to_json()) == f
    assert struct.unpack_from("<H", f.to_bytes(), 4)[0] == 2
    rows = KVFormat.parse(ROWS_K)
    # formats a version-1 reader understands are still written as version 1, byte for byte
    assert rows.version == 1 and struct.unpack_from("<H", rows.to_bytes(), 4)[0] == 1
    assert "layout" not in rows.to_dict()
    assert rows.replace(layout="k16") == f and f.replace(layout="rows") == rows
    assert KVFormat.parse(ROWS_K + "+v2").version == 2 and KVFormat.parse(ROWS_K + "+v2").format_id.endswith("+v2")
    assert FORMAT_VERSION >= 2


@pytest.mark.parametrize("kw, arg", [(dict(encoding="fp16"), "layout"),
                                     (dict(encoding="int4", token_group=8, channel_group=1), "layout"),
                                     (dict(encoding="int4", token_group=64, channel_group=1, version=1), "version")])
def test_bad_k16_descriptors_name_the_argument(kw, arg):
    enc = kw.pop("encoding")
    with pytest.raises(errors.InvalidArgumentError) as e:
        KVFormat(enc, layout="k16", **kw)
    assert e.value.argument == arg
    with pytest.raises(errors.InvalidArgumentError, match="layout"):
        KVFormat("int4", token_group=64, layout="columns")


def test_a_version_1_header_with_the_k16_bit_is_refused():
    body = struct.pack("<4sHBBHHBBH", b"SCKF", 1, 3, 16 | 1, 64, 1, 0, 0, 0)
    with pytest.raises(errors.FormatError, match="reserved"):
        KVFormat.from_bytes(body + struct.pack("<I", crc32(body)))
    body = struct.pack("<4sHBBHHBBH", b"SCKF", 2, 3, 16, 8, 1, 0, 0, 0)  # k16 with 8-token groups
    with pytest.raises(errors.FormatError, match="layout"):
        KVFormat.from_bytes(body + struct.pack("<I", crc32(body)))
    assert len(KVFormat.parse(K16_K).to_bytes()) == HEADER_SIZE


def test_policy_tables_take_a_layout_and_the_builtin_int4_uses_k16():
    p = policy_from_dict({"k": {"bits": 4, "token_group": 32, "channel_group": 1, "layout": "k16"}, "v": V})
    assert p.formats(0, 0)[0].layout == "k16"
    with pytest.raises(errors.PolicyError, match="layout"):
        policy_from_dict({"k": {"bits": 8, "token_group": 8, "layout": "k16"}, "v": V})
    assert builtin_policies()["int4"].formats(0, 0)[0].format_id == K16_K


def test_the_bytes_are_the_rows_bytes_permuted(rng):
    B, H, N, D, cap = 1, 2, 150, 128, 192
    x = rng.standard_normal((B, H, N, D)).astype(np.float16)
    a, b = TensorStore(KVFormat.parse(ROWS_K), B, H, D, cap), TensorStore(KVFormat.parse(K16_K), B, H, D, cap)
    for s in (a, b):
        s.set_mean(x)
        s.packed.quantize(x, 0)
    rb = D // 2
    rows = a.arrays["data"].reshape(B * H, cap // 16, 16, rb // 4, 4)
    k16 = b.arrays["data"].reshape(B * H, cap // 16, rb // 4, 16, 4)
    b.arrays["data"][:, N:N + 10].fill(0xAB)  # inside the last block: rewritten as zero words by a quantize
    b.packed.quantize(x[:, :, 128:], 128)
    # rows past N were never written (zeros); the k16 store holds zero words there
    np.testing.assert_array_equal(k16, rows.transpose(0, 1, 3, 2, 4))
    for name in ("scales", "zeros"):
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("shape", [(1, 8, 2, 1, 300, 128), (1, 8, 1, 1, 17, 128), (2, 4, 4, 1, 130, 64),
                                   (1, 16, 2, 3, 200, 96), (1, 8, 2, 1, 90, 256), (1, 6, 2, 1, 64, 128),
                                   (1, 8, 2, 40, 100, 128), (1, 8, 2, 1, 70, 80), (1, 8, 2, 1, 70, 192)],
                         ids=lambda s: "B{}Hq{}Hkv{}M{}N{}D{}".format(*s))
# int4 with zero points / symmetric (+8); int8 per channel (the bf16 setting's keys-in-lanes scores) / with zero points
@pytest.mark.parametrize("kid", [ROWS_K, "int4.t16.g1.s32", "int8.t64.g1.s16+smooth", "int8.t16.g1.s16+zp"])
def test_attention_matches_the_rows_layout(isa, precision, shape, kid, rng):
    """Bitwise where the scores are integer sums (AVX512-VNNI at the bf16/int8
    settings) or the tiles are decoded (portable); the fp32 scores read in
    place sum in another order, so there within fp32 rounding."""
    B, Hq, Hkv, M, N, D = shape
    k = rng.standard_normal((B, Hkv, N, D)).astype(np.float16)
    v = rng.standard_normal((B, Hkv, N, D)).astype(np.float16)
    q = rng.standard_normal((B, Hq, M, D)).astype(np.float32)
    kv_lens = np.array([N, N // 2 + 1]) if B == 2 else None
    outs = []
    for fid in (kid, kid + "+k16"):
        c = QuantKVCache(policy_from_dict({"k": fid, "v": V}), batch=B, kv_heads=Hkv, head_dim=D, capacity=N)
        c.append(k, v)
        outs.append([c.attend(q, is_causal=True, precision=precision, kv_lens=kv_lens, split_k=s) for s in (1, 3)])
        outs[-1].append(c.dequantize()[0])
    integer = isa in ("avx512_vnni", "amx") and precision != "fp32" and not (kid.startswith("int8") and "zp" in kid)
    # int4 K at "int8" when D is not a multiple of 64: the k16 scores take 8-bit q' (qk4b_k16 rounds the
    # last 16-48 channels alone), the token rows 16-bit ones (their 8-bit blocks need whole 64 channels);
    # and in prefill items (more than 16 rows) on AVX512-BF16 without the engine: the k16 scores in
    # integers (8-bit q'), the token rows in bf16 dot products
    prefill = Hq // Hkv * M > 16 and isa == "avx512_vnni" and "avx512bf16" in _cpu.cpu_info()["features"].split()
    # and rows not in fours (MHA: 1 row per kv head): the k16 scores take 8-bit q' for any row count, the
    # token rows' 8-bit blocks only rows in fours
    mixed = integer and precision == "int8" and kid.startswith("int4") and (D % 64 != 0 or prefill or
                                                                              Hq // Hkv * M % 4 != 0)
    exact = (isa == "portable" or integer) and not mixed
    for a, b in zip(*outs):
        if mixed:  # 2^-8 of the row's largest q': the int8 setting's error (test_precision_int8_decode)
            qual = quality(b.astype(np.float64), a.astype(np.float64))
            assert qual["cosine"] > 0.998 and qual["rel_l1"] < 0.05, qual
        elif exact:
            np.testing.assert_array_equal(b, a)
        else:
            # fp32 scores: fp32 rounding; at bf16/int8 a score's last bit can move a P' rounding (2^-16)
            tol = 4e-6 if precision == "fp32" else 1e-4
            np.testing.assert_allclose(b, a, rtol=0, atol=tol * np.abs(a).max())
    np.testing.assert_array_equal(outs[1][-1], outs[0][-1])  # the stored values: always the same


def test_cache_growth_and_save_load_keep_partial_blocks(tmp_path, rng):
    D, Hkv = 64, 2
    k = rng.standard_normal((1, Hkv, 90, D)).astype(np.float16)
    v = rng.standard_normal((1, Hkv, 90, D)).astype(np.float16)
    q = rng.standard_normal((1, 8, 1, D)).astype(np.float32)
    a = QuantKVCache("int4", batch=1, kv_heads=Hkv, head_dim=D, capacity=64)  # grows twice
    i4 = builtin_policies()["int4"]
    b = QuantKVCache(policy_from_dict({"k": ROWS_K, "v": i4.v.format_id, "precision": i4.precision}), batch=1,
                     kv_heads=Hkv, head_dim=D, capacity=512)
    for lo, hi in ((0, 5), (5, 37), (37, 70), (70, 90)):  # partial groups and blocks, re-quantized as they fill
        a.append(k[:, :, lo:hi], v[:, :, lo:hi])
        b.append(k[:, :, lo:hi], v[:, :, lo:hi])
        np.testing.assert_array_equal(a.dequantize()[0], b.dequantize()[0])
        want = b.attend(q)
        np.testing.assert_allclose(a.attend(q), want, rtol=0, atol=4e-6 * np.abs(want).max())
    a.save(tmp_path / "c.sck")
    r = QuantKVCache.load(tmp_path / "c.sck")
    assert r.formats == a.formats and r.formats[0][1].layout == "k16"
    np.testing.assert_array_equal(r.attend(q), a.attend(q))
    r.append(k[:, :, :3], v[:, :, :3])
    a.append(k[:, :, :3], v[:, :, :3])
    np.testing.assert_array_equal(r.attend(q), a.attend(q))


def test_a_store_with_a_bad_layout_is_refused_by_the_core():
    f = KVFormat.parse(K16_K)
    params = list(f.c_params(128))
    params[-1] = 7
    s = TensorStore(f, 1, 1, 128, 64)
    with pytest.raises(errors.InvalidArgumentError, match="layout"):
        sagecore._cpu.PackedStore(tuple(params), s.arrays["data"], s.arrays["scales"], s.arrays["zeros"], None,
                                  None, s.arrays["mean"], 1, 64)
