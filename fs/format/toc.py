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
import dataclasses

import msgspec

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
    "rfc3339_to_ns",
    "schema_fields",
    "serialize_toc",
]

#: Top-level c/storage TOC key listing the files to prefetch (zsnap's extension; see :class:`Toc`).
PREFETCH_KEY = "zsnapPrefetch"
#: Cap on compressed and uncompressed TOC size (c/storage ≥ 1.58 ``maxTocSize``).
MAX_TOC_SIZE = 150 * 1024 * 1024
ENTRY_TYPES = frozenset({"reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk"})
CHUNK_TYPE_ZEROS = "zeros"
_CHUNK_TYPES = frozenset({"", CHUNK_TYPE_ZEROS})
_INT64_MAX = (1 << 63) - 1


class TocEntry(msgspec.Struct, gc=False):
    """One TOC entry, either schema. Zero values (``""``, ``0``, ``{}``) mean "absent in the JSON".

    ``modtime``/``accesstime``/``changetime`` are the RFC 3339 strings exactly as in the JSON.
    ``xattrs`` values are raw bytes (base64-decoded). Fields a schema does not have stay zero when parsed
    and must stay zero to be serialized in that schema.

    A compact struct (no ``__dict__``, not tracked by the cycle collector: it holds only strings, ints and
    a str -> bytes dict), because a layer may have millions of entries. Two entries are equal when all
    their fields are, whichever parser (fast or exact) produced them.
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
    xattrs: dict[str, bytes] = {}
    digest: str = ""
    offset: int = 0
    end_offset: int = 0
    inner_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: str = ""
    chunk_type: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TocEntry):
            return NotImplemented
        return msgspec.structs.astuple(self) == msgspec.structs.astuple(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

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
_ALL_ATTRS = TocEntry.__struct_fields__


def schema_fields(dialect: Dialect) -> tuple[tuple[str, str, str], ...]:
    return _CSTORAGE_FIELDS if dialect.is_cstorage else _ESTARGZ_FIELDS


# ---------------------------------------------------------------------------------------------- write


#: One entry as ``(key, JSON text)`` pairs in schema order; xattrs as ``(JSON name, JSON value)`` pairs.
_Pairs = list[tuple[str, str | list[tuple[str, str]]]]


def _entry_pairs(entry: TocEntry, fields: tuple[tuple[str, str, str], ...], dialect: Dialect) -> _Pairs:
    allowed = {attr for _, attr, _ in fields}
    for attr in _ALL_ATTRS:
        if attr not in allowed and getattr(entry, attr):
            raise FormatError(
                f"TOC entry {entry.name!r}: field {attr} cannot be written in the {dialect.value} schema"
            )
    pairs: _Pairs = []
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
    fields = schema_fields(dialect)
    if dialect.is_estargz and toc.tar_split_digest:
        raise FormatError("tarSplitDigest cannot be written in an eStargz TOC")
    if dialect.is_estargz and toc.prefetch:
        raise FormatError("an eStargz TOC marks prefetch files by order and landmark, not a list")
    entries = [_entry_pairs(e, fields, dialect) for e in toc.entries]
    if dialect.is_cstorage:
        return _compact(toc, entries).encode("utf-8")
    return _indented(toc, entries).encode("utf-8")


def _compact(toc: Toc, entries: list[_Pairs]) -> str:
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


def _indented(toc: Toc, entries: list[_Pairs]) -> str:
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
