"""The prefetch hint annotation (``io.github.zsnap.prefetch-ranges``): what writers put there, and what a
reader accepts from a stranger's manifest."""

from __future__ import annotations

import pytest

from fs.errors import FormatError
from fs.format import TocEntry
from fs.format.hints import (
    MAX_HINT_CHARS,
    PREFETCH_RANGES,
    encode_prefetch_hint,
    hint_ranges,
    parse_prefetch_hint,
    prefetch_hint,
)

D = "sha256:" + "1" * 64


def test_ranges_merge_across_small_gaps_only():
    spans = [(500_000, 600_000), (0, 100), (100, 200), (200 + 64 * 1024, 300_000), (150, 180)]
    assert hint_ranges(spans) == [(0, 300_000), (500_000, 600_000)]
    assert hint_ranges(spans, max_gap=0) == [(0, 200), (200 + 64 * 1024, 300_000), (500_000, 600_000)]
    assert hint_ranges([(5, 5), (9, 3)]) == []


def test_round_trip_and_the_budget_cuts_the_tail():
    ranges = [(0, 100), (1000, 5000), (9000, 9001)]
    annotations = {PREFETCH_RANGES: encode_prefetch_hint(ranges)}
    assert annotations[PREFETCH_RANGES] == "0-100,1000-5000,9000-9001"
    assert parse_prefetch_hint(annotations, 9001, max_bytes=10**9) == ranges
    assert parse_prefetch_hint(annotations, 9001, max_bytes=1100) == [(0, 100), (1000, 2000)]
    assert parse_prefetch_hint(annotations, 9001, max_bytes=0) == []
    assert parse_prefetch_hint({}, 9001, max_bytes=10**9) == []


@pytest.mark.parametrize(
    "value",
    [
        "0-100,50-200",  # overlapping
        "1000-2000,0-100",  # out of order
        "0-100,100-100",  # empty
        "0-20000",  # past the blob
        "0-100;200-300",
        "-5-10",
        "01-10",  # no leading zeros: one spelling per number
        "0-100,",
        "0x10-0x20",
        "1-99999999999999999999",
    ],
)
def test_malformed_hints_are_refused(value: str):
    with pytest.raises(FormatError, match=PREFETCH_RANGES):
        parse_prefetch_hint({PREFETCH_RANGES: value}, 10_000, max_bytes=10**9)


def test_an_overlong_hint_is_refused_unread():
    value = ",".join(f"{i * 10}-{i * 10 + 5}" for i in range(MAX_HINT_CHARS))
    with pytest.raises(FormatError, match="characters"):
        parse_prefetch_hint({PREFETCH_RANGES: value}, 10**12, max_bytes=10**9)


def test_writer_hint_covers_listed_files_and_hard_link_targets():
    entries = [
        TocEntry("dir", "usr/", mode=0o755),
        TocEntry("reg", "usr/bin/tool", size=10, digest=D, offset=100, end_offset=400),
        TocEntry("reg", "usr/lib/big.so", size=10, digest=D, offset=400, end_offset=900_000),
        TocEntry("chunk", "usr/lib/big.so", offset=500_000, chunk_offset=5),
        TocEntry("reg", "usr/lib/libc.so", size=10, digest=D, offset=900_000, end_offset=901_000),
        TocEntry("hardlink", "usr/bin/tool2", link_name="usr/lib/libc.so"),
        TocEntry("reg", "empty", size=0),
    ]
    hint = prefetch_hint(entries, ["/usr/bin/tool", "./usr/bin/tool2", "empty", "missing", "a/../b"])
    assert parse_prefetch_hint(hint, 1_000_000, max_bytes=10**9) == [(100, 400), (900_000, 901_000)]
    assert prefetch_hint(entries, []) == {} and prefetch_hint(entries, ["missing"]) == {}
