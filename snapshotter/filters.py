"""containerd's filter syntax for ``List`` (pure, no I/O).

Grammar (containerd ``filters/parser.go``)::

    filter    := selector ( "," selector )*        all selectors must match
    selector  := fieldpath [ operator value ]       no operator: the field is present
    fieldpath := field ( "." field )*
    field     := quoted | [A-Za-z0-9_./-]+  (a bare field stops at ".")
    operator  := "==" | "!=" | "~="                 ~= is a regular-expression search
    value     := quoted | [^,\\s]+
    quoted    := '"' ... '"' (Go escapes)  |  "/" ... "/" (regex, backslash escapes "/")

A request's filters are alternatives: a snapshot is listed if any of them matches (or if there are none).
Fields known here, with containerd's meaning (``metadata/adaptors.go``): ``name``, ``parent`` (present
even when empty, so a root layer matches ``parent==""``), ``kind`` (``active``, ``committed``, ``view``)
and ``labels.<key>`` (present only if set); ``!=`` matches an absent field. A selector on any other
field is ignored (treated as matching): containerd checks the results it asked for again, so listing a
superset is safe.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import EllipsisType

from .errors import SnapshotInvalid
from .metastore import Record

__all__ = ["Selector", "matcher", "parse_filter"]

_OPERATORS = ("==", "!=", "~=")
_BARE_FIELD = re.compile(r"[A-Za-z0-9_/\-]+")
_BARE_VALUE = re.compile(r"[^,\s]+")


@dataclass(frozen=True)
class Selector:
    """One ``fieldpath [op value]`` term; ``op`` is None for a presence test."""

    path: tuple[str, ...]
    op: str | None = None
    value: str = ""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> SnapshotInvalid:
        return SnapshotInvalid(f"bad filter {self.text!r} at offset {self.pos}: {what}")

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            raise self.error("unterminated quoted string")
        body = self.text[self.pos + 1 : end]
        self.pos = end + 1
        if quote == "/":
            return body.replace("\\/", "/")
        try:
            return codecs.decode(body.encode("utf-8"), "unicode_escape").encode("latin-1").decode("utf-8")
        except (UnicodeError, ValueError):
            raise self.error("bad escape in quoted string") from None

    def token(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in '"/':
            return self.quoted()
        match = pattern.match(self.text, self.pos)
        if not match:
            raise self.error(f"expected {what}")
        self.pos = match.end()
        return match.group()


def parse_filter(text: str) -> list[Selector]:
    """Parse one filter string into its selectors (all must match).

    Raises:
        SnapshotInvalid: the string does not follow the grammar.
    """
    scanner = _Scanner(text)
    selectors = []
    while True:
        path = [scanner.token(_BARE_FIELD, "a field name")]
        while scanner.peek("."):
            scanner.pos += 1
            path.append(scanner.token(_BARE_FIELD, "a field name"))
        scanner.skip_space()
        op = next((candidate for candidate in _OPERATORS if scanner.peek(candidate)), None)
        value = ""
        if op is not None:
            scanner.pos += 2
            value = scanner.token(_BARE_VALUE, "a value")
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise scanner.error(f"bad regular expression: {exc}") from None
        selectors.append(Selector(tuple(path), op, value))
        scanner.skip_space()
        if scanner.pos == len(text):
            return selectors
        if not scanner.peek(","):
            raise scanner.error("expected ',' or the end")
        scanner.pos += 1


def _field(record: Record, path: tuple[str, ...]) -> str | EllipsisType | None:
    """The value of a field path for ``record``; None if absent; ``...`` (Ellipsis) if unknown."""
    head, rest = path[0], path[1:]
    if head == "labels" and rest:
        return record.labels.get(".".join(rest))
    if rest:
        return ...
    if head == "name":
        return record.key
    if head == "parent":
        return record.parent  # present even when empty: containerd filters a root layer by parent==""
    if head == "kind":
        return record.kind.label
    return ...


def _selector_matches(selector: Selector, record: Record) -> bool:
    value = _field(record, selector.path)
    if value is ...:
        return True
    if selector.op is None:
        return value is not None
    if selector.op == "!=":
        return value != selector.value
    if selector.op == "==":
        return value is not None and value == selector.value
    return re.search(selector.value, value or "") is not None


def matcher(filters: Sequence[str]) -> Callable[[Record], bool]:
    """A predicate for the records a List request with ``filters`` returns (any filter matches).

    Raises:
        SnapshotInvalid: a filter does not parse.
    """
    parsed = [parse_filter(text) for text in filters if text.strip()]
    if not parsed:
        return lambda record: True
    return lambda record: any(all(_selector_matches(s, record) for s in f) for f in parsed)
