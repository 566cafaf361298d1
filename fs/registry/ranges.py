"""Byte ranges over HTTP, without I/O: building ``Range`` headers, reading ``Content-Range`` and
``multipart/byteranges`` bodies, coalescing neighbours, and slicing requested ranges out of whatever came
back (parts of a 206, or a whole 200 body streamed past a :class:`SliceCollector`).

All ranges here are ``(start, end)`` with ``end`` EXCLUSIVE, like Python slices; the ``Range`` header is
inclusive and the conversion happens only in this module.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from fs.errors import FormatError

__all__ = [
    "ByteRange",
    "ContentRange",
    "RangeGroup",
    "RangePart",
    "SliceCollector",
    "batch_ranges",
    "coalesce",
    "extract",
    "parse_content_range",
    "parse_multipart_byteranges",
    "range_header",
    "suffix_range_header",
    "validate_ranges",
]

ByteRange = tuple[int, int]

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)
_BOUNDARY_RE = re.compile(r';\s*boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ContentRange:
    """A parsed ``Content-Range``: ``start``/``end`` (exclusive) are ``None`` for ``bytes */N``."""

    start: int | None
    end: int | None
    total: int | None


@dataclasses.dataclass(frozen=True)
class RangePart:
    """One part of a 206 answer: ``data`` holds blob bytes ``[start, start + len(data))``."""

    start: int
    data: bytes
    total: int | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def validate_ranges(ranges: Sequence[ByteRange], size: int | None = None) -> None:
    """Raise ``ValueError`` unless every range is ``0 <= start < end`` (and ``end <= size`` if known)."""
    for start, end in ranges:
        if start < 0 or end <= start:
            raise ValueError(f"invalid byte range [{start}, {end})")
        if size is not None and end > size:
            raise ValueError(f"byte range [{start}, {end}) beyond the blob size {size}")


def range_header(ranges: Sequence[ByteRange]) -> str:
    """``[(0, 10), (20, 30)]`` -> ``"bytes=0-9,20-29"``."""
    if not ranges:
        raise ValueError("no ranges")
    validate_ranges(ranges)
    return "bytes=" + ",".join(f"{start}-{end - 1}" for start, end in ranges)


def suffix_range_header(n: int) -> str:
    """The last ``n`` bytes: ``"bytes=-n"``."""
    if n <= 0:
        raise ValueError(f"suffix length must be positive, got {n}")
    return f"bytes=-{n}"


def parse_content_range(value: str) -> ContentRange:
    """Parse ``bytes 0-99/1088038`` (-> end 100), ``bytes */1088038`` or ``bytes 0-99/*``.

    Raises:
        FormatError: the header is malformed or inconsistent.
    """
    match = _CONTENT_RANGE_RE.match(value)
    if not match:
        raise FormatError(f"malformed Content-Range {value!r}")
    first, last, total_text = match.groups()
    total = None if total_text == "*" else int(total_text)
    if first is None:
        return ContentRange(None, None, total)
    start, end = int(first), int(last) + 1
    if end <= start or (total is not None and end > total):
        raise FormatError(f"inconsistent Content-Range {value!r}")
    return ContentRange(start, end, total)


def parse_multipart_byteranges(body: bytes, content_type: str) -> list[RangePart]:
    """Split a ``multipart/byteranges`` body into parts.

    Each part's length is taken from its ``Content-Range`` (not from searching for the boundary), so
    binary data that happens to contain the boundary cannot confuse the parser.

    Raises:
        FormatError: no boundary, a part without ``Content-Range``, or a truncated body.
    """
    match = _BOUNDARY_RE.search(content_type)
    if not content_type.lower().startswith("multipart/byteranges") or not match:
        raise FormatError(f"not a multipart/byteranges answer: {content_type!r}")
    delimiter = b"--" + (match.group(1) or match.group(2)).encode("latin-1")
    parts: list[RangePart] = []
    pos = body.find(delimiter)
    if pos < 0:
        raise FormatError("multipart/byteranges body without its boundary")
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            return parts
        header_end = body.find(b"\r\n\r\n", pos)
        sep_len = 4
        if header_end < 0:
            header_end, sep_len = body.find(b"\n\n", pos), 2
        if header_end < 0:
            raise FormatError("truncated multipart/byteranges part headers")
        content_range = None
        for line in body[pos:header_end].decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-range":
                content_range = parse_content_range(value)
        if content_range is None or content_range.start is None or content_range.end is None:
            raise FormatError("multipart/byteranges part without a usable Content-Range")
        data_start = header_end + sep_len
        data_end = data_start + (content_range.end - content_range.start)
        if data_end > len(body):
            raise FormatError("truncated multipart/byteranges part body")
        parts.append(RangePart(content_range.start, body[data_start:data_end], content_range.total))
        pos = body.find(delimiter, data_end)
        if pos < 0:
            raise FormatError("multipart/byteranges body without its closing boundary")


@dataclasses.dataclass
class RangeGroup:
    """One merged range ``[start, end)`` and the indices (into the input) of the ranges it covers."""

    start: int
    end: int
    members: list[int] = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def range(self) -> ByteRange:
        return (self.start, self.end)


def coalesce(
    ranges: Sequence[ByteRange], *, max_gap: int = 0, max_size: int | None = None
) -> list[RangeGroup]:
    """Merge byte ranges into as few requests as the limits allow.

    Ranges are ``(start, end)`` half-open, in any order. Overlapping or identical ranges always merge
    (eStargz ``innerOffset`` chunks share a frame); two ranges whose gap is ``<= max_gap`` (touching ones
    have gap 0) merge unless the merged range would grow past ``max_size`` bytes (``None``: no limit; a
    single range larger than it stays whole). Every input range is covered by exactly one group.

    Returns:
        Groups sorted by ``start``, each listing the indices of the ranges it covers in ``(start, end)``
        order (ties in input order).

    Raises:
        ValueError: a range with a negative start or ``end < start``.
    """
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], ranges[i][1]))
    groups: list[RangeGroup] = []
    for i in order:
        start, end = ranges[i]
        if start < 0 or end < start:
            raise ValueError(f"invalid byte range {ranges[i]!r}")
        if groups:
            last = groups[-1]
            overlaps = start < last.end
            near = start - last.end <= max_gap
            fits = max_size is None or max(end, last.end) - last.start <= max_size
            if overlaps or (near and fits):
                last.end = max(last.end, end)
                last.members.append(i)
                continue
        groups.append(RangeGroup(start, end, [i]))
    return groups


def batch_ranges(
    ranges: Sequence[ByteRange], *, max_ranges: int = 64, max_header: int = 4000
) -> list[list[ByteRange]]:
    """Split ranges into groups that each fit one ``Range`` header (count and length bounded)."""
    batches: list[list[ByteRange]] = []
    current: list[ByteRange] = []
    length = len("bytes=")
    for start, end in ranges:
        item = len(f"{start}-{end - 1},")
        if current and (len(current) >= max_ranges or length + item > max_header):
            batches.append(current)
            current, length = [], len("bytes=")
        current.append((start, end))
        length += item
    if current:
        batches.append(current)
    return batches


def extract(parts: Iterable[RangePart], wanted: Sequence[ByteRange]) -> list[bytes]:
    """Slice each wanted range out of the first part that covers it (parts may be merged or reordered).

    Raises:
        FormatError: some wanted range is not covered by any part.
    """
    parts = list(parts)
    out: list[bytes] = []
    for start, end in wanted:
        for part in parts:
            if part.start <= start and end <= part.end:
                out.append(part.data[start - part.start : end - part.start])
                break
        else:
            raise FormatError(f"the registry's answer does not cover bytes [{start}, {end})")
    return out


class SliceCollector:
    """Collect wanted ranges from a body streamed in order from offset ``base``, keeping only those bytes.

    Used when a registry ignores ``Range`` and sends the whole blob: memory stays proportional to what was
    asked for, not to the blob.
    """

    def __init__(self, wanted: Sequence[ByteRange], *, base: int = 0) -> None:
        self._wanted = list(wanted)
        self._pieces: list[list[bytes]] = [[] for _ in self._wanted]
        self._offset = base
        self._stop = max((end for _, end in self._wanted), default=base)

    @property
    def done(self) -> bool:
        """True once every wanted byte has gone past (the rest of the body can be dropped)."""
        return self._offset >= self._stop

    def feed(self, data: bytes) -> None:
        """Consume the next ``len(data)`` body bytes."""
        lo, hi = self._offset, self._offset + len(data)
        for i, (start, end) in enumerate(self._wanted):
            if start < hi and end > lo:
                self._pieces[i].append(data[max(start, lo) - lo : min(end, hi) - lo])
        self._offset = hi

    def results(self) -> list[bytes]:
        """The wanted ranges, in the order asked.

        Raises:
            FormatError: the body ended before a wanted range was complete.
        """
        out = []
        for (start, end), pieces in zip(self._wanted, self._pieces, strict=True):
            data = b"".join(pieces)
            if len(data) != end - start:
                raise FormatError(
                    f"body ended at {self._offset}, before bytes [{start}, {end}) were complete"
                )
            out.append(data)
        return out
