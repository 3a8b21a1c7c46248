"""Device profiles: the selector's shape thresholds, kept as data.

A profile is a small JSON document (schema below). sagecore ships defaults
for each backend; ``python -m sagecore tune`` measures this machine and writes
``<cache dir>/profile-<device>.json``, which then takes precedence. The cache
directory is ``$SAGECORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sagecore``, else
``~/.cache/sagecore``.

Schema (version 1)::

    {
      "version": 1,
      "device": "cpu-avx512_vnni-2t",      # backend, ISA level, threads
      "source": "defaults" | "tune <date>",
      "decode_max_q_len": 8,               # M <= this: decode variant, else prefill
      "split_k": {
        "min_kv_len": 2048,                # never split shorter caches
        "keys_per_split": 1024,            # at most kv_len / this splits
        "items_per_thread": 2,             # split only if items < this * threads
        "target_items_per_thread": 4,      # aim for this many items per thread
        "max_splits": 64
      },
      "quant_min_kv_len": 0                # quantized-vs-fp16 crossover: below
                                           # this many keys fp16 attention is
                                           # faster (a cache policy's default
                                           # warm-up when it sets none)
    }
"""

from __future__ import annotations

import json
import os
import threading

from sagecore.errors import CorruptFileError, InvalidArgumentError

__all__ = ["Profile", "default_profile", "load_profile", "profile_path", "cache_dir"]

PROFILE_VERSION = 1

_DEFAULTS = {
    "version": PROFILE_VERSION,
    "source": "defaults",
    "decode_max_q_len": 8,
    # the C core's own automatic rule (sc_attention_auto_splits) uses the same numbers
    "split_k": {"min_kv_len": 2048, "keys_per_split": 1024, "items_per_thread": 2,
                "target_items_per_thread": 4, "max_splits": 64},
    "quant_min_kv_len": 0,
}


def cache_dir() -> str:
    d = os.environ.get("SAGECORE_CACHE_DIR")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sagecore")


class Profile:
    """Validated thresholds for one device (see the module docstring)."""

    __slots__ = ("device", "source", "decode_max_q_len", "split_min_kv_len", "keys_per_split",
                 "items_per_thread", "target_items_per_thread", "max_splits", "quant_min_kv_len", "path")

    def __init__(self, d: dict, device: str, path: str | None = None):
        where = path or "<profile>"

        def num(obj, key, lo, hi):
            v = obj.get(key)
            if type(v) is not int or not lo <= v <= hi:
                raise CorruptFileError(f"{where}: {key} must be an integer in [{lo}, {hi}], got {v!r}")
            return v

        if d.get("version") != PROFILE_VERSION:
            raise CorruptFileError(f"{where}: profile version {d.get('version')!r}, this sagecore reads "
                                   f"version {PROFILE_VERSION}")
        sk = d.get("split_k")
        if not isinstance(sk, dict):
            raise CorruptFileError(f"{where}: split_k must be an object")
        self.device = device
        self.source = str(d.get("source", "?"))
        self.path = path
        self.decode_max_q_len = num(d, "decode_max_q_len", 1, 1 << 20)
        self.split_min_kv_len = num(sk, "min_kv_len", 1, 1 << 40)
        self.keys_per_split = num(sk, "keys_per_split", 1, 1 << 40)
        self.items_per_thread = num(sk, "items_per_thread", 1, 1 << 20)
        self.target_items_per_thread = num(sk, "target_items_per_thread", 1, 1 << 20)
        self.max_splits = num(sk, "max_splits", 1, 1024)
        self.quant_min_kv_len = num(d, "quant_min_kv_len", 0, 1 << 40)

    def to_dict(self) -> dict:
        return {
            "version": PROFILE_VERSION, "device": self.device, "source": self.source,
            "decode_max_q_len": self.decode_max_q_len,
            "split_k": {"min_kv_len": self.split_min_kv_len, "keys_per_split": self.keys_per_split,
                        "items_per_thread": self.items_per_thread,
                        "target_items_per_thread": self.target_items_per_thread, "max_splits": self.max_splits},
            "quant_min_kv_len": self.quant_min_kv_len,
        }

    def split_k(self, items: int, kv_len: int, threads: int) -> tuple[int, str]:
        """Key splits for ``items`` (batch x kv heads x row blocks) work items, and why."""
        if kv_len < self.split_min_kv_len:
            return 1, f"kv_len {kv_len} < split_k.min_kv_len {self.split_min_kv_len}"
        if items >= self.items_per_thread * threads:
            return 1, f"{items} work items already fill {threads} threads"
        s = -(-self.target_items_per_thread * threads // items)
        s = max(1, min(s, kv_len // self.keys_per_split, self.max_splits))
        return s, (f"{items} work items for {threads} threads at kv_len {kv_len}: {s} splits "
                   f"(<= kv_len/{self.keys_per_split}, <= {self.max_splits})")

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

    def __repr__(self):
        return f"Profile({self.device!r}, source={self.source!r})"


def device_name(backend: str = "cpu") -> str:
    if backend != "cpu":
        raise InvalidArgumentError("backend", f"profiles exist for 'cpu' today, not {backend!r}")
    from sagecore import _cpu
    info = _cpu.cpu_info()
    return f"cpu-{info['active_isa']}-{info['threads']}t"


def profile_path(device: str) -> str:
    return os.path.join(cache_dir(), f"profile-{device}.json")


def default_profile(device: str = "cpu") -> Profile:
    return Profile(_DEFAULTS, device)


_lock = threading.Lock()
_loaded: dict = {}


def load_profile(backend: str = "cpu", *, refresh: bool = False) -> Profile:
    """The profile for ``backend`` on this machine: the tuned file if present, else defaults.

    Raises:
        CorruptFileError: the tuned file exists but is not a valid profile (delete it or re-run tune).
    """
    device = device_name(backend)
    with _lock:
        if not refresh and device in _loaded:
            return _loaded[device]
        path = profile_path(device)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    d = json.load(f)
            except (OSError, ValueError) as e:
                raise CorruptFileError(f"{path}: cannot read the profile ({e}); re-run "
                                       f"'python -m sagecore tune' or delete the file") from None
            prof = Profile(d, device, path)
        else:
            prof = default_profile(device)
        _loaded[device] = prof
        return prof
