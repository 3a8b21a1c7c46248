"""Metal KV packing kernels (metal/kv_pack.metal) against the C core.

Under the host emulation the packed bytes, scales, minimums and outlier
tables must equal the C core's bitwise, and so must the dequantized values:
the kernels do the same float32 operations in the same order. Every dispatch
runs with the race check (two thread orders, bytewise equal outputs).

On a Mac the same tests run on the GPU. There Metal's float division and
fp16 conversions are not guaranteed to round like the CPU's, so the stated
bound is: codes within 1, scales within 1 fp16 ulp, dequantized values
within one quantization step (not yet run on Apple hardware: no Mac here).
"""
import numpy as np
import pytest

from sagecore import errors, metal
from sagecore.cache import TensorStore
from sagecore.formats import KVFormat
from sagecore.metal import kernels

from test_packing import FORMATS

EXACT = metal.emulated()


def stores(fid, B, H, D, cap, x):
    f = KVFormat.parse(fid)
    a, b = TensorStore(f, B, H, D, cap), TensorStore(f, B, H, D, cap)
    if f.smooth:
        m = x.astype(np.float64).mean(2).reshape(B * H, D)
        a.arrays["mean"][...] = m
        b.arrays["mean"][...] = m
    return a, b


def assert_same_store(a, b):
    for name, arr in a.arrays.items():
        if arr is None or name == "stage":
            continue
        if EXACT:
            np.testing.assert_array_equal(b.arrays[name], arr, err_msg=name)
        elif name == "data":  # pragma: no cover - Apple GPU only
            assert np.abs(b.arrays[name].astype(np.int16) - arr.astype(np.int16)).max() <= 1


@pytest.mark.parametrize("fid", FORMATS + ["fp16"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_quantize_and_dequantize_match_the_c_core(fid, dtype, rng):
    f = KVFormat.parse(fid)
    B, H, D = 1, 2, 64
    T = f.token_group
    N = 2 * T + 3 if T > 1 else 37  # whole groups and a partial one
    cap = -(-N // T) * T + T
    x = (rng.standard_normal((B, H, N, D)) * np.exp(rng.normal(0, 1, (1, 1, 1, D))) + 0.5).astype(dtype)
    a, b = stores(fid, B, H, D, cap, x.astype(np.float16))
    a.packed.quantize(x, 0)
    kernels.quantize(b, x, 0, race_check=True)
    assert_same_store(a, b)
    for odt in (np.float32, np.float16):
        want = np.empty(x.shape, odt)
        got = np.full(x.shape, np.nan, odt)
        a.packed.dequantize(want, 0)
        kernels.dequantize(a, got, 0, race_check=True)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fid", ["int8.t32.g1.s16+smooth", "int4.t1.g32.s16+rot", "int8.t4.g16.s16+out3"])
def test_append_at_an_offset_and_strided_source(fid, rng):
    """Tokens [t0, t0+n) of a store, from a BNHD (strided) source."""
    f = KVFormat.parse(fid)
    B, H, D, T = 2, 3, 128, f.token_group
    t0, n = 2 * T, T + 1
    x = rng.standard_normal((B, n, H, D)).astype(np.float16).transpose(0, 2, 1, 3)  # a strided view
    a, b = stores(fid, B, H, D, 4 * T + T, x)
    a.packed.quantize(np.ascontiguousarray(x), t0)
    kernels.quantize(b, x, t0, race_check=True)
    assert_same_store(a, b)
    out = np.empty((B, n, H, D), np.float32).transpose(0, 2, 1, 3)
    want = np.empty(x.shape, np.float32)
    a.packed.dequantize(want, t0)
    kernels.dequantize(a, out, t0)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("D", [64, 80, 96, 128, 192, 256])
def test_head_dims(D, rng):
    for fid in ("int8.t1.g16.s16+rot", "int4.t8.g1.s32+zp"):
        x = rng.standard_normal((1, 2, 9, D)).astype(np.float16)
        a, b = stores(fid, 1, 2, D, 16, x)
        a.packed.quantize(x, 0)
        kernels.quantize(b, x, 0)
        assert_same_store(a, b)


def test_nonfinite_source_is_a_typed_error():
    fid = "int8.t1.g32.s16"
    x = np.ones((1, 1, 4, 64), np.float32)
    x[0, 0, 2, 5] = 1e6  # beyond fp16
    _, b = stores(fid, 1, 1, 64, 4, x)
    with pytest.raises(errors.NonFiniteError, match="src"):
        kernels.quantize(b, x, 0)
    fp16 = TensorStore(KVFormat.parse("fp16"), 1, 1, 64, 4)
    with pytest.raises(errors.NonFiniteError, match="src"):
        kernels.quantize(fp16, x, 0)
    x[0, 0, 2, 5] = np.nan
    with pytest.raises(errors.NonFiniteError):
        kernels.quantize(b, x.astype(np.float16), 0)


def test_range_beyond_fp16_scales_is_a_typed_error():
    # rotating a constant row puts sqrt(64) x the value in one coordinate: a
    # minimum of -480000 that no fp16 can hold (the C core refuses it too)
    x = np.full((1, 1, 1, 64), -60000, np.float16)
    a, b = stores("int8.t1.g64.s16+rot+zp", 1, 1, 64, 1, x)
    with pytest.raises(errors.NonFiniteError):
        a.packed.quantize(x, 0)
    with pytest.raises(errors.NonFiniteError, match="fp16 scales"):
        kernels.quantize(b, x, 0)


def test_bad_arguments(rng):
    x = rng.standard_normal((1, 2, 4, 64)).astype(np.float16)
    _, b = stores("int8.t4.g32.s16", 1, 2, 64, 8, x)
    with pytest.raises(errors.InvalidArgumentError, match="t0"):
        kernels.quantize(b, x, 2)
    with pytest.raises(errors.InvalidArgumentError, match="src"):
        kernels.quantize(b, x[:, :1], 0)
    with pytest.raises(errors.ArgumentTypeError, match="src"):
        kernels.quantize(b, x.astype(np.float64), 0)


def test_argument_struct_layout_matches_the_kernels():
    dev, lib = metal.device(), metal.library("kv_pack")
    a = np.zeros(1, kernels.ARGS_DTYPE)
    a["stride_b"], a["stride_h"], a["stride_t"] = 1 << 40, 7, 9
    a["heads"], a["n_tokens"], a["rot_block"], a["rot_norm"], a["reserved"] = 3, 11, 64, 0.125, -5
    out = np.zeros(9, np.int64)
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("sc_kv_args_probe", kernels._constants(KVFormat.parse("int8.t1.g32.s16"), True)))
    c.set_buffer(0, dev.wrap(out))
    c.set_bytes(1, a)
    c.dispatch((1, 1, 1), (32, 1, 1))
    c.commit()
    c.wait()
    assert out.tolist() == [kernels.ARGS_DTYPE.itemsize, 1 << 40, 7, 9, 3, 11, 64, 128, -5]


def test_emulation_time_per_dispatch(rng, record_property):
    """Reported so the CI budget stays known: one int8 decode-sized append and
    a 256-token prefill chunk of 8 kv heads at d128."""
    import time
    for n in (1, 256):
        x = rng.standard_normal((1, 8, n, 128)).astype(np.float16)
        _, b = stores("int8.t1.g32.s16", 1, 8, 128, 256, x)
        t0 = time.perf_counter()
        kernels.quantize(b, x, 0)
        record_property(f"quantize_8x{n}x128_seconds", time.perf_counter() - t0)
    assert b.arrays["scales"].any()


def test_library_before_device_in_a_fresh_process():
    """metal.library() first thing in a process once deadlocked on the module
    lock (it creates the device while holding it)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "from sagecore import metal; print(metal.library('kv_pack').functions())"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sc_kv_encode" in r.stdout


def test_read_probe_kernel_sums_its_runs():
    """The bandwidth probe of `bench --backend metal` reads what it should."""
    dev, lib = metal.device(), metal.library("probe")
    x = np.random.default_rng(3).standard_normal(4 * 16 * 64).astype(np.float32)
    out = np.zeros(64, np.float32)
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("sc_read_probe"))
    c.set_buffer(0, dev.wrap(x))
    c.set_buffer(1, dev.wrap(out))
    c.set_bytes(2, np.array([16], np.uint32))
    c.dispatch((1, 1, 1), (64, 1, 1))
    c.commit()
    c.wait()
    np.testing.assert_allclose(out, x.reshape(64, 64).sum(1), rtol=1e-5, atol=1e-5)
