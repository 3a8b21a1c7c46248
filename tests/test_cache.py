import threading

import numpy as np
import pytest

import sagecore
from sagecore.cache import QuantKVCache
from sagecore.errors import (ArgumentTypeError, CorruptFileError, FormatVersionError, InvalidArgumentError,
                             NonFiniteError, PolicyError)

from helpers import DLPackOnly

POLICIES = ["fp16", "int8", "int4", "int8k-int4v", "q8_0",
            {"k": "int8.t4.g16.s16+out2+zp", "v": "int4.t1.g16.s32+smooth+rot", "smooth_window": 8},
            {"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g32.s16", "min_kv_len": 100}]


def kv(rng, n, B=2, H=4, D=64, dtype=np.float32):
    k = (rng.standard_normal((B, H, n, D)) * 2 + 1).astype(dtype)
    v = rng.standard_normal((B, H, n, D)).astype(dtype)
    return k, v


def make(pol, **kw):
    args = dict(batch=2, kv_heads=4, head_dim=64, capacity=16)
    args.update(kw)
    return QuantKVCache(pol, **args)


def state(c):
    return [a.copy() for _, a in c._content()]


@pytest.mark.parametrize("pol", POLICIES)
def test_any_chunking_stores_the_same_bytes(pol, rng):
    k, v = kv(rng, 203)
    one = make(pol)
    one.append(k, v)
    for chunks in ([1] * 203, [3, 64, 1, 100, 35], [64, 64, 64, 11], [130, 73]):
        c = make(pol)
        pos = 0
        for n in chunks:
            c.append(k[:, :, pos:pos + n], v[:, :, pos:pos + n])
            pos += n
        assert len(c) == 203
        sa, sb = state(one), state(c)
        assert len(sa) == len(sb) and all(np.array_equal(a, b) for a, b in zip(sa, sb))
        ka, va = one.dequantize()
        kb, vb = c.dequantize()
        assert np.array_equal(ka, kb) and np.array_equal(va, vb)


@pytest.mark.parametrize("pol", POLICIES)
def test_growth_keeps_data_and_partial_blocks_are_correct(pol, rng):
    k, v = kv(rng, 150)
    c = make(pol, capacity=8)
    ref = make(pol, capacity=1024)
    ref.append(k, v)
    for i in range(150):
        c.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
        if i in (0, 7, 31, 33, 64, 99, 149):
            kd, vd = c.dequantize()
            assert kd.shape == (2, 4, i + 1, 64)
            # a partial group is quantized from exactly its tokens
            fresh = make(pol, capacity=8)
            fresh.append(k[:, :, :i + 1], v[:, :, :i + 1])
            kf, vf = fresh.dequantize()
            assert np.array_equal(kd, kf) and np.array_equal(vd, vf)
    assert c.capacity >= 150
    ka, va = ref.dequantize()
    kb, vb = c.dequantize()
    assert np.array_equal(ka, kb) and np.array_equal(va, vb)


def test_fp16_phase_and_min_kv_len(rng):
    k, v = kv(rng, 120)
    c = make({"k": "int8.t32.g1.s16+smooth", "v": "int8.t1.g32.s16", "min_kv_len": 100})
    assert c.warmup == 128
    c.append(k[:, :, :100], v[:, :, :100])
    assert c.in_fp16_phase
    kd, vd = c.dequantize()
    assert np.array_equal(kd, k[:, :, :100].astype(np.float16).astype(np.float32))
    c.append(k[:, :, 100:], v[:, :, 100:])
    assert c.in_fp16_phase  # 120 < 128
    c.append(k[:, :, :8], v[:, :, :8])
    assert not c.in_fp16_phase and len(c) == 128
    kd, _ = c.dequantize()
    assert np.abs(kd[:, :, :120] - k).max() < 0.1


def test_smoothing_mean_comes_from_the_first_window(rng):
    k, v = kv(rng, 100)
    c = make({"k": "int8.t32.g1.s16+smooth", "v": "fp16", "smooth_window": 64})
    c.append(k, v)
    mean = c._segments[0].k.arrays["mean"].reshape(2, 4, 64)
    want = k[:, :, :64].astype(np.float16).astype(np.float64).mean(2)
    np.testing.assert_allclose(mean, want, rtol=1e-6)


def test_per_head_overrides_make_segments(rng):
    pol = {"k": "int8.t1.g32.s16", "v": "int8.t1.g32.s16",
           "overrides": [{"layers": [1], "heads": [0, 2], "k": "fp16", "v": "int4.t1.g32.s16"}]}
    c = make(pol, layer=1)
    assert [(h, kf.encoding, vf.encoding) for h, kf, vf in c.formats] == [
        ((0, 2), "fp16", "int4"), ((1, 3), "int8", "int8")]
    k, v = kv(rng, 40)
    c.append(k, v)
    kd, vd = c.dequantize()
    assert np.abs(kd[:, [0, 2]] - k[:, [0, 2]]).max() < 0.01  # fp16 heads
    assert np.abs(vd[:, [0, 2]] - v[:, [0, 2]]).max() > np.abs(vd[:, [1, 3]] - v[:, [1, 3]]).max()
    assert len(make(pol, layer=0).formats) == 1


def test_nbytes_is_exact(rng):
    c = make("int8", capacity=64)
    def held(c):
        n = sum(a.nbytes for s in c._segments for st in (s.k, s.v) for a in st.arrays.values() if a is not None)
        return n + (sum(b.nbytes for b in c._fp16) if c._fp16 is not None else 0)
    expect = held(c)
    assert c.nbytes == expect
    k, v = kv(rng, 1000)
    c.append(k, v)
    assert c.nbytes == held(c)
    codes = 2 * 2 * 4 * c.capacity * 64
    assert codes < c.nbytes < 1.2 * codes


@pytest.mark.parametrize("pol", POLICIES)
def test_save_load_round_trip(pol, rng, tmp_path):
    k, v = kv(rng, 77)
    c = make(pol)
    c.append(k, v)
    p = tmp_path / "c.sck"
    c.save(p)
    d = QuantKVCache.load(p)
    assert len(d) == 77 and d.policy == c.policy
    assert all(np.array_equal(a, b) for a, b in zip(state(c), state(d)))
    d.append(k[:, :, :5], v[:, :, :5])
    c.append(k[:, :, :5], v[:, :, :5])
    assert all(np.array_equal(a, b) for a, b in zip(state(c), state(d)))


def test_corrupt_truncated_and_future_files(rng, tmp_path):
    k, v = kv(rng, 50)
    c = make("int8")
    c.append(k, v)
    p = tmp_path / "c.sck"
    c.save(p)
    raw = p.read_bytes()
    assert raw[:4] == b"SCKF"  # the file starts with the format descriptor
    cases = {
        "trunc_head": raw[:30], "trunc_payload": raw[:-100], "trunc_crc": raw[:-2], "empty": b"",
        "flip_payload": raw[:-50] + bytes([raw[-50] ^ 0xFF]) + raw[-49:],
        "flip_json": raw[:60] + bytes([raw[60] ^ 0x01]) + raw[61:],
        "flip_descriptor": bytes([raw[0]]) + bytes([raw[1] ^ 1]) + raw[2:],
        "trailing": raw + b"x",
    }
    for name, data in cases.items():
        q = tmp_path / f"{name}.sck"
        q.write_bytes(data)
        with pytest.raises(CorruptFileError):
            QuantKVCache.load(q)
    import struct
    from binascii import crc32
    body = bytearray(raw[:16])
    body[4:6] = struct.pack("<H", 99)
    fut = bytes(body) + struct.pack("<I", crc32(bytes(body))) + raw[20:]
    q = tmp_path / "future.sck"
    q.write_bytes(fut)
    with pytest.raises(FormatVersionError):
        QuantKVCache.load(q)


def test_bad_inputs_name_the_argument(rng):
    c = make("int8")
    k, v = kv(rng, 4)
    cases = [
        ((k.astype(np.float64), v), ArgumentTypeError, "k"),
        ((k, v.astype(np.int8)), ArgumentTypeError, "v"),
        ((k[0], v[0]), InvalidArgumentError, "k"),
        ((k[:, :3], v[:, :3]), InvalidArgumentError, "k"),
        ((k[:1], v[:1]), InvalidArgumentError, "k"),
        ((k[..., :32], v[..., :32]), InvalidArgumentError, "k"),
        ((k, v[:, :, :3]), InvalidArgumentError, "v"),
        ((k[..., ::2].repeat(2, -1)[..., ::2], v), InvalidArgumentError, "k"),
        (([1, 2], v), ArgumentTypeError, "k"),
    ]
    for args, exc, name in cases:
        with pytest.raises(exc) as ei:
            c.append(*args)
        assert ei.value.argument == name, args
    bad = k.copy()
    bad[1, 2, 3, 4] = np.inf
    with pytest.raises(NonFiniteError, match=r"\[1, 2, 3, 4\]"):
        c.append(bad, v)
    assert len(c) == 0  # nothing was stored
    for kw, name in [(dict(batch=0), "batch"), (dict(head_dim=True), "head_dim"), (dict(kv_heads=-1), "kv_heads")]:
        with pytest.raises(InvalidArgumentError) as ei:
            make("int8", **kw)
        assert ei.value.argument == name
    with pytest.raises(PolicyError, match="does not divide 80"):
        make("q8_0", head_dim=80)


def test_strided_and_bnhd_inputs_need_no_copy(rng):
    k, v = kv(rng, 10)
    a = make("int8")
    a.append(k, v)
    b = make("int8")
    big = np.zeros((2, 10, 8, 64), np.float32)  # BNHD with extra heads: a strided view
    big[:, :, :4] = k.transpose(0, 2, 1, 3)
    bigv = np.zeros_like(big)
    bigv[:, :, :4] = v.transpose(0, 2, 1, 3)
    b.append(big[:, :, :4], bigv[:, :, :4], layout="BNHD")
    assert all(np.array_equal(x, y) for x, y in zip(state(a), state(b)))


def test_concurrent_appends_are_serialized(rng):
    k, v = kv(rng, 64, B=1, H=2)
    c = QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=4)
    threads = [threading.Thread(target=lambda: [c.append(k[:, :, i:i + 1], v[:, :, i:i + 1]) for i in range(64)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 256
    kd, _ = c.dequantize()
    assert np.isfinite(kd).all()


def test_public_names():
    assert sagecore.QuantKVCache is QuantKVCache
    assert "QuantKVCache" in dir(sagecore)
    with pytest.raises(AttributeError):
        sagecore.nope  # noqa: B018


def test_dlpack_inputs(rng):
    k, v = kv(rng, 20)
    a = make("int8")
    a.append(k, v)
    b = make("int8")
    b.append(DLPackOnly(k), DLPackOnly(v))
    assert all(np.array_equal(x, y) for x, y in zip(state(a), state(b)))
    from sagecore._arrays import as_array
    assert as_array(DLPackOnly(k), "k").ctypes.data == k.ctypes.data  # zero-copy


def test_failed_append_into_an_open_group_is_silent_and_changes_nothing(rng):
    """Out-of-range float32 values entering a partial token group: the error
    names k, numpy emits no overflow warning on the way, and the cache answers
    as before."""
    import warnings
    c = QuantKVCache("int8", batch=1, kv_heads=2, head_dim=64, capacity=256)
    c.append(rng.standard_normal((1, 2, 100, 64)).astype(np.float16),
             rng.standard_normal((1, 2, 100, 64)).astype(np.float16))  # 100 = an open 64-token group
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    before = c.attend(q)
    bad = np.full((1, 2, 5, 64), 1e5, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError, match="^k: "):
            c.append(bad, bad)
    assert len(c) == 100
    np.testing.assert_array_equal(c.attend(q), before)


def test_save_and_load_check_the_path_type(tmp_path):
    c = QuantKVCache("int8", batch=1, kv_heads=1, head_dim=64, capacity=64)
    for bad in (3, None, True, ["a"]):
        with pytest.raises(ArgumentTypeError, match="^path: "):
            c.save(bad)
        with pytest.raises(ArgumentTypeError, match="^path: "):
            QuantKVCache.load(bad)
    c.save(tmp_path / "c.sc")  # os.PathLike
    assert len(QuantKVCache.load(str(tmp_path / "c.sc"))) == 0
