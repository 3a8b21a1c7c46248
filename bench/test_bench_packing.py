"""Packing throughput next to memcpy, one core, measured in the same run.

Compares: quantizing 8 MiB of fp16 K/V into each built-in format (GB/s of
input) against np.copyto of the same bytes (the machine's copy bandwidth).
Run: python -m pytest bench/ --benchmark-only --benchmark-group-by=group
"""
import numpy as np
import pytest

from sagecore import _cpu
from sagecore.cache import TensorStore
from sagecore.formats import KVFormat

FORMATS = ["int8.t1.g32.s16", "int8.t32.g1.s16+smooth", "int4.t64.g1.s16+zp+smooth",
           "int4.t1.g32.s16+rot", "int4.t1.g32.s16", "fp16"]


def gbps(benchmark, nbytes):
    """GB/s of input from the best round (nothing under --benchmark-disable,
    where the function ran once and there are no stats)."""
    if benchmark.stats is not None:
        benchmark.extra_info["GB/s"] = nbytes / benchmark.stats["min"] / 1e9


@pytest.fixture(autouse=True)
def one_thread():
    n = _cpu.get_num_threads()
    _cpu.set_num_threads(1)
    yield
    _cpu.set_num_threads(n)


@pytest.mark.benchmark(group="pack-8MiB")
def test_memcpy(benchmark, kv16):
    dst = np.empty_like(kv16)
    benchmark(np.copyto, dst, kv16)
    gbps(benchmark, kv16.nbytes)


@pytest.mark.benchmark(group="pack-8MiB")
@pytest.mark.parametrize("fid", FORMATS)
@pytest.mark.parametrize("isa", ["portable", "best"])
def test_quantize(benchmark, kv16, fid, isa):
    _cpu.set_isa(_cpu.supported_isas()[-1] if isa == "best" else "portable")
    f = KVFormat.parse(fid) if fid != "fp16" else KVFormat("fp16")
    st = TensorStore(f, 1, 8, 128, 4096)
    benchmark(st.packed.quantize, kv16, 0)
    gbps(benchmark, kv16.nbytes)
    _cpu.set_isa(_cpu.supported_isas()[-1])
