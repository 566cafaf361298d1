"""Go ``encoding/json`` compatibility: string quoting and ``time.Time`` text (RFC 3339).

Both peers are Go programs; to write TOCs byte-for-byte like them (and to read their times) we need
Go's exact string escaping (HTML-safe: ``<``, ``>``, ``&``, U+2028, U+2029 as ``\\u`` escapes; other
control characters as ``\\u00XX`` except ``\\n \\r \\t``; non-ASCII raw) and Go's RFC 3339 parsing.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import re

from fs.errors import FormatError

__all__ = ["go_string", "ns_to_rfc3339", "rfc3339_to_ns"]

_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|([+-])(\d{2}):(\d{2}))"
)


@functools.lru_cache(maxsize=4096)  # layers repeat a handful of timestamps thousands of times
def rfc3339_to_ns(s: str) -> int:
    """Convert an RFC 3339 time (as Go marshals ``time.Time``) to integer ns since the Unix epoch.

    Raises:
        FormatError: not RFC 3339 or a field out of range.
    """
    m = _RFC3339_RE.fullmatch(s) if isinstance(s, str) else None
    if m is None:
        raise FormatError(f"malformed RFC 3339 time {s!r}")
    y, mo, d, h, mi, sec = (int(m.group(i)) for i in range(1, 7))
    try:
        datetime.datetime(y, mo, d, h, mi, sec)
    except ValueError as exc:
        raise FormatError(f"invalid RFC 3339 time {s!r}: {exc}") from exc
    seconds = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0))
    if m.group(9):
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise FormatError(f"invalid RFC 3339 zone offset in {s!r}")
        offset = oh * 3600 + om * 60
        seconds -= offset if m.group(9) == "+" else -offset
    frac = m.group(7) or ""
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def ns_to_rfc3339(ns: int, *, nanos: bool = True) -> str:
    """Format ns since the epoch as Go's ``time.Time`` JSON in UTC (RFC 3339, trailing zeros trimmed).

    ``nanos=False`` drops the fraction (after rounding half up to whole seconds, as eStargz writes it).
    """
    seconds, frac = divmod(ns, 1_000_000_000)
    if not nanos:
        if frac >= 500_000_000:
            seconds += 1
        frac = 0
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


_ESCAPE_RE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _ESCAPES.get(c) or f"\\u{ord(c):04x}"


def go_string(s: str) -> str:
    """Quote ``s`` exactly like Go's ``encoding/json`` with HTML escaping (pre-1.22 control escapes)."""
    return '"' + _ESCAPE_RE.sub(_escape_char, s) + '"'
