"""sagecore: SageAttention-style quantized attention and KV cache.

Import is cheap: submodules (and the compiled core) load on first use of the
name that needs them. Nothing creates a device or compiles at import time.
"""

from sagecore._version import __version__

__all__ = [
    "__version__",
    "KVFormat",
    "Policy",
    "QuantKVCache",
    "load_policy",
    "sdpa",
    "sdpa_reference",
    "set_num_threads",
    "get_num_threads",
    "errors",
]

_LAZY = {
    "KVFormat": ("sagecore.formats", "KVFormat"),
    "Policy": ("sagecore.policy", "Policy"),
    "load_policy": ("sagecore.policy", "load_policy"),
    "QuantKVCache": ("sagecore.cache", "QuantKVCache"),
    "sdpa": ("sagecore.attention", "sdpa"),
    "sdpa_reference": ("sagecore.reference", "sdpa_reference"),
    "set_num_threads": ("sagecore.cpu", "set_num_threads"),
    "get_num_threads": ("sagecore.cpu", "get_num_threads"),
    "errors": ("sagecore.errors", None),
}


def __getattr__(name):
    try:
        mod_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'sagecore' has no attribute {name!r}") from None
    import importlib
    mod = importlib.import_module(mod_name)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
