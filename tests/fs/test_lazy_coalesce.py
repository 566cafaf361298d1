"""Pure parts of the fetcher: range coalescing and chunk decoding."""

from __future__ import annotations

import gzip
import zlib

import pytest
import zstandard

from fs.errors import FormatError
from fs.lazy.decode import decode_chunk
from fs.lazy.fetcher import coalesce


def _ranges(groups):
    return [(g.start, g.end, g.members) for g in groups]


def test_coalesce_merges_neighbours_within_gap() -> None:
    spans = [(0, 100), (100, 200), (250, 300), (10_000, 10_100)]
    assert _ranges(coalesce(spans, max_gap=50, max_size=1 << 20)) == [
        (0, 300, [0, 1, 2]),
        (10_000, 10_100, [3]),
    ]


def test_coalesce_respects_max_size_and_keeps_big_spans_whole() -> None:
    spans = [(0, 600), (600, 1200), (1200, 1300), (1300, 5000)]
    groups = coalesce(spans, max_gap=0, max_size=1000)
    assert _ranges(groups) == [(0, 600, [0]), (600, 1300, [1, 2]), (1300, 5000, [3])]


def test_coalesce_unsorted_overlapping_and_identical() -> None:
    spans = [(500, 900), (0, 100), (500, 900), (80, 150)]
    groups = coalesce(spans, max_gap=0, max_size=10)  # overlaps merge even past max_size
    assert _ranges(groups) == [(0, 150, [1, 3]), (500, 900, [0, 2])]


def test_coalesce_empty_and_invalid() -> None:
    assert coalesce([]) == []
    with pytest.raises(ValueError):
        coalesce([(10, 5)])


def test_decode_zstd_across_frames_with_inner_offset_and_skippable() -> None:
    c = zstandard.ZstdCompressor()
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"junk"
    blob = c.compress(b"header-") + skippable + c.compress(b"payload") + c.compress(b"trailing headers")
    assert decode_chunk("zstd", blob, 7, 7) == b"payload"
    assert decode_chunk("zstd", memoryview(blob), 0, 3) == b"hea"
    with pytest.raises(FormatError):
        decode_chunk("zstd", blob, 0, 1000)
    with pytest.raises(FormatError):
        decode_chunk("zstd", b"not zstd at all", 0, 3)


def test_decode_gzip_members() -> None:
    blob = gzip.compress(b"abc") + gzip.compress(b"defgh")
    assert decode_chunk("gzip", blob, 2, 4) == b"cdef"
    raw = zlib.compress(b"x")
    with pytest.raises(FormatError):
        decode_chunk("gzip", raw, 0, 1)
    with pytest.raises(FormatError):
        decode_chunk("lz4", blob, 0, 1)
