import pickle

import pytest

from sagecore.errors import FormatError, FormatVersionError, InvalidArgumentError
from sagecore.formats import FORMAT_VERSION, HEADER_SIZE, KVFormat

IDS = ["fp16", "int8.t1.g32.s16", "int8.t64.gD.s32+smooth", "int8.t32.g1.s16+zp+smooth+rot+out2",
       "int4.t1.g32.s16+rot", "int4.t64.g1.s16+zp+smooth", "int4.t4.g8.s32+out3"]


@pytest.mark.parametrize("fid", IDS)
def test_round_trips(fid):
    f = KVFormat.parse(fid)
    assert f.format_id == fid
    b = f.to_bytes()
    assert len(b) == HEADER_SIZE and b[:4] == b"SCKF"
    assert KVFormat.from_bytes(b) == f
    assert KVFormat.from_json(f.to_json()) == f
    assert pickle.loads(pickle.dumps(f)) == f
    assert hash(KVFormat.from_bytes(b)) == hash(f)


def test_immutable_and_hashable():
    f = KVFormat("int8", token_group=64, channel_group=0, smooth=True)
    with pytest.raises(AttributeError):
        f.token_group = 3
    assert len({f, KVFormat.parse(f.format_id), KVFormat("int8")}) == 2
    assert f.replace(smooth=False) != f


def test_corrupt_header_rejected():
    b = bytearray(KVFormat.parse("int8.t1.g32.s16").to_bytes())
    b[8] ^= 1
    with pytest.raises(FormatError, match="checksum"):
        KVFormat.from_bytes(bytes(b))
    with pytest.raises(FormatError, match="truncated"):
        KVFormat.from_bytes(b[:10])
    with pytest.raises(FormatError, match="magic"):
        KVFormat.from_bytes(b"XXXX" + bytes(b[4:]))


def test_newer_version_rejected():
    import struct
    from binascii import crc32
    body = struct.pack("<4sHBBHHBBH", b"SCKF", FORMAT_VERSION + 1, 2, 0, 1, 32, 0, 0, 0)
    with pytest.raises(FormatVersionError, match="version"):
        KVFormat.from_bytes(body + struct.pack("<I", crc32(body)))
    d = KVFormat("int8").to_dict()
    d["version"] = FORMAT_VERSION + 1
    with pytest.raises(FormatVersionError):
        KVFormat.from_dict(d)
    with pytest.raises(FormatVersionError):
        KVFormat("int8", version=FORMAT_VERSION + 1)


def test_json_tampering_rejected():
    d = KVFormat("int8").to_dict()
    d["token_group"] = 2
    with pytest.raises(FormatError, match="checksum"):
        KVFormat.from_dict(d)
    d = KVFormat("int8").to_dict()
    d["extra"] = 1
    with pytest.raises(FormatError, match="unknown"):
        KVFormat.from_dict(d)
    with pytest.raises(FormatError, match="JSON"):
        KVFormat.from_json("{")


@pytest.mark.parametrize("kw,arg", [
    (dict(encoding="int3"), "encoding"),
    (dict(encoding="int8", token_group=0), "token_group"),
    (dict(encoding="int8", token_group=2000), "token_group"),
    (dict(encoding="int8", channel_group=-1), "channel_group"),
    (dict(encoding="int8", scale_dtype="bf16"), "scale_dtype"),
    (dict(encoding="int8", outliers=17), "outliers"),
    (dict(encoding="int8", token_group=1, channel_group=2, outliers=2), "outliers"),
    (dict(encoding="fp16", smooth=True), "encoding"),
    (dict(encoding="int8", token_group=1.5), "token_group"),
])
def test_bad_arguments_name_the_argument(kw, arg):
    enc = kw.pop("encoding")
    with pytest.raises(InvalidArgumentError) as ei:
        KVFormat(enc, **kw)
    assert ei.value.argument == arg


def test_parse_rejects_garbage():
    for bad in ["", "int8", "int8.t1.g32", "int8.tx.g32.s16", "int8.t1.g32.s16+bogus", "int9.t1.g32.s16"]:
        with pytest.raises(InvalidArgumentError):
            KVFormat.parse(bad)


def test_head_dim_checks_and_bits():
    f = KVFormat.parse("int8.t1.g32.s16")
    with pytest.raises(InvalidArgumentError, match="does not divide 80"):
        f.check_head_dim(80)
    f.check_head_dim(128)
    assert f.bits_per_element(128) == 8.5
    assert KVFormat.parse("int4.t64.g1.s16+zp").bits_per_element(128) == 4.5
    assert KVFormat("fp16").bits_per_element(64) == 16
