"""TOC model, strict parser and byte-exact serializer for both TOC schemas (FORMAT.md §1.4, §2.3).

One model (:class:`TocEntry`, :class:`Toc`) serves both schemas; a dialect decides which JSON keys exist,
their order and the layout:

* c/storage (``CSTORAGE``, ``CSTORAGE_V1``): compact JSON, Go struct key order ``type, name, linkName,
  mode, size, uid, gid, modtime, accesstime, changetime, devMajor, devMinor, xattrs, digest, offset,
  endOffset, chunkSize, chunkOffset, chunkDigest, chunkType``; top level ``version, entries,
  tarSplitDigest``.
* eStargz (``STARGZ_ZSTD``, ``ESTARGZ_GZIP``): ``json.MarshalIndent(toc, "", "\\t")``, key order ``name,
  type, size, modtime, linkName, mode, uid, gid, userName, groupName, offset, innerOffset, devMajor,
  devMinor, xattrs, digest, chunkOffset, chunkSize, chunkDigest``; top level ``version, entries``.

Every key but ``type``/``name`` follows Go ``omitempty`` (absent ⇔ zero value), strings are escaped the
way Go's encoder does (``<``, ``>``, ``&``, U+2028/9 as ``\\u`` escapes, other non-ASCII raw), xattr maps
are sorted by key and their values are std padded base64. Times are kept as the exact RFC 3339 strings
(a c/storage 1.43 TOC says ``"accesstime":"0001-01-01T00:00:00Z"``; re-emitting the string keeps it
byte-exact); :func:`rfc3339_to_ns` converts.

Parsing is strict where it matters and lenient where the peers are: keys are matched case-insensitively
(c/storage lower-cases them; Go's decoder folds case), the last duplicate key wins, unknown keys and keys
belonging to the *other* schema are ignored, ``null`` means "absent", non-whitespace data after the top
object is rejected (c/storage ≥ 1.52), and every known value is type/range checked.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from fs.digest import parse_digest
from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.gojson import go_string, ns_to_rfc3339, rfc3339_to_ns

__all__ = [
    "CHUNK_TYPE_ZEROS",
    "ENTRY_TYPES",
    "MAX_TOC_SIZE",
    "PREFETCH_KEY",
    "Toc",
    "TocEntry",
    "ns_to_rfc3339",
    "parse_toc",
    "rfc3339_to_ns",
    "serialize_toc",
    "sniff_toc_dialect",
]

#: Top-level c/storage TOC key listing the files to prefetch (zsnap's extension; see :class:`Toc`).
PREFETCH_KEY = "zsnapPrefetch"
#: Cap on compressed and uncompressed TOC size (c/storage ≥ 1.58 ``maxTocSize``).
MAX_TOC_SIZE = 150 * 1024 * 1024
ENTRY_TYPES = frozenset({"reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
CHUNK_TYPE_ZEROS = "zeros"
_CHUNK_TYPES = frozenset({"", CHUNK_TYPE_ZEROS})
_INT64_MAX = (1 << 63) - 1


@dataclasses.dataclass(slots=True)
class TocEntry:
    """One TOC entry, either schema. Zero values (``""``, ``0``, ``{}``) mean "absent in the JSON".

    ``modtime``/``accesstime``/``changetime`` are the RFC 3339 strings exactly as in the JSON.
    ``xattrs`` values are raw bytes (base64-decoded). Fields a schema does not have stay zero when parsed
    and must stay zero to be serialized in that schema.
    """

    type: str
    name: str
    link_name: str = ""
    mode: int = 0
    size: int = 0
    uid: int = 0
    gid: int = 0
    user_name: str = ""
    group_name: str = ""
    modtime: str = ""
    accesstime: str = ""
    changetime: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    inner_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""

    @property
    def modtime_ns(self) -> int | None:
        """``modtime`` in ns since the epoch, or None when absent."""
        return rfc3339_to_ns(self.modtime) if self.modtime else None

    @property
    def accesstime_ns(self) -> int | None:
        """``accesstime`` in ns since the epoch, or None when absent."""
        return rfc3339_to_ns(self.accesstime) if self.accesstime else None

    @property
    def changetime_ns(self) -> int | None:
        """``changetime`` in ns since the epoch, or None when absent."""
        return rfc3339_to_ns(self.changetime) if self.changetime else None


@dataclasses.dataclass(slots=True)
class Toc:
    """A whole TOC. ``tar_split_digest`` exists only in the c/storage schema ("" = absent).

    ``prefetch`` (c/storage schema only) lists the paths a workload reads at start, in read order, under
    the top-level key ``zsnapPrefetch``. c/storage's parser skips unknown top-level keys and its
    TOC/tar-split cross-check compares entries only, so the layer stays a valid c/storage partial-pull
    layer with an unchanged diff_id, while the list is covered by the TOC digest (trusted like the TOC).
    eStargz layers express the same thing by entry order and ``.prefetch.landmark``.
    """

    version: int
    entries: list[TocEntry]
    tar_split_digest: str = ""
    prefetch: list[str] = dataclasses.field(default_factory=list)


# (json key, attribute, kind) in Go struct order.
_CSTORAGE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("type", "type", "type"),
    ("name", "name", "str"),
    ("linkName", "link_name", "str"),
    ("mode", "mode", "int"),
    ("size", "size", "int"),
    ("uid", "uid", "int"),
    ("gid", "gid", "int"),
    ("modtime", "modtime", "time"),
    ("accesstime", "accesstime", "time"),
    ("changetime", "changetime", "time"),
    ("devMajor", "dev_major", "int"),
    ("devMinor", "dev_minor", "int"),
    ("xattrs", "xattrs", "xattrs"),
    ("digest", "digest", "digest"),
    ("offset", "offset", "int"),
    ("endOffset", "end_offset", "int"),
    ("chunkSize", "chunk_size", "int"),
    ("chunkOffset", "chunk_offset", "int"),
    ("chunkDigest", "chunk_digest", "digest"),
    ("chunkType", "chunk_type", "chunktype"),
)
_ESTARGZ_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("name", "name", "str"),
    ("type", "type", "type"),
    ("size", "size", "int"),
    ("modtime", "modtime", "time"),
    ("linkName", "link_name", "str"),
    ("mode", "mode", "int"),
    ("uid", "uid", "int"),
    ("gid", "gid", "int"),
    ("userName", "user_name", "str"),
    ("groupName", "group_name", "str"),
    ("offset", "offset", "int"),
    ("innerOffset", "inner_offset", "int"),
    ("devMajor", "dev_major", "int"),
    ("devMinor", "dev_minor", "int"),
    ("xattrs", "xattrs", "xattrs"),
    ("digest", "digest", "digest"),
    ("chunkOffset", "chunk_offset", "int"),
    ("chunkSize", "chunk_size", "int"),
    ("chunkDigest", "chunk_digest", "digest"),
)
_ALL_ATTRS = tuple(f.name for f in dataclasses.fields(TocEntry))


def _fields(dialect: Dialect) -> tuple[tuple[str, str, str], ...]:
    return _CSTORAGE_FIELDS if dialect.is_cstorage else _ESTARGZ_FIELDS


_LOOKUP = {d: {key.lower(): (attr, kind) for key, attr, kind in _fields(d)} for d in Dialect}


# ---------------------------------------------------------------------------------------------- parse


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its ordered (key, value) pairs, so duplicate keys keep Go's last-wins order."""


def _reject_constant(name: str) -> Any:
    raise FormatError(f"TOC contains non-JSON constant {name}")


def sniff_toc_dialect(data: bytes) -> Dialect:
    """Tell the two zstd TOC schemas apart by layout: eStargz is indented, c/storage compact.

    Returns ``STARGZ_ZSTD`` if the JSON starts with ``{`` + newline, else ``CSTORAGE_V1``. Only needed when
    neither annotations nor the footer say which schema it is (the 40-byte footer is shared).
    """
    return Dialect.STARGZ_ZSTD if bytes(data[:2]) in (b"{\n", b"{\r") else Dialect.CSTORAGE_V1


def parse_toc(data: bytes, dialect: Dialect, *, max_size: int = MAX_TOC_SIZE) -> Toc:
    """Parse decompressed TOC JSON of the given dialect's schema.

    Args:
        data: the TOC JSON bytes (UTF-8).
        dialect: selects the schema (known keys) — c/storage or eStargz.
        max_size: reject larger inputs before parsing.

    Raises:
        FormatError: over the size cap, not UTF-8, not JSON, data after the top object, wrong top-level
            shape, eStargz version other than 1, or an entry with a wrong type / negative or out-of-range
            number / malformed digest, time or base64 (the message names the entry index and name).
    """
    if len(data) > max_size:
        raise FormatError(f"TOC of {len(data)} bytes exceeds the {max_size}-byte cap")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"TOC is not valid UTF-8: {exc}") from exc
    decoder = json.JSONDecoder(object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        top, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise FormatError(f"TOC is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise FormatError("TOC JSON nests too deeply") from exc
    if text[end:].strip(" \t\r\n"):
        raise FormatError(f"unexpected data after the TOC JSON object at byte offset {end}")
    if not isinstance(top, _Pairs):
        raise FormatError("TOC JSON is not an object")
    version: Any = 0
    raw_entries: Any = None
    tar_split_digest: Any = ""
    prefetch: Any = []
    for key, value in top:
        lk = key.lower()
        if lk == "version":
            version = value
        elif lk == "entries":
            raw_entries = value
        elif lk == "tarsplitdigest" and dialect.is_cstorage:
            tar_split_digest = "" if value is None else value
        elif lk == PREFETCH_KEY.lower() and dialect.is_cstorage:
            prefetch = [] if value is None else value
    version = 0 if version is None else version
    if not _is_int(version):
        raise FormatError(f"TOC version must be an integer, got {version!r}")
    if dialect.is_estargz and version != 1:
        raise FormatError(f"unsupported eStargz TOC version {version} (expected 1)")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list) or isinstance(raw_entries, _Pairs):
        raise FormatError("TOC 'entries' is not an array")
    if not isinstance(tar_split_digest, str):
        raise FormatError("TOC 'tarSplitDigest' is not a string")
    if tar_split_digest:
        _check_digest(tar_split_digest, "TOC tarSplitDigest")
    if not isinstance(prefetch, list) or not all(isinstance(p, str) for p in prefetch):
        raise FormatError(f"TOC {PREFETCH_KEY!r} is not an array of strings")
    lookup = _LOOKUP[dialect]
    entries = [_parse_entry(i, raw, lookup) for i, raw in enumerate(raw_entries)]
    return Toc(version=version, entries=entries, tar_split_digest=tar_split_digest, prefetch=prefetch)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_digest(value: str, what: str) -> None:
    try:
        parse_digest(value)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc.message}") from None


def _entry_label(i: int, raw: Any) -> str:
    if isinstance(raw, _Pairs):
        for k, v in reversed(raw):
            if k.lower() == "name" and isinstance(v, str):
                return f"TOC entry {i} ({v!r})"
    return f"TOC entry {i}"


def _parse_entry(i: int, raw: Any, lookup: dict[str, tuple[str, str]]) -> TocEntry:
    if not isinstance(raw, _Pairs):
        raise FormatError(f"TOC entry {i} is not an object")
    values: dict[str, Any] = {}
    for key, value in raw:
        known = lookup.get(key.lower())
        if known is None:
            continue
        attr, kind = known
        if value is None:
            values.pop(attr, None)
            continue
        try:
            values[attr] = _convert(kind, value)
        except FormatError as exc:
            raise FormatError(f"{_entry_label(i, raw)}: field {key!r}: {exc.message}") from None
    if "type" not in values:
        raise FormatError(f"{_entry_label(i, raw)}: missing 'type'")
    if "name" not in values:
        raise FormatError(f"{_entry_label(i, raw)}: missing 'name'")
    return TocEntry(**values)


def _convert(kind: str, value: Any) -> Any:
    if kind == "int":
        if not _is_int(value):
            raise FormatError(f"expected an integer, got {value!r}")
        if not 0 <= value <= _INT64_MAX:
            raise FormatError(f"{value} out of range (must be 0 ≤ n < 2^63)")
        return value
    if not isinstance(value, str) and kind != "xattrs":
        raise FormatError(f"expected a string, got {type(value).__name__}")
    if kind == "str":
        return value
    if kind == "type":
        if value not in ENTRY_TYPES:
            raise FormatError(f"unknown entry type {value!r}")
        return value
    if kind == "chunktype":
        if value not in _CHUNK_TYPES:
            raise FormatError(f"unknown chunk type {value!r}")
        return value
    if kind == "digest":
        if value:
            parse_digest(value)
        return value
    if kind == "time":
        if value:
            rfc3339_to_ns(value)
        return value
    # xattrs
    if not isinstance(value, _Pairs):
        raise FormatError("expected an object of base64 strings")
    out: dict[str, bytes] = {}
    for name, encoded in value:
        if encoded is None:
            out[name] = b""
            continue
        if not isinstance(encoded, str):
            raise FormatError(f"xattr {name!r} value is not a base64 string")
        try:
            decoded = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise FormatError(f"xattr {name!r} value is not std base64: {exc}") from None
        if base64.b64encode(decoded).decode("ascii") != encoded:
            raise FormatError(f"xattr {name!r} value is not canonical padded std base64")
        out[name] = decoded
    return out


# ---------------------------------------------------------------------------------------------- write


def _entry_pairs(entry: TocEntry, fields: tuple[tuple[str, str, str], ...], dialect: Dialect) -> list:
    allowed = {attr for _, attr, _ in fields}
    for attr in _ALL_ATTRS:
        if attr not in allowed and getattr(entry, attr):
            raise FormatError(
                f"TOC entry {entry.name!r}: field {attr} cannot be written in the {dialect.value} schema"
            )
    pairs: list[tuple[str, str | list[tuple[str, str]]]] = []
    for key, attr, kind in fields:
        value = getattr(entry, attr)
        if key in ("type", "name"):  # the only keys without omitempty
            pairs.append((key, go_string(value)))
        elif not value:
            continue
        elif kind == "int":
            pairs.append((key, str(int(value))))
        elif kind == "xattrs":
            encoded = [(go_string(k), '"' + base64.b64encode(value[k]).decode() + '"') for k in sorted(value)]
            pairs.append((key, encoded))
        else:
            pairs.append((key, go_string(value)))
    return pairs


def serialize_toc(toc: Toc, dialect: Dialect) -> bytes:
    """Serialize ``toc`` exactly as the dialect's Go writer does (no trailing newline).

    Raises:
        FormatError: ``toc`` uses a field the dialect's schema cannot express (e.g. ``inner_offset`` in
            c/storage, ``end_offset``/``tar_split_digest`` in eStargz).
    """
    fields = _fields(dialect)
    if dialect.is_estargz and toc.tar_split_digest:
        raise FormatError("tarSplitDigest cannot be written in an eStargz TOC")
    if dialect.is_estargz and toc.prefetch:
        raise FormatError("an eStargz TOC marks prefetch files by order and landmark, not a list")
    entries = [_entry_pairs(e, fields, dialect) for e in toc.entries]
    if dialect.is_cstorage:
        return _compact(toc, entries).encode("utf-8")
    return _indented(toc, entries).encode("utf-8")


def _compact(toc: Toc, entries: list[list]) -> str:
    parts = ['{"version":', str(int(toc.version)), ',"entries":[']
    for n, pairs in enumerate(entries):
        if n:
            parts.append(",")
        parts.append("{")
        for m, (key, value) in enumerate(pairs):
            if m:
                parts.append(",")
            if isinstance(value, list):
                inner = ",".join(f"{k}:{v}" for k, v in value)
                parts.append(f'"{key}":{{{inner}}}')
            else:
                parts.append(f'"{key}":{value}')
        parts.append("}")
    parts.append("]")
    if toc.tar_split_digest:
        parts.append(',"tarSplitDigest":' + go_string(toc.tar_split_digest))
    if toc.prefetch:
        parts.append(f',"{PREFETCH_KEY}":[' + ",".join(go_string(p) for p in toc.prefetch) + "]")
    parts.append("}")
    return "".join(parts)


def _indented(toc: Toc, entries: list[list]) -> str:
    if not entries:
        return '{\n\t"version": ' + str(int(toc.version)) + ',\n\t"entries": []\n}'
    parts = ['{\n\t"version": ', str(int(toc.version)), ',\n\t"entries": [\n']
    for n, pairs in enumerate(entries):
        parts.append("\t\t{\n" if not n else ",\n\t\t{\n")
        lines = []
        for key, value in pairs:
            if isinstance(value, list):
                inner = ",\n".join(f"\t\t\t\t{k}: {v}" for k, v in value)
                lines.append(f'\t\t\t"{key}": {{\n{inner}\n\t\t\t}}')
            else:
                lines.append(f'\t\t\t"{key}": {value}')
        parts.append(",\n".join(lines))
        parts.append("\n\t\t}")
    parts.append("\n\t]\n}")
    return "".join(parts)
