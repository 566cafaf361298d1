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

_RFC3339_RE = re.compile(  # ASCII: Go reads only 0-9, where \d would also take other scripts' digits
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|([+-])(\d{2}):(\d{2}))", re.ASCII
)


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


@functools.lru_cache(maxsize=16384)  # layers repeat a handful of timestamps thousands of times
def rfc3339_to_ns(s: str) -> int:
    """Convert an RFC 3339 time (as Go marshals ``time.Time``) to integer ns since the Unix epoch.

    Raises:
        FormatError: not RFC 3339 or a field out of range.
    """
    if not isinstance(s, str):
        raise FormatError(f"malformed RFC 3339 time {s!r}")
    ns = _utc_to_ns(s)
    return ns if ns is not None else _rfc3339_to_ns(s)


def _utc_to_ns(s: str) -> int | None:
    """The form Go writes for UTC, ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``, without a regex (a TOC carries a
    few thousand distinct times, and parsing them was a tenth of opening a layer); None for any other."""
    n = len(s)
    if not (
        20 <= n <= 30
        and s[19] in ".Z"
        and s[-1] == "Z"
        and s[4] == "-" and s[7] == "-" and s[10] == "T" and s[13] == ":" and s[16] == ":"
        and s.isascii()
    ):  # fmt: skip
        return None
    digits = s[0:4] + s[5:7] + s[8:10] + s[11:13] + s[14:16] + s[17:19]
    frac = s[20:-1] if n > 20 else ""
    well_formed = frac.isdigit() and s[19] == "." if n > 20 else s[19] == "Z"
    if not (digits.isdigit() and well_formed):
        return None  # the general parser names the problem
    h, mi, sec = int(s[11:13]), int(s[14:16]), int(s[17:19])
    if h > 23 or mi > 59 or sec > 59:
        return None
    try:
        days = datetime.date(int(s[0:4]), int(s[5:7]), int(s[8:10])).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    return ((days * 86400 + h * 3600 + mi * 60 + sec) * 1_000_000_000) + int(frac.ljust(9, "0") or 0)


def _rfc3339_to_ns(s: str) -> int:
    m = _RFC3339_RE.fullmatch(s)
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
