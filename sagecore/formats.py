"""KV storage format descriptors.

A :class:`KVFormat` is an immutable, hashable value that fully describes how one
tensor (K or V) of a KV cache is stored: the element encoding, the grid of
scale cells, the scale dtype, and the optional transforms and side tables.
Kernels consume the descriptor (as the C struct ``sc_format``) plus buffers and
reject anything they do not support.

Scale cells: ``token_group`` consecutive tokens x ``channel_group`` consecutive
channels share one scale (and one minimum with ``zero_point``).
``channel_group=0`` means "the whole head_dim". Examples at head_dim 128::

    KVFormat("int8", token_group=1,  channel_group=32)  # per token, like q8_0
    KVFormat("int8", token_group=64, channel_group=0)   # one scale per 64-key block (SageAttention K)
    KVFormat("int4", token_group=32, channel_group=1)   # per channel over 32 tokens (KIVI K)

Options (quantized encodings only):

* ``smooth``: subtract a per-(batch, kv-head) channel mean before quantizing.
  For K this is exact for attention: ``q.(k - m) = q.k - q.m`` shifts every
  score of a query row by the same amount and softmax ignores it. For V it is
  exact too: the kernels add the mean back (softmax rows sum to one).
* ``rotate``: an orthonormal block-Hadamard rotation along head_dim (block =
  largest power of two dividing head_dim, at most 256). Spreads outlier
  channels over the block; queries are rotated the same way for K, and outputs
  rotated back for V, so attention is unchanged.
* ``outliers``: per cell, the k largest-magnitude values are kept verbatim in
  fp16 with their positions; the rest is quantized with a tighter range.

Byte layout of the codes (``layout``):

* ``"rows"`` (default): token-major, each token's codes one row of
  ``row_bytes`` bytes.
* ``"k16"`` (int8/int4, token_group a multiple of 16; format version 2):
  within every block of 16 tokens, the rows' 4-byte words are interleaved,
  ``[word w][token t][4 bytes]``, so one 64-byte load holds the same 4 (int8)
  or 8 (int4) channels of 16 keys. Decode kernels then put the keys in the
  vector lanes and need no horizontal sums. Same codes and scales as
  ``"rows"``; only the byte order differs (which kernels a layout has can
  differ: docs/architecture.md).

Serialisation: :meth:`KVFormat.to_bytes` gives a 20-byte header (magic, version,
parameters, CRC-32) and :meth:`KVFormat.to_json` a JSON object with the same
content; both round-trip exactly and reject unknown or newer versions.

Versions: a descriptor is written with the lowest version that can express it
(1, or 2 for ``layout="k16"``), so readers of version 1 keep reading every
format they can decode; they reject a k16 descriptor rather than misread it.
"""

from __future__ import annotations

import struct
from binascii import crc32

from sagecore.errors import FormatError, FormatVersionError, InvalidArgumentError

__all__ = [
    "FORMAT_VERSION",
    "KVFormat",
    "ENCODINGS",
    "HEADER_SIZE",
    "LAYOUTS",
    "FP16",
]

#: Current descriptor version. Readers accept versions <= this one. Version 2
#: added ``layout="k16"``; a descriptor takes the lowest version that expresses it.
FORMAT_VERSION = 2
#: Byte layouts of the codes: name -> (id in sc_format.layout, first version).
LAYOUTS = {"rows": (0, 1), "k16": (1, 2)}

#: Encoding name -> (stable integer id, bits per code). Ids match sc_encoding.
ENCODINGS = {"fp16": (1, 16), "int8": (2, 8), "int4": (3, 4)}
_ENC_BY_ID = {v[0]: k for k, v in ENCODINGS.items()}
_SCALE_DTYPES = {"fp32": 0, "fp16": 1}  # ids match sc_dtype
_SCALE_BY_ID = {v: k for k, v in _SCALE_DTYPES.items()}

_MAGIC = b"SCKF"
_BODY = struct.Struct("<4sHBBHHBBH")  # magic ver enc flags T G k reserved reserved
_CRC = struct.Struct("<I")
#: Size of the binary header in bytes.
HEADER_SIZE = _BODY.size + _CRC.size

_F_ZERO_POINT, _F_SMOOTH, _F_ROTATE, _F_SCALE_F32, _F_K16 = 1, 2, 4, 8, 16
_MAX_TOKEN_GROUP = 1024
_MAX_OUTLIERS = 16


class KVFormat:
    """How one K or V tensor is stored. Immutable and hashable.

    Args:
        encoding: ``"fp16"``, ``"int8"`` or ``"int4"``.
        token_group: tokens per scale cell (1 = per token), 1..1024.
        channel_group: channels per scale cell; 0 = the whole head_dim.
        scale_dtype: ``"fp16"`` or ``"fp32"`` for scales (and minimums).
        zero_point: asymmetric codes with a per-cell minimum.
        smooth: subtract a per-(batch, head) channel mean before quantizing.
        rotate: block-Hadamard rotation along head_dim before quantizing.
        outliers: values per cell kept verbatim in fp16 (0..16).
        layout: ``"rows"`` or ``"k16"`` (see the module docstring).
        version: descriptor version; default the lowest that expresses the format.

    Raises:
        InvalidArgumentError: a parameter is out of range (names the parameter).
    """

    __slots__ = ("encoding", "token_group", "channel_group", "scale_dtype", "zero_point",
                 "smooth", "rotate", "outliers", "layout", "version", "_key")

    def __init__(self, encoding: str, *, token_group: int = 1, channel_group: int = 32,
                 scale_dtype: str = "fp16", zero_point: bool = False, smooth: bool = False,
                 rotate: bool = False, outliers: int = 0, layout: str = "rows", version: int | None = None):
        if encoding not in ENCODINGS:
            raise InvalidArgumentError("encoding", f"expected one of {sorted(ENCODINGS)}, got {encoding!r}")
        if encoding == "fp16":
            # fp16 stores values verbatim: no cells, no transforms.
            if smooth or rotate or outliers or zero_point:
                raise InvalidArgumentError(
                    "encoding", "fp16 stores values verbatim; smooth/rotate/outliers/zero_point "
                    "apply to quantized encodings (int8, int4)")
            token_group, channel_group, scale_dtype = 1, 0, "fp16"
        if layout not in LAYOUTS:
            raise InvalidArgumentError("layout", f"expected one of {sorted(LAYOUTS)}, got {layout!r}")
        min_version = LAYOUTS[layout][1]
        if version is None:
            version = min_version
        for name, val in (("token_group", token_group), ("channel_group", channel_group),
                          ("outliers", outliers), ("version", version)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise InvalidArgumentError(name, f"expected an integer, got {val!r}")
        if not 1 <= token_group <= _MAX_TOKEN_GROUP:
            raise InvalidArgumentError("token_group", f"expected 1..{_MAX_TOKEN_GROUP}, got {token_group}")
        if not 0 <= channel_group <= 512:
            raise InvalidArgumentError("channel_group", f"expected 0 (whole head) or 1..512, got {channel_group}")
        if scale_dtype not in _SCALE_DTYPES:
            raise InvalidArgumentError("scale_dtype", f"expected 'fp16' or 'fp32', got {scale_dtype!r}")
        if not 0 <= outliers <= _MAX_OUTLIERS:
            raise InvalidArgumentError("outliers", f"expected 0..{_MAX_OUTLIERS}, got {outliers}")
        if outliers and channel_group and outliers >= token_group * channel_group:
            raise InvalidArgumentError("outliers", f"must be smaller than the cell size {token_group * channel_group}")
        if not 1 <= version <= FORMAT_VERSION:
            raise FormatVersionError(
                f"format version {version} is not supported (this sagecore reads versions 1..{FORMAT_VERSION})")
        if layout == "k16":
            if encoding == "fp16":
                raise InvalidArgumentError("layout", "'k16' interleaves int8/int4 codes; fp16 stores are token rows")
            if token_group % 16:
                raise InvalidArgumentError("layout", f"'k16' needs token_group a multiple of 16, got {token_group}")
        if version < min_version:
            raise InvalidArgumentError(
                "version", f"layout {layout!r} needs format version >= {min_version}, got {version}")
        s = object.__setattr__
        s(self, "encoding", encoding)
        s(self, "token_group", token_group)
        s(self, "channel_group", channel_group)
        s(self, "scale_dtype", scale_dtype)
        s(self, "zero_point", bool(zero_point))
        s(self, "smooth", bool(smooth))
        s(self, "rotate", bool(rotate))
        s(self, "outliers", outliers)
        s(self, "layout", layout)
        s(self, "version", version)
        s(self, "_key", (encoding, token_group, channel_group, scale_dtype, bool(zero_point),
                         bool(smooth), bool(rotate), outliers, layout, version))

    # ------------------------------------------------------------ value type
    def __setattr__(self, name, value):
        raise AttributeError(f"KVFormat is immutable (tried to set {name!r})")

    def __delattr__(self, name):
        raise AttributeError("KVFormat is immutable")

    def __eq__(self, other):
        return isinstance(other, KVFormat) and self._key == other._key

    def __hash__(self):
        return hash(self._key)

    def __reduce__(self):
        return (KVFormat.from_bytes, (self.to_bytes(),))

    def __repr__(self):
        return f"KVFormat({self.format_id!r})"

    def replace(self, **changes) -> "KVFormat":
        """A copy with some fields changed."""
        kw = {k: getattr(self, k) for k in ("token_group", "channel_group", "scale_dtype", "zero_point",
                                            "smooth", "rotate", "outliers", "layout", "version")}
        enc = changes.pop("encoding", self.encoding)
        if "layout" in changes and "version" not in changes and self.version == self.min_version:
            kw["version"] = None  # follow the new layout's lowest version
        kw.update(changes)
        return KVFormat(enc, **kw)

    # ------------------------------------------------------------ properties
    @property
    def min_version(self) -> int:
        """The lowest descriptor version that expresses this format."""
        return LAYOUTS[self.layout][1]

    @property
    def is_quantized(self) -> bool:
        return self.encoding != "fp16"

    @property
    def encoding_id(self) -> int:
        """Stable integer id of the encoding (1 fp16, 2 int8, 3 int4)."""
        return ENCODINGS[self.encoding][0]

    @property
    def bits(self) -> int:
        return ENCODINGS[self.encoding][1]

    @property
    def format_id(self) -> str:
        """Stable string id, e.g. ``"int8.t64.gD.s16+smooth"``; :meth:`parse` reads it back."""
        if self.encoding == "fp16":
            return "fp16"
        g = "D" if self.channel_group == 0 else str(self.channel_group)
        s = f"{self.encoding}.t{self.token_group}.g{g}.s{self.scale_dtype[2:]}"
        if self.zero_point:
            s += "+zp"
        if self.smooth:
            s += "+smooth"
        if self.rotate:
            s += "+rot"
        if self.outliers:
            s += f"+out{self.outliers}"
        if self.layout != "rows":
            s += f"+{self.layout}"
        if self.version != self.min_version:
            s += f"+v{self.version}"
        return s

    @classmethod
    def parse(cls, text: str) -> "KVFormat":
        """Inverse of :attr:`format_id`."""
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError("format_id", f"expected a non-empty string, got {text!r}")
        if text == "fp16":
            return cls("fp16")
        head, *flags = text.split("+")
        parts = head.split(".")
        err = InvalidArgumentError(
            "format_id", f"expected '<int8|int4>.t<T>.g<G|D>.s<16|32>[+zp][+smooth][+rot][+out<k>][+k16]', "
                         f"got {text!r}")
        if len(parts) != 4 or not parts[1].startswith("t") or not parts[2].startswith("g") \
                or parts[3] not in ("s16", "s32"):
            raise err
        try:
            kw = dict(token_group=int(parts[1][1:]),
                      channel_group=0 if parts[2] == "gD" else int(parts[2][1:]),
                      scale_dtype="fp" + parts[3][1:])
            for fl in flags:
                if fl == "zp":
                    kw["zero_point"] = True
                elif fl == "smooth":
                    kw["smooth"] = True
                elif fl == "rot":
                    kw["rotate"] = True
                elif fl.startswith("out"):
                    kw["outliers"] = int(fl[3:])
                elif fl in LAYOUTS and fl != "rows":
                    kw["layout"] = fl
                elif fl.startswith("v"):
                    kw["version"] = int(fl[1:])
                else:
                    raise err
        except ValueError:
            raise err from None
        return cls(parts[0], **kw)

    def resolved_channel_group(self, head_dim: int) -> int:
        return head_dim if self.channel_group == 0 else self.channel_group

    def check_head_dim(self, head_dim: int, argument: str = "head_dim") -> None:
        """Raise InvalidArgumentError unless this format can store vectors of head_dim."""
        if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 16 \
                or head_dim > 512 or head_dim % 16:
            raise InvalidArgumentError(argument, f"expected a multiple of 16 in [16, 512], got {head_dim!r}")
        g = self.resolved_channel_group(head_dim)
        if self.is_quantized and head_dim % g:
            raise InvalidArgumentError(
                argument, f"format {self.format_id} has channel_group {g}, which does not divide {head_dim}")
        if self.outliers and self.outliers >= self.token_group * g:
            raise InvalidArgumentError(
                argument, f"format {self.format_id}: {self.outliers} outliers do not fit a cell of "
                          f"{self.token_group * g} values")

    def c_params(self, head_dim: int) -> tuple:
        """The C ``sc_format`` fields, in declaration order, for head_dim."""
        self.check_head_dim(head_dim)
        return (self.encoding_id, head_dim, self.token_group, self.resolved_channel_group(head_dim),
                _SCALE_DTYPES[self.scale_dtype], int(self.zero_point), self.outliers,
                int(self.rotate), int(self.smooth), LAYOUTS[self.layout][0])

    def bits_per_element(self, head_dim: int) -> float:
        """Stored bits per K/V element, scales, minimums and outlier tables included
        (the per-row smoothing vector is amortised away)."""
        if not self.is_quantized:
            return 16.0
        g = self.resolved_channel_group(head_dim)
        cell = self.token_group * g
        side = (16 if self.scale_dtype == "fp16" else 32) * (2 if self.zero_point else 1)
        side += self.outliers * 32
        return self.bits + side / cell

    # --------------------------------------------------------- serialisation
    def to_bytes(self) -> bytes:
        """The 20-byte binary header: magic, version, parameters, CRC-32."""
        flags = ((_F_ZERO_POINT if self.zero_point else 0) | (_F_SMOOTH if self.smooth else 0)
                 | (_F_ROTATE if self.rotate else 0) | (_F_SCALE_F32 if self.scale_dtype == "fp32" else 0)
                 | (_F_K16 if self.layout == "k16" else 0))
        body = _BODY.pack(_MAGIC, self.version, self.encoding_id, flags, self.token_group,
                          self.channel_group, self.outliers, 0, 0)
        return body + _CRC.pack(crc32(body))

    @classmethod
    def from_bytes(cls, data) -> "KVFormat":
        """Parse a header written by :meth:`to_bytes` (extra trailing bytes are ignored).

        Raises:
            FormatError: wrong magic, bad checksum, reserved bits set, truncated.
            FormatVersionError: written by a newer sagecore.
        """
        data = bytes(data[:HEADER_SIZE])
        if len(data) < HEADER_SIZE:
            raise FormatError(f"format header is truncated: {len(data)} of {HEADER_SIZE} bytes")
        magic, version, enc, flags, tg, cg, k, r1, r2 = _BODY.unpack_from(data)
        if magic != _MAGIC:
            raise FormatError(f"not a sagecore format header (magic {magic!r}, expected {_MAGIC!r})")
        if version > FORMAT_VERSION or version < 1:
            raise FormatVersionError(
                f"format header version {version} is not supported (this sagecore reads 1..{FORMAT_VERSION})")
        (crc,) = _CRC.unpack_from(data, _BODY.size)
        if crc != crc32(data[:_BODY.size]):
            raise FormatError("format header checksum mismatch (corrupted)")
        if enc not in _ENC_BY_ID:
            raise FormatError(f"unknown encoding id {enc}")
        known_flags = 0x1F if version >= 2 else 0xF
        if flags & ~known_flags or r1 or r2:
            raise FormatError("format header has reserved bits set")
        try:
            return cls(_ENC_BY_ID[enc], token_group=tg, channel_group=cg,
                       scale_dtype="fp32" if flags & _F_SCALE_F32 else "fp16",
                       zero_point=bool(flags & _F_ZERO_POINT), smooth=bool(flags & _F_SMOOTH),
                       rotate=bool(flags & _F_ROTATE), outliers=k,
                       layout="k16" if flags & _F_K16 else "rows", version=version)
        except InvalidArgumentError as e:
            raise FormatError(f"format header field {e}") from None

    def to_dict(self) -> dict:
        return {
            "magic": "sagecore.kvformat", "version": self.version, "format_id": self.format_id,
            "encoding": self.encoding, "token_group": self.token_group,
            "channel_group": self.channel_group, "scale_dtype": self.scale_dtype,
            "zero_point": self.zero_point, "smooth": self.smooth, "rotate": self.rotate,
            "outliers": self.outliers, "crc32": crc32(self.to_bytes()[:_BODY.size]),
            **({"layout": self.layout} if self.version >= 2 else {}),
        }

    def to_json(self) -> str:
        import json
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "KVFormat":
        """Inverse of :meth:`to_dict`; checks magic, version and checksum."""
        if not isinstance(d, dict) or d.get("magic") != "sagecore.kvformat":
            raise FormatError("not a sagecore format descriptor (missing magic 'sagecore.kvformat')")
        version = d.get("version")
        if not isinstance(version, int) or version < 1:
            raise FormatError(f"descriptor version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"descriptor version {version} is not supported (this sagecore reads 1..{FORMAT_VERSION})")
        known = {"magic", "version", "format_id", "encoding", "token_group", "channel_group",
                 "scale_dtype", "zero_point", "smooth", "rotate", "outliers", "crc32"}
        if version >= 2:
            known.add("layout")
        unknown = sorted(set(d) - known)
        if unknown:
            raise FormatError(f"descriptor has unknown fields {unknown}")
        try:
            fmt = cls(d["encoding"], token_group=d["token_group"], channel_group=d["channel_group"],
                      scale_dtype=d["scale_dtype"], zero_point=d["zero_point"], smooth=d["smooth"],
                      rotate=d["rotate"], outliers=d["outliers"], layout=d.get("layout", "rows"),
                      version=version)
        except KeyError as e:
            raise FormatError(f"descriptor is missing field {e.args[0]!r}") from None
        except InvalidArgumentError as e:
            raise FormatError(f"descriptor field {e}") from None
        if d.get("crc32") != crc32(fmt.to_bytes()[:_BODY.size]):
            raise FormatError("descriptor checksum mismatch (corrupted or edited)")
        if "format_id" in d and d["format_id"] != fmt.format_id:
            raise FormatError(f"descriptor format_id {d['format_id']!r} disagrees with its fields")
        return fmt

    @classmethod
    def from_json(cls, text: str) -> "KVFormat":
        import json
        try:
            d = json.loads(text)
        except ValueError as e:
            raise FormatError(f"descriptor is not valid JSON: {e}") from None
        return cls.from_dict(d)


#: The unquantized format.
FP16 = KVFormat("fp16")

