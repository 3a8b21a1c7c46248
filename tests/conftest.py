import numpy as np
import pytest

from sagecore import _cpu


@pytest.fixture(params=_cpu.supported_isas())
def isa(request):
    """Run a test once per ISA path this CPU supports, restoring the best one after."""
    best = _cpu.supported_isas()[-1]
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa(best)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
