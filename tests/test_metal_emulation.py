"""The Metal shim and its host emulation: one test per emulated feature, one per
error class (each must catch its fault), and the binding's lifetimes.

The feature tests run the same kernels on a Mac's GPU (the shim there is the
Objective-C one); the fault tests need the emulator and skip on a Mac.
"""
import ctypes
import gc
import time
from pathlib import Path

import numpy as np
import pytest

from sagecore import errors, metal

SRC = Path(__file__).parent / "metal" / "emu_selftest.metal"
ARGS = np.dtype([("scale", "<f4"), ("n", "<u4")])


@pytest.fixture(scope="module")
def dev():
    return metal.device()


@pytest.fixture(scope="module")
def lib(dev):
    return dev.library_from_source(SRC.read_text(), name=str(SRC))


emulation_only = pytest.mark.skipif(not metal.emulated(), reason="fault detection is a host-emulation feature")


def run(dev, pipe, buffers, groups, threads, *, tg_mem=None, race=False, bytes_=None):
    c = dev.command_buffer()
    c.set_pipeline(pipe)
    if race and metal.emulated():
        c.set_race_check(True)
    for i, b in buffers.items():
        c.set_buffer(i, b)
    for i, data in (bytes_ or {}).items():
        c.set_bytes(i, data)
    for i, n in (tg_mem or {}).items():
        c.set_threadgroup_memory(i, n)
    c.dispatch(groups, threads)
    c.commit()
    c.wait()
    return c


def test_device_info_and_backend(dev):
    info = dev.info()
    assert info["simd_width"] == 32 and info["max_threads_per_threadgroup"] >= 256
    assert info["emulated"] == metal.emulated()
    assert set(metal.shim().backend_name().split()) <= {"metal", "host-emulation"}


def test_buffer_args_and_zero_copy_wrap(dev, lib):
    x = np.arange(100, dtype=np.float32)
    y = np.zeros(100, np.float32)
    bx, by = dev.wrap(x), dev.wrap(y)
    assert bx.address == x.ctypes.data and not bx.copied  # zero copy
    run(dev, lib.pipeline("scale"), {0: bx, 1: by}, (4, 1, 1), (32, 1, 1),
        bytes_={2: np.array([(2.0, 100)], ARGS)})
    np.testing.assert_array_equal(y, 2 * x)


def test_function_constants_are_per_pipeline_and_cached(dev, lib):
    before = lib.pipelines_created
    p1 = lib.pipeline("with_constants", {0: True, 1: 0.5})
    p2 = lib.pipeline("with_constants", {0: False, 1: 2.0})
    assert lib.pipeline("with_constants", {1: 0.5, 0: True}) == p1  # cache hit, order-independent
    assert lib.pipelines_created == before + 2
    assert "c0=1" in p1.name and "c1=0.5" in p1.name
    for p, extra in ((p1, 1.5), (p2, 2.0)):
        y = np.zeros(32, np.float32)
        run(dev, p, {0: dev.wrap(y)}, (1, 1, 1), (32, 1, 1))
        np.testing.assert_array_equal(y, np.arange(32) + extra)


def test_missing_function_constant_is_an_error(dev, lib):
    y = np.zeros(32, np.float32)
    with pytest.raises(errors.MetalExecutionError, match="function constant 0"):
        run(dev, lib.pipeline("with_constants"), {0: dev.wrap(y)}, (1, 1, 1), (32, 1, 1))


def test_threadgroup_barriers_and_memory(dev, lib):
    x = np.random.default_rng(0).standard_normal(4 * 256).astype(np.float32)
    out = np.zeros(4, np.float32)
    run(dev, lib.pipeline("tg_sum"), {0: dev.wrap(x), 1: dev.wrap(out)}, (4, 1, 1), (256, 1, 1),
        tg_mem={0: 256 * 4}, race=True)
    np.testing.assert_allclose(out, x.reshape(4, 256).sum(1), rtol=1e-5)


@emulation_only
def test_race_check_finds_a_missing_barrier(dev, lib):
    x = np.random.default_rng(1).standard_normal(256).astype(np.float32)
    out = np.zeros(1, np.float32)
    with pytest.raises(errors.MetalExecutionError, match="race in tg_sum_racy.*buffer\\(1\\)"):
        run(dev, lib.pipeline("tg_sum_racy"), {0: dev.wrap(x), 1: dev.wrap(out)}, (1, 1, 1), (256, 1, 1),
            tg_mem={0: 1024}, race=True)


def test_simd_functions(dev, lib):
    n = 64 + 16  # a partial last simdgroup: 16 active lanes
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    out = np.zeros((n, 8), np.float32)
    run(dev, lib.pipeline("simd_ops"), {0: dev.wrap(x), 1: dev.wrap(out)}, (1, 1, 1), (n, 1, 1), race=True)
    for g0 in range(0, n, 32):
        v = x[g0:g0 + 32]
        k = len(v)
        o = out[g0:g0 + k]
        lanes = np.arange(k)
        np.testing.assert_allclose(o[:, 0], np.float32(v.astype(np.float64).sum()), rtol=1e-5)
        assert (o[:, 1] == v.max()).all() and (o[:, 2] == v.min()).all()
        np.testing.assert_allclose(o[:, 3], np.concatenate([[0], np.cumsum(v)[:-1]]), rtol=1e-5, atol=1e-5)
        src = (lanes + 5) % 32
        np.testing.assert_array_equal(o[:, 4], np.where(src < k, v[np.minimum(src, k - 1)], 0))
        np.testing.assert_array_equal(o[:, 5], v[lanes ^ 3] if k == 32 else np.where((lanes ^ 3) < k, v[np.minimum(lanes ^ 3, k - 1)], 0))
        down = np.where(lanes + 4 < 32, np.where(lanes + 4 < k, v[np.minimum(lanes + 4, k - 1)], 0), v)
        np.testing.assert_array_equal(o[:, 6], down)
        assert (o[:, 7] == v[7]).all()


def test_vectors_half_as_type(dev, lib):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    h = rng.standard_normal(32).astype(np.float16)
    y = np.zeros((16, 4), np.float32)
    bits = np.zeros(16, np.uint32)
    run(dev, lib.pipeline("vectors"), {0: dev.wrap(x), 1: dev.wrap(y), 2: dev.wrap(h), 3: dev.wrap(bits)},
        (1, 1, 1), (16, 1, 1))
    hf = h.astype(np.float32).reshape(16, 2)
    want = np.stack([(x[:, :3] ** 2).sum(1), np.exp2(x[:, 3]), hf[:, 0] * hf[:, 1], x[:, :2].max(1)], 1) + 1
    np.testing.assert_allclose(y, want, rtol=1e-5)
    np.testing.assert_array_equal(bits, x[:, 0].view(np.uint32))


def test_simdgroup_matrix_multiply_accumulate(dev, lib):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 8, 8)).astype(np.float32)
    b = rng.standard_normal((2, 8, 8)).astype(np.float16)
    c = np.zeros((2, 8, 8), np.float32)
    run(dev, lib.pipeline("mma8"), {0: dev.wrap(a), 1: dev.wrap(b), 2: dev.wrap(c)}, (1, 1, 1), (64, 1, 1),
        race=True)
    # B was loaded transposed
    want = a @ b.astype(np.float32).transpose(0, 2, 1) + 0.5
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)


def test_threadgroup_size_is_checked_not_clamped(dev, lib):
    p = lib.pipeline("big_threadgroup")
    c = dev.command_buffer()
    c.set_pipeline(p)
    c.set_buffer(0, dev.buffer(4 * 2048))
    c.set_threadgroup_memory(0, 4096)
    with pytest.raises(errors.MetalLimitError, match="over the pipeline's maximum"):
        c.dispatch((1, 1, 1), (p.max_threads + 1, 1, 1))


def test_threadgroup_memory_over_the_device_limit(dev, lib):
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("big_threadgroup"))
    with pytest.raises(errors.MetalLimitError, match="threadgroup memory"):
        c.set_threadgroup_memory(0, dev.info()["max_threadgroup_memory"] + 16)


def test_unbound_and_too_small_buffers(dev, lib):
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("uses_args"))
    c.set_buffer(0, dev.buffer(128))
    with pytest.raises(errors.InvalidArgumentError, match="buffer\\(1\\) 'args' is not bound"):
        c.dispatch((1, 1, 1), (32, 1, 1))
    c.set_bytes(1, np.zeros(1, np.float32))  # 4 bytes, the struct has 8
    with pytest.raises(errors.InvalidArgumentError, match="smaller than its type"):
        c.dispatch((1, 1, 1), (32, 1, 1))


@emulation_only
def test_out_of_bounds_access_names_thread_and_line(dev, lib):
    buf = dev.buffer(4 * 64)
    with pytest.raises(errors.MetalExecutionError, match=r"out-of-bounds.*out_of_bounds.*thread.*emu_selftest.metal:\d+"):
        run(dev, lib.pipeline("out_of_bounds"), {0: buf}, (1, 1, 1), (32, 1, 1))
    # the process and the device stay usable
    test_buffer_args_and_zero_copy_wrap(dev, lib)


@emulation_only
def test_divergent_barrier_names_both_sites(dev, lib):
    with pytest.raises(errors.MetalExecutionError, match=r"threadgroup_barrier divergence.*emu_selftest.metal:\d+"):
        run(dev, lib.pipeline("divergent_barrier"), {0: dev.buffer(4 * 64)}, (1, 1, 1), (32, 1, 1))


@emulation_only
def test_barrier_missed_by_a_returned_thread_is_a_deadlock(dev, lib):
    with pytest.raises(errors.MetalExecutionError, match=r"deadlock.*returned without reaching it"):
        run(dev, lib.pipeline("early_return_barrier"), {0: dev.buffer(4 * 64)}, (1, 1, 1), (32, 1, 1))


@emulation_only
def test_divergent_simd_collective(dev, lib):
    with pytest.raises(errors.MetalExecutionError, match=r"SIMD-group divergence"):
        run(dev, lib.pipeline("divergent_simd"), {0: dev.buffer(4 * 64)}, (1, 1, 1), (32, 1, 1))


def test_compile_error_carries_the_log(dev):
    with pytest.raises(errors.MetalCompileError) as e:
        dev.library_from_source("kernel void k(device float *y [[buffer(0)]]) { y[0] = undefined_name; }",
                                name="broken.metal")
    assert "undefined_name" in e.value.log


def test_unsupported_attribute_is_a_compile_error(dev):
    with pytest.raises(errors.MetalCompileError, match="not supported by the host emulation|attribute"):
        dev.library_from_source("kernel void k(device float *y [[buffer(0)]], float4 c [[color(0)]]) {}",
                                name="attr.metal")


def test_unknown_function(lib):
    with pytest.raises(errors.MetalFunctionNotFoundError, match="no kernel 'nope'.*scale"):
        lib.pipeline("nope")


def test_wrap_keeps_the_source_alive_and_buffer_protocol(dev):
    x = np.arange(1024, dtype=np.float32)
    addr = x.ctypes.data
    b = dev.wrap(x)
    del x
    gc.collect()
    assert b.address == addr
    view = b.numpy(np.float32)
    del b
    gc.collect()
    np.testing.assert_array_equal(view, np.arange(1024))  # the view keeps the buffer, the buffer the array
    ro = np.arange(8, dtype=np.float32)
    ro.flags.writeable = False
    rb = dev.wrap(ro)
    assert memoryview(rb).readonly
    with pytest.raises((BufferError, TypeError), match="read-only|not writable"):
        (ctypes.c_char * 32).from_buffer(rb)  # needs a writable buffer


def test_allocated_buffer_is_zeroed_and_writable(dev):
    b = dev.buffer(1000)
    a = b.numpy(np.uint8)
    assert a.shape == (1000,) and not a.any()
    a[:] = 7
    assert bytes(memoryview(b))[:3] == b"\x07\x07\x07"


def test_emulation_time_per_dispatch_is_reported(dev, lib, record_property):
    x = np.random.default_rng(5).standard_normal(64 * 256).astype(np.float32)
    out = np.zeros(64, np.float32)
    t0 = time.perf_counter()
    c = run(dev, lib.pipeline("tg_sum"), {0: dev.wrap(x), 1: dev.wrap(out)}, (64, 1, 1), (256, 1, 1),
            tg_mem={0: 1024})
    wall = time.perf_counter() - t0
    record_property("tg_sum_64x256_seconds", wall)
    assert 0 < c.gpu_time() <= wall
    np.testing.assert_allclose(out, x.reshape(64, 256).sum(1), rtol=1e-4)


def test_more_features(dev, lib):
    n = 64
    x = np.linspace(-2, 2, n).astype(np.float32)
    out = np.zeros((n, 16), np.float32)
    pad = np.zeros(16, np.float32)  # two Padded structs: float3 (16 bytes) + tail, padded to 32 bytes
    pad[8 + 2], pad[8 + 4] = 3.0, 4.0  # pad[1].p.z, pad[1].tail
    p = lib.pipeline("more_features", {2: -4, 3: (7, "uint"), 4: 0.25, 5: (9, "ushort")})
    run(dev, p, {0: dev.wrap(x), 1: dev.wrap(out), 2: dev.wrap(pad)}, (2, 1, 1), (32, 1, 1), race=True)
    for g0 in (0, 32):
        v = x[g0:g0 + 32]
        o = out[g0:g0 + 32]
        np.testing.assert_allclose(o[:, 0], np.cumsum(v), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(o[:, 1], np.concatenate([v[:2], v[:-2]]))
        assert (o[:, 2] == 1).all() and (o[:, 3] == float((v > 1.5).any())).all()
        assert (o[:, 4] == v[0]).all()
    assert (out[:, 5] == -4 + 7 + 0.25 + 9).all()
    np.testing.assert_allclose(out[:, 6], np.clip(x, -1, 1) + 1 - 1 + 0.5, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 7], np.where(x > 0, 2.0, 1.0))
    np.testing.assert_allclose(out[:, 8], np.sqrt(np.abs(x)) + 1, rtol=1e-6)
    assert (out[:, 9] == 3.0).all() and (out[:, 10] == 7.0).all() and (out[:, 11] == 32).all()
    np.testing.assert_array_equal(out[:, 12], np.arange(n) % 32)
    assert (out[:, 13] == 1 * 100 + 2 * 10 + 1).all()
    assert (out[:, 14] == 3 - 1 + 1 + 4).all() and (out[:, 15] == 1).all()


@emulation_only
def test_threadgroup_memory_overrun_is_caught(dev, lib):
    with pytest.raises(errors.MetalExecutionError, match="out-of-bounds.*tg_out_of_bounds"):
        run(dev, lib.pipeline("tg_out_of_bounds"), {0: dev.buffer(4 * 32)}, (1, 1, 1), (32, 1, 1),
            tg_mem={0: 128})


def test_threadgroup_parameter_without_memory_is_an_error(dev, lib):
    c = dev.command_buffer()
    c.set_pipeline(lib.pipeline("tg_out_of_bounds"))
    c.set_buffer(0, dev.buffer(128))
    with pytest.raises(errors.InvalidArgumentError, match="threadgroup\\(0\\) 'shm' has no memory length"):
        c.dispatch((1, 1, 1), (32, 1, 1))


@emulation_only
def test_threadgroups_spread_over_host_threads_agree(lib):
    from sagecore import _metal
    outs = []
    for threads in (1, 2):
        d = _metal.Device()
        d.set_host_threads(threads)
        y = np.zeros(200 * 64, np.uint32)
        run(d, lib.pipeline("many_groups"), {0: d.wrap(y)}, (200, 1, 1), (64, 1, 1), tg_mem={0: 256})
        outs.append(y)
    np.testing.assert_array_equal(outs[0], outs[1])
    want = (np.arange(200)[:, None] * 1000 + 63 - np.arange(64)[None, :]).ravel()
    np.testing.assert_array_equal(outs[0], want)


def test_dlpack_source_is_wrapped_without_copy(dev):
    from helpers import DLPackOnly
    x = np.arange(256, dtype=np.float32)
    b = dev.wrap(DLPackOnly(x))
    assert b.address == x.ctypes.data and b.nbytes == x.nbytes


def test_page_aligned_arrays_for_zero_copy(dev):
    import mmap
    a = metal.empty_aligned((3, 1000), np.float16)
    assert a.ctypes.data % mmap.PAGESIZE == 0 and a.shape == (3, 1000) and a.dtype == np.float16
    b = dev.wrap(a)
    assert b.address == a.ctypes.data and b.offset == 0 and not b.copied


def test_metal_errors_pickle():
    import pickle
    e = errors.MetalCompileError("compiling x failed", log="x.metal:3: error: boom")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is errors.MetalCompileError and e2.log == e.log and str(e2) == str(e)
    assert isinstance(errors.MetalLimitError("x"), ValueError)


@pytest.mark.skipif(metal.emulated(), reason="needs macOS with an Apple GPU (runs there, not in Linux CI)")
def test_real_gpu_reports_an_apple_family(dev):  # pragma: no cover - Apple hardware only
    info = dev.info()
    assert info["gpu_family"] >= 7 and not info["emulated"] and info["unified_memory"]


def test_swizzles(dev, lib):
    v = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    out = np.zeros((2, 8), np.float32)
    run(dev, lib.pipeline("swizzles"), {0: dev.wrap(v), 1: dev.wrap(out)}, (1, 1, 1), (2, 1, 1))
    for i in range(2):
        x, y, z, w = v[i]
        # after a.zw = (x, 10): a = (x, y, x, 10); then a.xy = a.yz = (y, x)
        assert out[i].tolist() == [x + z, y + w, 2 * (x + y + z), y, x, x, 10, 10]
