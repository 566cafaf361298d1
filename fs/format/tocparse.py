"""Parsing TOC JSON of either schema: a compiled fast path, and the exact reference parser behind it.

:func:`parse_toc` first decodes with msgspec straight into :class:`~fs.format.toc.TocEntry` structs, with
the types, ranges and entry types checked in C and digests and times checked in bulk afterwards (100k
entries: 0.4 s against 2.8 s for the pure-Python parser in the same run; parse + index of 1M entries
about 590 MB instead of 1.4 GB; ``scripts/bench_toc_parse.py``). That path accepts only the canonical
form every producer writes: exact key case, no ``null``, no unknown keys, no escaped surrogates. Anything
else (a key spelled ``"Name"``, a ``null``, a malformed value, a schema key of the other dialect) makes
it fall back to :func:`~fs.format.tocexact.parse_toc_exact`, the pure-Python parser with Go's semantics
(keys folded, last duplicate wins, ``null`` = absent), which accepts what Go accepts and otherwise raises
the precise :class:`~fs.errors.FormatError` naming the entry. Both paths give equal results on every
input the fast path accepts (tested property-based).

Memory is bounded before it is spent: the size cap is checked first, the number of entries is bounded
(an upper bound counted on the raw bytes for the fast path, a budget of decoded objects for the exact
one) before entries are built, a TOC that needs the exact parser (about 10x the memory per entry) is
read only up to :data:`EXACT_MAX_ENTRIES` entries, and strings that cannot be encoded as UTF-8 (a lone
UTF-16 surrogate escape) are refused at parse time, so no later stage meets them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, cast

import msgspec

from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.gojson import rfc3339_to_ns
from fs.format.toc import (
    _CHUNK_TYPES,
    _INT64_MAX,
    ENTRY_TYPES,
    MAX_TOC_SIZE,
    Toc,
    TocEntry,
    schema_fields,
)
from fs.format.tocexact import TooManyEntries, parse_toc_exact, too_many_entries, xattr_value
from fs.limits import DEFAULT_LIMITS

__all__ = ["parse_toc", "sniff_toc_dialect"]

_U64 = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
_DIGEST_RE = re.compile(r"(?:sha256:[0-9a-f]{64})?")
_PREFIX = b"sha256:"
_RECORD = len(_PREFIX) + 64 + 1  # digest + newline


def _all_digests(digests: list[str]) -> bool:
    """True if every string is ``sha256:`` + 64 lowercase hex, checked in a few C passes over all of them.

    A per-value regex (or a msgspec ``pattern``, which calls back into ``re``) costs ~3 µs a digest: 3 s
    for a 1M-entry TOC. Here the digests are joined with newlines and checked by position: every record
    has the prefix and the newline at fixed offsets, and deleting lowercase hex digits and newlines leaves
    exactly the prefixes' non-hex letters.
    """
    if not digests:
        return True
    try:
        joined = ("\n".join(digests) + "\n").encode("ascii")
    except UnicodeEncodeError:
        return False
    n = len(digests)
    if len(joined) != n * _RECORD or joined.count(b"\n") != n or joined[_RECORD - 1 :: _RECORD] != b"\n" * n:
        return False
    if any(joined[k::_RECORD] != _PREFIX[k : k + 1] * n for k in range(len(_PREFIX))):
        return False
    return joined.translate(None, b"0123456789abcdef\n") == b"sh:" * n


#: Prefix of the keys the fast path gives to attributes a schema lacks (never decoded: see parse_toc).
_FOREIGN = "zsnap-not-in-schema:"
_TYPE = Literal["reg", "dir", "symlink", "hardlink", "char", "block", "fifo", "chunk"]
_CHUNK_TYPE = Literal["", "zeros"]
assert set(_TYPE.__args__) == ENTRY_TYPES and set(_CHUNK_TYPE.__args__) == _CHUNK_TYPES  # type: ignore[attr-defined]


def _decode_type(dialect_fields: tuple[tuple[str, str, str], ...], name: str) -> type[TocEntry]:
    """A :class:`TocEntry` subclass msgspec decodes one schema's entries into (unknown keys refused).

    Attributes the schema lacks are renamed to keys starting with :data:`_FOREIGN` (a TOC containing
    that text is left to the exact parser), so they stay zero; xattrs are decoded as base64 text and
    converted afterwards (msgspec's own base64 decoder does not insist on the canonical padded form).
    """
    rename = {attr: key for key, attr, _ in dialect_fields}
    for attr in TocEntry.__struct_fields__:
        rename.setdefault(attr, f"{_FOREIGN}{attr}")
    annotations = {
        "type": _TYPE,
        "name": str,
        "link_name": str,
        "user_name": str,
        "group_name": str,
        "modtime": str,
        "accesstime": str,
        "changetime": str,
        "xattrs": dict[str, str],
        "digest": str,
        "chunk_digest": str,
        "chunk_type": _CHUNK_TYPE,
    }
    for attr in TocEntry.__struct_fields__:
        annotations.setdefault(attr, _U64)
    blank = TocEntry("reg", "")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("type", _TYPE), ("name", str)]
    fields += [(attr, annotations[attr], getattr(blank, attr)) for attr in TocEntry.__struct_fields__[2:]]
    struct = msgspec.defstruct(
        name,
        fields,
        bases=(TocEntry,),
        rename=rename,
        forbid_unknown_fields=True,
        gc=False,
        module=__name__,
    )
    return cast(type[TocEntry], struct)  # defstruct is typed as returning type[Struct]; bases=(TocEntry,)


_CSTORAGE_ENTRY = _decode_type(schema_fields(Dialect.CSTORAGE), "_CStorageTocEntry")
_ESTARGZ_ENTRY = _decode_type(schema_fields(Dialect.STARGZ_ZSTD), "_EstargzTocEntry")


class _CStorageTop(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 0
    entries: list[_CSTORAGE_ENTRY] = []  # type: ignore[valid-type]
    tarSplitDigest: str = ""
    zsnapPrefetch: list[str] = []


class _EstargzTop(msgspec.Struct, forbid_unknown_fields=True):
    version: int = 0
    entries: list[_ESTARGZ_ENTRY] = []  # type: ignore[valid-type]


_DECODERS: dict[Dialect, msgspec.json.Decoder[_CStorageTop | _EstargzTop]] = {
    d: msgspec.json.Decoder(_CStorageTop if d.is_cstorage else _EstargzTop) for d in Dialect
}


def _parse_toc_fast(data: bytes, dialect: Dialect) -> Toc | str:
    """The compiled path: a :class:`Toc`, or why the input is not in canonical form (then fall back)."""
    try:
        top = _DECODERS[dialect].decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return str(exc)
    if dialect.is_estargz and top.version != 1:
        return f"eStargz TOC version {top.version}"
    entries: list[TocEntry] = top.entries
    digests = [e.digest for e in entries if e.digest] + [e.chunk_digest for e in entries if e.chunk_digest]
    split = top.tarSplitDigest if isinstance(top, _CStorageTop) else ""
    if not _all_digests(digests) or not _DIGEST_RE.fullmatch(split):
        return "a malformed digest"
    times = {e.modtime for e in entries} | {e.accesstime for e in entries} | {e.changetime for e in entries}
    times.discard("")
    for t in times:
        try:
            rfc3339_to_ns(t)
        except FormatError as exc:
            return exc.message
    for e in entries:
        if e.xattrs:
            try:
                # the fast-path entry types decode xattrs as base64 text (see _decode_type)
                e.xattrs = _decode_xattrs(cast(dict[str, str], e.xattrs))
            except FormatError as exc:
                return exc.message
    prefetch = top.zsnapPrefetch if isinstance(top, _CStorageTop) else []
    return Toc(version=top.version, entries=entries, tar_split_digest=split, prefetch=prefetch)


#: The exact parser builds a Python object per JSON value (about 10x the compiled path's memory); TOCs
#: not in the canonical form no known producer departs from are read that way only up to this size.
EXACT_MAX_ENTRIES = 100_000


def parse_toc(
    data: bytes, dialect: Dialect, *, max_size: int = MAX_TOC_SIZE, max_entries: int | None = None
) -> Toc:
    """Parse decompressed TOC JSON of the given dialect's schema.

    Args:
        data: the TOC JSON bytes (UTF-8).
        dialect: selects the schema (known keys) — c/storage or eStargz.
        max_size: reject larger inputs before parsing.
        max_entries: reject TOCs with more entries (default: ``DEFAULT_LIMITS.max_toc_entries``), before
            they are built. A TOC not in the canonical form (see the module docstring) is read only up to
            :data:`EXACT_MAX_ENTRIES` entries.

    Raises:
        FormatError: over the size or entry cap, not UTF-8, not JSON, data after the top object, wrong
            top-level shape, eStargz version other than 1, or an entry with a wrong type / negative or
            out-of-range number / malformed digest, time or base64 / a lone UTF-16 surrogate in a string
            (the message names the entry index and name).
    """
    if len(data) > max_size:
        raise FormatError(f"TOC of {len(data)} bytes exceeds the {max_size}-byte cap")
    limit = DEFAULT_LIMITS.max_toc_entries if max_entries is None else max_entries
    data = bytes(data)
    # Every entry of the canonical form has a "type" key: an upper bound on the entries, counted in C.
    types = data.count(b'"type"')
    if types > limit:
        problem = too_many_entries(f"up to {types}", limit)
    elif _FOREIGN.encode() in data:
        problem = f"contains {_FOREIGN!r}"
    else:
        toc = _parse_toc_fast(data, dialect)
        if isinstance(toc, Toc):
            return toc
        problem = toc
    exact_limit = min(limit, EXACT_MAX_ENTRIES)
    try:
        return parse_toc_exact(data, dialect, max_size=max_size, max_entries=exact_limit)
    except TooManyEntries:
        if exact_limit == limit:
            raise
        raise FormatError(
            f"TOC is not in the canonical form producers write ({problem}) and has more than "
            f"{exact_limit} entries, the most zsnap reads in that form"
        ) from None


def _decode_xattrs(encoded: dict[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, text in encoded.items():
        out[name] = xattr_value(name, text)
    return out


def sniff_toc_dialect(data: bytes) -> Dialect:
    """Tell the two zstd TOC schemas apart by layout: eStargz is indented, c/storage compact.

    Returns ``STARGZ_ZSTD`` if the JSON starts with ``{`` + newline, else ``CSTORAGE_V1``. Only needed when
    neither annotations nor the footer say which schema it is (the 40-byte footer is shared).
    """
    return Dialect.STARGZ_ZSTD if bytes(data[:2]) in (b"{\n", b"{\r") else Dialect.CSTORAGE_V1
