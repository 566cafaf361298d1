"""The reference TOC parser: pure Python, Go's ``encoding/json`` semantics, exact errors.

:func:`fs.format.tocparse.parse_toc` reads the canonical form every producer writes with its compiled
path and falls back to :func:`parse_toc_exact` for anything else: keys are matched case-insensitively,
the last of duplicate keys wins and ``null`` means absent, as Go decodes them; what Go would refuse (and
what zsnap refuses beyond it: out-of-range numbers, malformed digests, times or base64, a lone UTF-16
surrogate) raises a :class:`~fs.errors.FormatError` naming the entry. It builds a Python object per JSON
value (about 10x the compiled path's memory), so its objects are counted while they are decoded and the
decoding stops as soon as more were built than the entry limit allows.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from fs.digest import parse_digest
from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.gojson import rfc3339_to_ns
from fs.format.toc import (
    _CHUNK_TYPES,
    _INT64_MAX,
    ENTRY_TYPES,
    MAX_TOC_SIZE,
    PREFETCH_KEY,
    Toc,
    TocEntry,
    schema_fields,
)

__all__ = ["TooManyEntries", "parse_toc_exact", "too_many_entries", "xattr_value"]

_LOOKUP = {d: {key.lower(): (attr, kind) for key, attr, kind in schema_fields(d)} for d in Dialect}


class TooManyEntries(FormatError):
    """More entries than allowed (raised before they are all built)."""


def too_many_entries(n: int | str, limit: int) -> str:
    """The message for a TOC of ``n`` entries over ``limit``."""
    return f"TOC has {n} entries, more than the limit of {limit} (max-toc-entries)"


def xattr_value(name: str, encoded: str) -> bytes:
    """An xattr value from its JSON text: canonical padded std base64, else :class:`FormatError`."""
    try:
        decoded = binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise FormatError(f"xattr {name!r} value is not std base64: {exc}") from None
    if base64.b64encode(decoded).decode("ascii") != encoded:
        raise FormatError(f"xattr {name!r} value is not canonical padded std base64")
    return decoded


def _check_text(value: str, what: str) -> None:
    """Refuse strings that are not valid Unicode text (a lone UTF-16 surrogate from a ``\\ud800`` escape)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FormatError(f"{what} {value!r} contains a lone UTF-16 surrogate") from None


def _object_budget(max_entries: int) -> Callable[[list[tuple[str, Any]]], _Pairs]:
    """An ``object_pairs_hook`` that stops decoding once more objects were built than entries allowed.

    Each entry is one object and may hold one xattrs object: ``2 * max_entries + 1`` objects are enough
    for any TOC within the limit, and the json module's memory stays bounded for one beyond it.
    """
    budget = 2 * max_entries + 1 if max_entries else 0
    count = 0

    def hook(pairs: list[tuple[str, Any]]) -> _Pairs:
        nonlocal count
        count += 1
        if budget and count > budget:
            raise TooManyEntries(too_many_entries(f"more than {max_entries}", max_entries))
        return _Pairs(pairs)

    return hook


class _Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its ordered (key, value) pairs, so duplicate keys keep Go's last-wins order."""


def _reject_constant(name: str) -> Any:
    raise FormatError(f"TOC contains non-JSON constant {name}")


def parse_toc_exact(
    data: bytes, dialect: Dialect, *, max_size: int = MAX_TOC_SIZE, max_entries: int = 0
) -> Toc:
    """Parse TOC JSON of ``dialect``'s schema (see the module docstring).

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
    decoder = json.JSONDecoder(object_pairs_hook=_object_budget(max_entries), parse_constant=_reject_constant)
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
    for p in prefetch:
        _check_text(p, f"TOC {PREFETCH_KEY!r}")
    if max_entries and len(raw_entries) > max_entries:
        raise TooManyEntries(too_many_entries(len(raw_entries), max_entries))
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
        _check_text(value, "string")
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
        _check_text(name, "xattr name")
        if encoded is None:
            out[name] = b""
            continue
        if not isinstance(encoded, str):
            raise FormatError(f"xattr {name!r} value is not a base64 string")
        out[name] = xattr_value(name, encoded)
    return out
