"""The Metal backend's Python layer: device, libraries and kernels.

On macOS ``sagecore._metal`` wraps the Objective-C shim over the real Metal
API; everywhere else it wraps the host emulation, which compiles the same
``metal/*.metal`` sources as C++ and runs each threadgroup's threads as
cooperative fibers (``docs/metal.md``). Nothing here runs at import: the
device is created, and libraries compiled, on first use.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from sagecore import errors

__all__ = ["available", "device", "library", "metal_dir", "emulated", "shim", "empty_aligned"]

_LOCK = threading.RLock()  # library() calls device() while holding it
_DEVICE = None
_LIBS: dict = {}
_ROOT = Path(__file__).resolve().parent.parent.parent


def shim():
    """The compiled binding (``sagecore._metal``); MetalUnavailableError if not built."""
    try:
        from sagecore import _metal
    except ImportError as e:  # pragma: no cover - only without a build
        raise errors.MetalUnavailableError(f"the Metal shim is not built ({e})") from None
    return _metal


def metal_dir() -> Path:
    """Where the kernel sources live (``metal/`` of the source tree, or the copy in the package)."""
    env = os.environ.get("SAGECORE_METAL_DIR")
    for p in ([Path(env)] if env else []) + [_ROOT / "metal", Path(__file__).parent / "_sources" / "metal"]:
        if (p / "sc_metal_args.h").is_file():
            return p
    raise errors.MetalUnavailableError("cannot find the Metal kernel sources (metal/); set SAGECORE_METAL_DIR")


def _emu_dir() -> Path:
    for p in (_ROOT / "objc_shim" / "host", Path(__file__).parent / "_sources" / "host"):
        if (p / "metal_prelude.h").is_file():
            return p
    raise errors.MetalUnavailableError("cannot find the host emulation's prelude (objc_shim/host)")


def _cache_dir() -> Path:
    from sagecore.profile import cache_dir
    return Path(cache_dir()) / "metal-emu"


def available() -> tuple[bool, str]:
    """(True, "") when a device can be created, else (False, why)."""
    try:
        device()
        return True, ""
    except errors.MetalError as e:
        return False, str(e)


def emulated() -> bool:
    return shim().backend_name() == "host-emulation"


def device():
    """The process's Metal device (created on first use, then shared)."""
    global _DEVICE
    if _DEVICE is None:
        with _LOCK:
            if _DEVICE is None:
                m = shim()
                if m.backend_name() == "host-emulation":
                    m.configure("emu_dir", str(_emu_dir()))
                    m.configure("cache_dir", str(_cache_dir()))
                _DEVICE = m.Device()
    return _DEVICE


def library(name: str):
    """The compiled library of ``metal/<name>.metal`` (compiled once per process;
    the emulation also caches the build on disk by content hash)."""
    lib = _LIBS.get(name)
    if lib is None:
        with _LOCK:
            lib = _LIBS.get(name)
            if lib is None:
                d = metal_dir()
                path = d / f"{name}.metal"
                if not path.is_file():
                    raise errors.InvalidArgumentError("name", f"no kernel source {path}")
                dev = device()
                prebuilt = path.with_suffix(".metallib")
                if not dev.info()["emulated"] and prebuilt.is_file() and \
                        prebuilt.stat().st_mtime >= path.stat().st_mtime:
                    lib = dev.library_from_file(str(prebuilt))  # built by setup.py with Xcode's metal
                else:
                    # Metal: compiled from source now (and kept for the process);
                    # emulation: built as C++, cached on disk by content hash
                    lib = dev.library_from_source(path.read_text(), name=str(path), include_dir=str(d))
                _LIBS[name] = lib
    return lib


def empty_aligned(shape, dtype):
    """An uninitialized numpy array whose data starts on a page boundary and
    whose allocation spans whole pages: wrapping it (``device().wrap``) is
    zero-copy on Metal without rounding to enclosing pages."""
    import mmap

    import numpy as np
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    pg = mmap.PAGESIZE
    span = max(pg, -(-n // pg) * pg)
    raw = np.empty(span + pg, np.uint8)
    off = (-raw.ctypes.data) % pg
    return raw[off:off + n].view(dt).reshape(shape)
