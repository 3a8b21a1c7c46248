"""Typed exceptions raised by sagecore.

Every error that comes from bad input names the argument (or policy key) and
what was expected. The classes also derive from the closest built-in exception
(``ValueError``, ``TypeError``, ...) so generic handlers keep working, and they
pickle (for multiprocessing) with their extra attributes intact.
"""

from __future__ import annotations

__all__ = [
    "SagecoreError",
    "InvalidArgumentError",
    "ArgumentTypeError",
    "NonFiniteError",
    "FormatError",
    "FormatVersionError",
    "PolicyError",
    "CorruptFileError",
    "UnsupportedError",
    "NoBackendError",
    "MetalError",
    "MetalUnavailableError",
    "MetalCompileError",
    "MetalFunctionNotFoundError",
    "MetalLimitError",
    "MetalExecutionError",
]


class SagecoreError(Exception):
    """Base class of every sagecore exception."""

    def __reduce__(self):
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


def _rebuild(cls, args, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class InvalidArgumentError(SagecoreError, ValueError):
    """An argument has the wrong value, shape or layout.

    ``argument`` is the parameter's name (``"k"``, ``"head_dim"``, ...).
    """

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


class ArgumentTypeError(SagecoreError, TypeError):
    """An argument has the wrong type (or dtype)."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


class NonFiniteError(InvalidArgumentError):
    """An input holds NaN, an infinity, or a value outside the float16 range."""


class FormatError(SagecoreError, ValueError):
    """A format descriptor (binary header or JSON) is malformed."""


class FormatVersionError(FormatError):
    """A descriptor or file was written by an unknown or newer format version."""


class PolicyError(SagecoreError, ValueError):
    """A policy is invalid. ``source`` is the file (or "<dict>"), ``key`` the dotted key."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}")
        self.source = source
        self.key = key


class CorruptFileError(SagecoreError, ValueError):
    """A saved cache is truncated, corrupted or not a sagecore file."""


class UnsupportedError(SagecoreError, NotImplementedError):
    """A valid request that this build, CPU or device cannot serve."""


class NoBackendError(UnsupportedError):
    """No backend accepted a request. ``reasons`` maps backend name to why it declined."""

    def __init__(self, message: str, reasons: dict | None = None):
        reasons = dict(reasons or {})
        detail = "".join(f"\n  - {name}: {why}" for name, why in reasons.items())
        super().__init__(message + detail)
        self.reasons = reasons


class MetalError(SagecoreError, RuntimeError):
    """A Metal shim call failed (objc_shim/sagecore_metal.h status codes)."""


class MetalUnavailableError(MetalError, UnsupportedError):
    """No Metal device or toolchain (SC_MTL_ERR_UNAVAILABLE)."""


class MetalCompileError(MetalError):
    """A Metal library did not compile. ``log`` holds the compiler's full output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


class MetalFunctionNotFoundError(MetalError, LookupError):
    """The library has no kernel of that name (SC_MTL_ERR_NOT_FOUND)."""


class MetalLimitError(MetalError, ValueError):
    """A threadgroup size or memory request over the pipeline's or device's limit."""


class MetalExecutionError(MetalError):
    """A dispatch failed: in the host emulation an out-of-bounds access, a barrier
    or SIMD-group collective not reached by every thread, a deadlock, or a race
    found by the race check; the message names the thread and source line."""
