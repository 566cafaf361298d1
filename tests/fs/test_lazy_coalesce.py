"""Pure parts of the fetcher: how it groups chunks into range requests, and chunk decoding."""

from __future__ import annotations

import gzip
import zlib

import pytest
import zstandard

from fs.errors import FormatError
from fs.lazy import fetcher
from fs.lazy.decode import decode_chunk
from fs.registry.ranges import RangeGroup, coalesce


def _groups(groups: list[RangeGroup]) -> list[tuple[int, int, list[int]]]:
    return [(g.start, g.end, g.members) for g in groups]


def test_fetcher_groups_chunks_with_the_one_coalesce() -> None:
    """The fetcher has no coalescing of its own: its groups are :func:`fs.registry.ranges.coalesce`'s
    with the fetcher's gap and request bounds (the general cases are tested in test_registry_pure.py)."""
    assert not hasattr(fetcher, "coalesce") or fetcher.coalesce is coalesce
    gap, cap = fetcher.DEFAULT_MAX_GAP, fetcher.DEFAULT_MAX_REQUEST
    spans = [
        (0, 1000),
        (1000 + gap, 2000 + gap),  # exactly max_gap away: merged
        (2001 + 2 * gap, 3000 + 2 * gap),  # one byte further: a new request
        (2001 + 2 * gap, 2500 + 2 * gap),  # eStargz innerOffset chunks share a frame: always merged
        (10 * cap, 11 * cap + 1),  # bigger than the request bound: stays whole
        (11 * cap + 1, 11 * cap + 2),  # touching, but the merged range would pass the bound
    ]
    assert _groups(coalesce(spans, max_gap=gap, max_size=cap)) == [
        (0, 2000 + gap, [0, 1]),
        (2001 + 2 * gap, 3000 + 2 * gap, [3, 2]),
        (10 * cap, 11 * cap + 1, [4]),
        (11 * cap + 1, 11 * cap + 2, [5]),
    ]


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
