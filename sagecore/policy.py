"""Quantization policies: which format each K and V tensor of a model uses.

A policy is a TOML or JSON file, a dict, or a built-in name. Its schema::

    version = 1                 # policy schema version (optional, default 1)
    name = "my-policy"          # optional
    head_dim = 128              # optional: validate group sizes at load time
    min_kv_len = 0              # caches shorter than this stay fp16
    precision = "fp32"          # the lowest operand precision attention over the cache may
                                # use unless the call says otherwise: "fp32", "bf16" or
                                # "int8" (sagecore.graph.PRECISIONS); the built-ins name the
                                # lowest at which their accuracy targets hold (docs/accuracy.md)
    smooth_window = 64          # tokens that fix the smoothing mean (formats with smooth)

    [k]                         # the default K format: a table, or a format id string
    encoding = "int8"           # or bits = 8
    token_group = 64
    channel_group = "head"      # an integer, or "head" for the whole head_dim
    scale_dtype = "fp16"
    zero_point = false
    smooth = true
    rotate = false
    outliers = 0
    layout = "rows"             # or "k16" (int8/int4, token_group a multiple of 16): the
                                # codes of 16 tokens interleaved by 4-byte words

    [v]
    encoding = "int8"

    [[overrides]]               # later entries win
    layers = [0, 1]             # list of ints, "a-b" ranges, or "*"
    heads = [3]                 # optional: kv heads
    k = "fp16"                  # format id string or table; omitted = default
    v = { encoding = "int8", token_group = 1, channel_group = 32 }

Everything is validated when the policy is loaded, and every error is a
:class:`~sagecore.errors.PolicyError` naming the source, the dotted key and
the expectation.
"""

from __future__ import annotations

import os

from sagecore.errors import InvalidArgumentError, PolicyError
from sagecore.formats import KVFormat

__all__ = ["Policy", "load_policy", "builtin_policies", "POLICY_VERSION"]

POLICY_VERSION = 1

_TOP_KEYS = {"version", "name", "description", "head_dim", "min_kv_len", "smooth_window", "precision", "k", "v",
             "overrides"}
_FMT_KEYS = {"encoding", "bits", "token_group", "channel_group", "scale_dtype", "zero_point", "smooth",
             "rotate", "outliers", "layout"}
_OVR_KEYS = {"layers", "heads", "k", "v"}
_BITS = {16: "fp16", 8: "int8", 4: "int4"}
# Defaults per encoding for format tables that leave fields out.
_FMT_DEFAULTS = {
    "fp16": {},
    "int8": {"token_group": 1, "channel_group": 32},
    "int4": {"token_group": 1, "channel_group": 32},
}


class Policy:
    """A validated policy. Immutable by convention; hashable via :attr:`key`.

    Attributes:
        name, source: for messages (source is the file path or ``"<dict>"``).
        k, v: default :class:`KVFormat` for K and V.
        min_kv_len: caches shorter than this hold fp16 K/V.
        smooth_window: number of leading tokens whose mean is the smoothing vector.
        overrides: tuple of ``(layers, heads, k, v)``; layers/heads are
            frozensets or None (= all), k/v a KVFormat or None (= default).
        head_dim: the head_dim the policy was validated for, or None.
        precision: the default ``precision`` of attention over a cache of
            this policy (:meth:`QuantKVCache.attend`), one of
            :data:`sagecore.graph.PRECISIONS`.
    """

    __slots__ = ("name", "source", "k", "v", "min_kv_len", "smooth_window", "overrides", "head_dim", "precision")

    def __init__(self, *, k: KVFormat, v: KVFormat, name="custom", source="<dict>", min_kv_len=0,
                 smooth_window=64, overrides=(), head_dim=None, precision="fp32"):
        self.name = name
        self.source = source
        self.k = k
        self.v = v
        self.min_kv_len = min_kv_len
        self.smooth_window = smooth_window
        self.overrides = tuple(overrides)
        self.head_dim = head_dim
        from sagecore.graph import check_precision
        self.precision = check_precision(precision)

    @property
    def key(self):
        return (self.k, self.v, self.min_kv_len, self.smooth_window, self.overrides, self.precision)

    def __eq__(self, other):
        return isinstance(other, Policy) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return (f"Policy({self.name!r}, k={self.k.format_id}, v={self.v.format_id}, "
                f"min_kv_len={self.min_kv_len}, precision={self.precision!r}, overrides={len(self.overrides)})")

    # ------------------------------------------------------------- lookups
    def formats(self, layer: int = 0, head: int | None = None) -> tuple:
        """``(k_format, v_format)`` for one layer and, optionally, one kv head."""
        k, v = self.k, self.v
        for layers, heads, ok, ov in self.overrides:
            if layers is not None and layer not in layers:
                continue
            if heads is not None and (head is None or head not in heads):
                continue
            k = ok if ok is not None else k
            v = ov if ov is not None else v
        return k, v

    def head_formats(self, layer: int, kv_heads: int) -> list:
        """``[(k_format, v_format)]`` for each kv head of a layer."""
        return [self.formats(layer, h) for h in range(kv_heads)]

    def all_formats(self) -> set:
        out = {self.k, self.v}
        for _, _, k, v in self.overrides:
            out.update(f for f in (k, v) if f is not None)
        return out

    def check_head_dim(self, head_dim: int) -> None:
        """Raise PolicyError unless every format of the policy can store head_dim."""
        where = [("k", self.k), ("v", self.v)]
        for i, (_, _, k, v) in enumerate(self.overrides):
            where += [(f"overrides[{i}].k", k), (f"overrides[{i}].v", v)]
        for key, fmt in where:
            if fmt is None:
                continue
            try:
                fmt.check_head_dim(head_dim)
            except InvalidArgumentError as e:
                raise PolicyError(self.source, key, str(e).split(": ", 1)[1]) from None

    def capability_report(self, backend: str = "cpu", head_dim: int | None = None) -> dict:
        """Which formats of the policy ``backend`` can consume.

        Returns ``{format_id: reason or None}``; None means supported.
        """
        from sagecore import backends
        caps = backends.capabilities(backend)
        return {f.format_id: caps.why_not_format(f, head_dim) for f in sorted(self.all_formats(),
                                                                              key=lambda f: f.format_id)}

    def supported_by(self, backend: str = "cpu", head_dim: int | None = None) -> bool:
        return all(r is None for r in self.capability_report(backend, head_dim).values())

    # ------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        def fmt(f):
            return None if f is None else f.format_id
        d = {"version": POLICY_VERSION, "name": self.name, "min_kv_len": self.min_kv_len,
             "smooth_window": self.smooth_window, "precision": self.precision, "k": fmt(self.k), "v": fmt(self.v)}
        if self.head_dim is not None:
            d["head_dim"] = self.head_dim
        ovr = []
        for layers, heads, k, v in self.overrides:
            e = {"layers": "*" if layers is None else sorted(layers)}
            if heads is not None:
                e["heads"] = sorted(heads)
            if k is not None:
                e["k"] = fmt(k)
            if v is not None:
                e["v"] = fmt(v)
            ovr.append(e)
        if ovr:
            d["overrides"] = ovr
        return d


# ------------------------------------------------------------------ loading
def _fail(source, key, msg):
    raise PolicyError(source, key, msg)


def _int(source, key, val, lo, hi=None):
    if isinstance(val, bool) or not isinstance(val, int):
        _fail(source, key, f"expected an integer, got {val!r}")
    if val < lo or (hi is not None and val > hi):
        _fail(source, key, f"expected {lo}..{hi if hi is not None else 'inf'}, got {val}")
    return val


def _parse_format(source, key, spec):
    if isinstance(spec, KVFormat):
        return spec
    if isinstance(spec, str):
        try:
            return KVFormat.parse(spec)
        except InvalidArgumentError as e:
            _fail(source, key, str(e).split(": ", 1)[1])
    if not isinstance(spec, dict):
        _fail(source, key, f"expected a format table or a format id string, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _FMT_KEYS)
    if unknown:
        _fail(source, f"{key}.{unknown[0]}", f"unknown key; expected one of {sorted(_FMT_KEYS)}")
    enc = spec.get("encoding")
    if "bits" in spec:
        bits = spec["bits"]
        if bits not in _BITS or isinstance(bits, bool):
            _fail(source, f"{key}.bits", f"no backend consumes {bits!r}-bit codes; expected 4, 8 or 16")
        if enc is not None and enc != _BITS[bits]:
            _fail(source, f"{key}.bits", f"bits={bits} contradicts encoding={enc!r}")
        enc = _BITS[bits]
    if enc is None:
        _fail(source, f"{key}.encoding", "missing; expected 'fp16', 'int8' or 'int4' (or bits = 16/8/4)")
    if enc not in _FMT_DEFAULTS:
        _fail(source, f"{key}.encoding", f"no backend consumes {enc!r}; expected 'fp16', 'int8' or 'int4'")
    kw = dict(_FMT_DEFAULTS[enc])
    for name in ("token_group", "channel_group", "scale_dtype", "zero_point", "smooth", "rotate", "outliers",
                 "layout"):
        if name in spec:
            kw[name] = spec[name]
    if kw.get("channel_group") == "head":
        kw["channel_group"] = 0
    for flag in ("zero_point", "smooth", "rotate"):
        if flag in kw and not isinstance(kw[flag], bool):
            _fail(source, f"{key}.{flag}", f"expected true or false, got {kw[flag]!r}")
    try:
        return KVFormat(enc, **kw)
    except InvalidArgumentError as e:
        _fail(source, f"{key}.{e.argument}", str(e).split(": ", 1)[1])


def _parse_index_set(source, key, val):
    if val == "*" or val is None:
        return None
    items = val if isinstance(val, list) else [val]
    out = set()
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool) and it >= 0:
            out.add(it)
        elif isinstance(it, str) and "-" in it:
            a, _, b = it.partition("-")
            if not (a.strip().isdigit() and b.strip().isdigit()) or int(a) > int(b):
                _fail(source, key, f"bad range {it!r}; expected 'a-b' with a <= b")
            out.update(range(int(a), int(b) + 1))
        else:
            _fail(source, key, f"expected non-negative integers, 'a-b' ranges or '*', got {it!r}")
    return frozenset(out)


def policy_from_dict(d: dict, source: str = "<dict>") -> Policy:
    """Validate a policy mapping and build a :class:`Policy`."""
    if not isinstance(d, dict):
        _fail(source, "<root>", f"expected a table/object, got {type(d).__name__}")
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        _fail(source, unknown[0], f"unknown key; expected one of {sorted(_TOP_KEYS)}")
    version = d.get("version", POLICY_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _fail(source, "version", f"expected a positive integer, got {version!r}")
    if version > POLICY_VERSION:
        _fail(source, "version", f"policy version {version} is newer than this sagecore reads ({POLICY_VERSION})")
    name = d.get("name", os.path.splitext(os.path.basename(source))[0] if source != "<dict>" else "custom")
    if not isinstance(name, str):
        _fail(source, "name", f"expected a string, got {name!r}")
    if "k" not in d or "v" not in d:
        _fail(source, "k" if "k" not in d else "v", "missing; a policy gives both the K and V formats")
    k = _parse_format(source, "k", d["k"])
    v = _parse_format(source, "v", d["v"])
    min_kv_len = _int(source, "min_kv_len", d.get("min_kv_len", 0), 0)
    smooth_window = _int(source, "smooth_window", d.get("smooth_window", 64), 1, 1 << 20)
    from sagecore.graph import PRECISIONS
    precision = d.get("precision", "fp32")
    if precision not in PRECISIONS:
        _fail(source, "precision", f"expected one of {list(PRECISIONS)}, got {precision!r}")
    overrides = []
    ovr = d.get("overrides", [])
    if not isinstance(ovr, list):
        _fail(source, "overrides", "expected an array of tables")
    for i, e in enumerate(ovr):
        key = f"overrides[{i}]"
        if not isinstance(e, dict):
            _fail(source, key, "expected a table")
        bad = sorted(set(e) - _OVR_KEYS)
        if bad:
            _fail(source, f"{key}.{bad[0]}", f"unknown key; expected one of {sorted(_OVR_KEYS)}")
        if "layers" not in e:
            _fail(source, f"{key}.layers", "missing; use '*' for every layer")
        if "k" not in e and "v" not in e:
            _fail(source, key, "an override must set k, v or both")
        overrides.append((
            _parse_index_set(source, f"{key}.layers", e["layers"]),
            _parse_index_set(source, f"{key}.heads", e.get("heads", "*")),
            _parse_format(source, f"{key}.k", e["k"]) if "k" in e else None,
            _parse_format(source, f"{key}.v", e["v"]) if "v" in e else None,
        ))
    head_dim = d.get("head_dim")
    pol = Policy(k=k, v=v, name=name, source=source, min_kv_len=min_kv_len, smooth_window=smooth_window,
                 overrides=overrides, head_dim=None, precision=precision)
    if head_dim is not None:
        _int(source, "head_dim", head_dim, 16, 512)
        pol.check_head_dim(head_dim)
        pol.head_dim = head_dim
    return pol


def _read_file(path: str) -> dict:
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise PolicyError(path, "<file>", f"cannot read: {e.strerror or e}") from None
    if ext == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise PolicyError(path, "<file>", f"not valid TOML: {e}") from None
    if ext == ".json":
        import json
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise PolicyError(path, "<file>", f"not valid JSON: {e}") from None
    raise PolicyError(path, "<file>", "expected a .toml or .json policy file")


# ----------------------------------------------------------------- built-ins
# Chosen by measurement: docs/accuracy.md (`python -m sagecore accuracy`).
# `precision`: the lowest operand precision at which the policy's accuracy
# targets hold through the kernels (tests/test_accuracy.py checks every
# setting), so a plain `cache.attend(q)` takes the fastest such path.
_BUILTINS = {
    "fp16": {"k": "fp16", "v": "fp16"},
    # K: smoothing + KIVI-style per-channel scales over 64-token blocks;
    # V: rotated (block Hadamard), one scale per token. 8.1875 bits per
    # element at d128. (The rotation spreads V's channels so that one scale
    # per token loses nothing against 32-channel groups -- MiniLM cosine
    # 0.999963 against 0.999962 -- and the integer PV rounds one P' per key
    # and row instead of four: 1.11x cold; docs/benchmarks.md, session 17.)
    # (64- rather than 32-token blocks: the same accuracy to 5 digits of
    # cosine, and the integer decode re-rounds q once per block: 1.085x faster
    # cold; docs/accuracy.md, docs/benchmarks.md.) K's codes in the k16
    # layout as int4's (below): AVX-512 1.06-1.14x; AVX2 and arm64 score it
    # in place (docs/benchmarks.md, session 16). "bf16": 16-bit integer q'
    # and P' in the decode (8-bit q' would miss the targets), 1.37x cold.
    "int8": {"k": "int8.t64.g1.s16+smooth+k16", "v": "int8.t1.gD.s16+rot", "precision": "bf16"},
    # K: smoothing + per-channel scale and minimum over 64 tokens, the codes
    # of 16 tokens interleaved (k16: the x86 decode scores put the keys in the
    # vector lanes, 1.12-1.26x at every precision setting; docs/formats.md,
    # docs/benchmarks.md session 15); V: rotated, one scale per token
    # (1.20x cold over 32-channel groups; llm cosine 0.9813 against 0.9835,
    # target 0.96). 4.3125 bits per element at d128. "int8": 8-bit q' and P' over the int4
    # codes (SageAttention's class), ~1.9x the fp32 setting's decode.
    "int4": {"k": "int4.t64.g1.s16+smooth+zp+k16", "v": "int4.t1.gD.s16+rot", "precision": "int8"},
    "int8k-int4v": {"k": "int8.t64.g1.s16+smooth+k16", "v": "int4.t1.gD.s16+rot", "precision": "int8"},
    "q8_0": {"k": "int8.t1.g32.s16", "v": "int8.t1.g32.s16"},
}


def builtin_policies() -> dict:
    """Name -> :class:`Policy` for the built-in policies."""
    return {name: policy_from_dict(dict(spec, name=name), source=f"<builtin {name}>")
            for name, spec in _BUILTINS.items()}


def load_policy(x) -> Policy:
    """Load and validate a policy.

    Args:
        x: a built-in name (``"fp16"``, ``"int8"``, ``"int4"``, ``"int8k-int4v"``,
            ``"q8_0"``), a path to a ``.toml``/``.json`` file, a dict, or a
            :class:`Policy` (returned as is).

    Raises:
        PolicyError: naming the file, the key and the expectation.
    """
    if isinstance(x, Policy):
        return x
    if isinstance(x, dict):
        return policy_from_dict(x)
    if isinstance(x, os.PathLike):
        x = os.fspath(x)
    if not isinstance(x, str):
        raise PolicyError("<argument>", "policy",
                          f"expected a built-in name, a file path, a dict or a Policy, got {type(x).__name__}")
    if x in _BUILTINS:
        return policy_from_dict(dict(_BUILTINS[x], name=x), source=f"<builtin {x}>")
    if os.path.splitext(x)[1].lower() in (".toml", ".json") or os.path.exists(x):
        return policy_from_dict(_read_file(x), source=x)
    raise PolicyError("<argument>", "policy",
                      f"{x!r} is neither a built-in policy ({', '.join(_BUILTINS)}) nor a .toml/.json file")
