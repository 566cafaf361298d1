"""The prefetch hint: where a layer's prefetch list lies in its blob, said in the manifest.

A reader learns which chunks to prefetch only from the TOC, which it must fetch, decompress, verify and
index first: on a 2 GB image that is 0.3-0.5 s during which the link that the prefetch needs sits idle.
``zsnap convert --prefetch-list`` therefore also writes the compressed byte ranges of the listed files
(coalesced, in blob order) into the layer descriptor:

    io.github.zsnap.prefetch-ranges: "1234-56789,60000-61000"

so that the lazy host can fetch them while that TOC is still being verified and parsed
(:mod:`fs.lazy.early`).

The hint is advisory and untrusted. Its bytes are never used before the TOC is verified: they reach the
read path only as the raw material of chunks that are then decoded and checked against the TOC's digests,
like bytes from the registry. A wrong hint costs bandwidth, bounded by the reader's budget; a malformed
one is ignored (:func:`parse_prefetch_hint` raises, the host logs it). Readers that do not know the key
(c/storage, stargz-snapshotter) skip it; the TOC's own prefetch list stays the authority.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping, Sequence

from fs.errors import FormatError
from fs.format.toc import TocEntry
from fs.format.tree import normalize_name

__all__ = [
    "HINT_GAP",
    "MAX_HINT_CHARS",
    "PREFETCH_RANGES",
    "encode_prefetch_hint",
    "hint_ranges",
    "parse_prefetch_hint",
    "prefetch_hint",
]

PREFETCH_RANGES = "io.github.zsnap.prefetch-ranges"
#: Ranges closer than this are written as one: the reader's fetcher coalesces over the same gap
#: (``fs.lazy.fetcher.DEFAULT_MAX_GAP``), so the hint covers exactly the spans it will ask for.
HINT_GAP = 64 * 1024
#: A longer annotation is refused unread (about 1,500 ranges of 10-digit offsets).
MAX_HINT_CHARS = 32 * 1024

_RANGE = re.compile(r"(0|[1-9][0-9]{0,15})-([1-9][0-9]{0,15})")


def hint_ranges(spans: Iterable[tuple[int, int]], *, max_gap: int = HINT_GAP) -> list[tuple[int, int]]:
    """``spans`` (``[start, end)`` in any order, overlaps allowed) sorted and merged where the gap
    between two is at most ``max_gap``."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if out and start - out[-1][1] <= max_gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def prefetch_hint(entries: Sequence[TocEntry], prefetch: Sequence[str]) -> dict[str, str]:
    """The hint annotation for a c/storage TOC's ``entries`` (offsets final) and its prefetch list: the
    compressed ranges of the listed files' frames (a hard link's: its target's); {} when none is found.

    A name the index would refuse is skipped, as :func:`fs.format.index.build_index` skips it."""
    wanted = set()
    for path in prefetch:
        with contextlib.suppress(FormatError):
            wanted.add(normalize_name(path))
    files: dict[str, TocEntry] = {}
    links: dict[str, str] = {}
    for e in entries:
        try:
            if e.type == "reg":
                files[normalize_name(e.name)] = e
            elif e.type == "hardlink" and (name := normalize_name(e.name)) in wanted:
                links[name] = normalize_name(e.link_name)
        except FormatError:
            continue
    spans = []
    for path in wanted:
        found = files.get(links.get(path, path))
        if found is not None and found.end_offset > found.offset:
            spans.append((found.offset, found.end_offset))
    ranges = hint_ranges(spans)
    return {PREFETCH_RANGES: encode_prefetch_hint(ranges)} if ranges else {}


def encode_prefetch_hint(ranges: Iterable[tuple[int, int]]) -> str:
    """The annotation value for sorted, disjoint ``ranges``."""
    return ",".join(f"{start}-{end}" for start, end in ranges)


def parse_prefetch_hint(
    annotations: Mapping[str, str], blob_size: int, *, max_bytes: int
) -> list[tuple[int, int]]:
    """The hinted ranges of a layer (``[]`` without the annotation), cut to the first ``max_bytes``.

    Raises:
        FormatError: the value is too long, not ``START-END`` pairs, not sorted and disjoint, or reaches
            past the blob's ``blob_size`` bytes.
    """
    value = annotations.get(PREFETCH_RANGES)
    if value is None or value == "":
        return []
    if len(value) > MAX_HINT_CHARS:
        raise FormatError(f"{PREFETCH_RANGES}: {len(value)} characters (more than {MAX_HINT_CHARS})")
    out: list[tuple[int, int]] = []
    budget = max_bytes
    last_end = 0
    for part in value.split(","):
        m = _RANGE.fullmatch(part)
        if m is None:
            raise FormatError(f"{PREFETCH_RANGES}: {part[:40]!r} is not START-END")
        start, end = int(m[1]), int(m[2])
        if not last_end <= start < end <= blob_size:
            raise FormatError(
                f"{PREFETCH_RANGES}: range {start}-{end} is empty, out of order or past the blob "
                f"({blob_size} bytes)"
            )
        last_end = end
        if budget > 0:
            take = min(end - start, budget)
            out.append((start, start + take))
            budget -= take
    return out
