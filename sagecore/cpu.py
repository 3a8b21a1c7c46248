"""Process-wide settings of the CPU backend: its thread count and ISA level.

    sagecore.set_num_threads(4)     # OpenMP threads of the C kernels; 0 = all cores
    sagecore.get_num_threads()

The ISA level is picked at run time (``python -m sagecore info`` shows it);
``SAGECORE_ISA`` caps it for the process (read once, when the compiled core
first loads) and is checked here: a name this CPU cannot run is an error at
the first attention call, not a silent run of another path.
"""

from __future__ import annotations

import numbers
import os

from sagecore.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["set_num_threads", "get_num_threads", "check_isa_env"]


def set_num_threads(n: int) -> None:
    """Threads the CPU kernels use from the next call on; 0 restores the
    default (OpenMP's, normally all cores; ``OMP_NUM_THREADS`` sets it)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):  # numpy integers are Integral
        raise ArgumentTypeError("n", f"expected an integer, got {type(n).__name__}")
    if n < 0 or n > 4096:
        raise InvalidArgumentError("n", f"expected 0 (the default) to 4096 threads, got {n}")
    from sagecore import _cpu
    _cpu.set_num_threads(int(n))


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    from sagecore import _cpu
    return _cpu.get_num_threads()


def check_isa_env(environ=os.environ) -> None:
    """InvalidArgumentError if ``SAGECORE_ISA`` names no ISA level this CPU runs
    (the C core ignores such a name and runs its best level)."""
    want = environ.get("SAGECORE_ISA", "")
    if not want:
        return
    from sagecore import _cpu
    usable = _cpu.supported_isas()
    if want not in usable:
        raise InvalidArgumentError("SAGECORE_ISA", f"expected one of the levels this CPU runs {usable}, got {want!r}")
