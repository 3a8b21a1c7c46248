"""Quantize/dequantize of every format: error bounds, ISA parity, properties."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagecore import _cpu
from sagecore.cache import TensorStore
from sagecore.errors import NonFiniteError
from sagecore.formats import KVFormat

FORMATS = ["int8.t1.g32.s16", "int8.t1.g16.s32", "int8.t32.g1.s16+smooth", "int8.t64.gD.s16+smooth",
           "int8.t8.g16.s16+zp", "int8.t4.g16.s16+out3", "int4.t1.g32.s16", "int4.t64.g1.s16+zp+smooth",
           "int4.t1.g16.s16+out2", "int4.t16.gD.s32+zp+out1", "int8.t1.g32.s16+rot",
           "int4.t1.g32.s16+rot", "int8.t32.g1.s16+smooth+rot", "int8.t16.g1.s32+zp", "int4.t1.g16.s16",
           "int4.t64.g1.s16+zp+smooth+k16", "int4.t16.g32.s16+out2+k16", "int8.t32.g1.s16+smooth+k16",
           "int8.t16.g16.s32+zp+k16", "int8.t1.gD.s16+rot", "int4.t1.gD.s16+rot", "int8.t1.g32.s32+smooth+rot"]
# the rotated per-token formats also at the other head dims: AVX-512 encodes them in registers
# (quant_rot_tokens) at every one of these, and must store the portable path's bytes
ROT_DIMS = (32, 80, 192, 256)


def pack(fid, x, mean=None):
    f = KVFormat.parse(fid)
    B, H, N, D = x.shape
    cap = -(-N // f.token_group) * f.token_group
    st = TensorStore(f, B, H, D, cap)
    if f.smooth:
        st.arrays["mean"][...] = (mean if mean is not None else x.astype(np.float64).mean(2)).reshape(B * H, D)
    st.packed.quantize(x, 0)
    out = np.empty(x.shape, np.float32)
    st.packed.dequantize(out, 0)
    return st, out


def element_scale(st, N):
    """Per-element scale [rows, N, D] from the store's scale grid."""
    f, T, G = st.fmt, st.T, st.G
    s = st.arrays["scales"].astype(np.float32)
    s = np.repeat(np.repeat(s, T, axis=1)[:, :N], G, axis=2)
    return s


def outlier_mask(st, N):
    f, T, G, D = st.fmt, st.T, st.G, st.head_dim
    mask = np.zeros((st.rows, N, D), bool)
    if not f.outliers:
        return mask
    idx = st.arrays["out_idx"]
    for r, g, c, j in np.ndindex(idx.shape):
        p = int(idx[r, g, c, j])
        if p != 0xFFFF and g * T + p // G < N:
            mask[r, g * T + p // G, c * G + p % G] = True
    return mask


@pytest.mark.parametrize("fid", FORMATS)
@pytest.mark.parametrize("N", [1, 37, 130])
def test_error_bound(fid, N, rng):
    D = 64
    x = (rng.standard_normal((2, 2, N, D)) * np.exp(rng.normal(0, 1, (1, 1, 1, D))) + 3.0).astype(np.float16)
    st, out = pack(fid, x)
    x32 = x.astype(np.float32).reshape(st.rows, N, D)
    err = np.abs(out.reshape(st.rows, N, D) - x32)
    s = element_scale(st, N)
    om = outlier_mask(st, N)
    if st.fmt.rotate:
        # rotation is orthonormal: bound the per-token L2 error by the cells' bound
        bound = np.sqrt(((s / 2) ** 2 * ~om).sum(-1)) * (1 + 1e-4) + 1e-3
        assert np.all(np.sqrt((err ** 2).sum(-1)) <= bound)
    else:
        tol = 1e-5 * np.abs(x32) + 1e-6
        assert np.all(err[~om] <= (s / 2)[~om] * (1 + 1e-6) + tol[~om]), np.max(err - s / 2)
        # outliers come back as stored fp16 values: exact up to fp16 rounding of x - mean
        assert np.all(err[om] <= np.abs(x32[om]) * 2 ** -10 + 1e-3)


@pytest.mark.parametrize("fid,D", [(f, d) for f in FORMATS
                                   for d in (64, 96, 128) + (ROT_DIMS if KVFormat.parse(f).rotate else ())
                                   if d % KVFormat.parse(f).resolved_channel_group(d) == 0])
def test_isa_paths_match_portable_bitwise(fid, D, rng, isa):
    x = (rng.standard_normal((1, 3, 70, D)) * np.exp(rng.normal(0, 2, (1, 3, 70, 1)))).astype(np.float32)
    st, out = pack(fid, x)
    _cpu.set_isa("portable")
    st2, out2 = pack(fid, x)
    for name, a in st.arrays.items():
        if a is not None:
            assert np.array_equal(a, st2.arrays[name]), (isa, name)
    assert np.array_equal(out, out2)


@pytest.mark.parametrize("fid", FORMATS)
def test_fp32_and_fp16_inputs_store_the_same_bytes(fid, rng):
    x16 = (rng.standard_normal((1, 2, 40, 64)) * 7).astype(np.float16)
    a, _ = pack(fid, x16)
    b, _ = pack(fid, x16.astype(np.float32))
    for name in ("data", "scales", "zeros", "out_idx", "out_val"):
        if a.arrays[name] is not None:
            assert np.array_equal(a.arrays[name], b.arrays[name])


@pytest.mark.parametrize("fid", ["int8.t1.g32.s16", "int4.t1.g32.s16", "int8.t32.g1.s16+smooth",
                                 "int4.t64.g1.s16+zp+smooth", "int8.t1.g16.s32", "int8.t4.g16.s16+out1",
                                 "int4.t1.g32.s16+rot", "int8.t1.gD.s16+rot"])
@pytest.mark.parametrize("D", [64, 128, 96])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 70000.0])
def test_nonfinite_found_by_every_path(fid, D, dtype, bad, isa):
    """The fused kernels validate while loading; every path must name the element."""
    if dtype == np.float16 and bad == 70000.0:
        bad = np.inf  # not representable in fp16 anyway
    x = np.ones((1, 2, 70, D), np.float32)
    x[0, 1, 67, D - 3] = bad
    with pytest.raises(NonFiniteError, match=rf"\[0, 1, 67, {D - 3}\]"):
        pack(fid, x.astype(dtype))


def test_nonfinite_rejected():
    x = np.ones((1, 1, 4, 32), np.float32)
    x[0, 0, 2, 5] = np.nan
    with pytest.raises(NonFiniteError, match=r"\[0, 0, 2, 5\]"):
        pack("int8.t1.g32.s16", x)
    x[0, 0, 2, 5] = 70000.0
    with pytest.raises(NonFiniteError, match="float16 range"):
        pack("int8.t1.g32.s16", x)


def test_rotation_is_bitwise_equal_on_every_isa(rng, isa):
    x = rng.standard_normal((7, 256)).astype(np.float32)
    for d in (32, 64, 80, 96, 128, 192, 256):
        y = np.ascontiguousarray(x[:, :d])
        _cpu.rotate(y)
        _cpu.set_isa("portable")
        z = np.ascontiguousarray(x[:, :d])
        _cpu.rotate(z)
        _cpu.set_isa(isa)
        assert np.array_equal(y, z), d


def test_rotation_is_orthonormal_and_self_inverse(rng):
    for d in (32, 64, 80, 96, 128, 192, 256):
        x = rng.standard_normal((5, d)).astype(np.float32)
        y = x.copy()
        _cpu.rotate(y)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
        _cpu.rotate(y)
        np.testing.assert_allclose(y, x, atol=1e-5)


values = st.one_of(
    st.just(0.0), st.just(1.0), st.just(-65504.0), st.just(65504.0), st.just(6e-8),
    st.floats(-1000, 1000, allow_nan=False, width=16))


@settings(max_examples=60, deadline=None)
@given(fid=st.sampled_from(FORMATS), n=st.integers(1, 70), fill=values, noise=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_property_bounds_and_finiteness(fid, n, fill, noise, seed):
    rng = np.random.default_rng(seed)
    x = np.full((1, 2, n, 32), fill, np.float32)
    if noise:
        x += rng.standard_normal(x.shape).astype(np.float32) * max(1.0, abs(fill) * 0.01)
    x = np.clip(x, -65504, 65504).astype(np.float16)
    f = KVFormat.parse(fid)
    if f.channel_group > 32:
        return
    st_, out = pack(fid, x)
    assert np.isfinite(out).all()
    x32 = x.astype(np.float32)
    if not f.rotate and not f.outliers and not f.smooth:
        s = element_scale(st_, n).reshape(x.shape)
        assert np.all(np.abs(out - x32) <= s / 2 * (1 + 1e-6) + 1e-5 * np.abs(x32) + 1e-6)
    # constant blocks with symmetric codes come back (almost) exactly
    if not noise and not f.rotate and not f.smooth and not f.zero_point and fill != 0:
        assert np.allclose(out, x32, rtol=2 ** -7)


@pytest.mark.parametrize("fid", ["int8.t16.g1.s16+out4", "int4.t8.g1.s16+out5", "int8.t8.g2.s32+zp+out9"])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_partial_group_with_fewer_positions_than_outliers(fid, N, rng):
    """A partial token group whose cells hold fewer values than k (here nt*G < k)
    once made the packer write through slot index 0xFFFF (a segfault). Every
    position is then an outlier: the round trip is exact and the spare slots
    stay unused."""
    D = 32
    x = rng.standard_normal((1, 3, N, D)).astype(np.float16)
    st, out = pack(fid, x)
    np.testing.assert_array_equal(out, x.astype(np.float32))
    f = KVFormat.parse(fid)
    G = f.channel_group
    idx = st.arrays["out_idx"][:, 0]  # the first (partial) group: [rows, cells, k]
    assert (idx[..., : N * G] != 0xFFFF).all() and (idx[..., N * G:] == 0xFFFF).all()
