"""fs.lazy.readahead: blob-order read-ahead windows (pure bookkeeping, no I/O)."""

from __future__ import annotations

import pytest

from fs.format.tree import Chunk
from fs.lazy.readahead import BlobReadahead

KIB = 1024
CHUNK = 64 * KIB


def blob(n: int) -> list[Chunk]:
    """``n`` contiguous 64 KiB (compressed) chunks, one per file, in blob order."""
    return [Chunk(0, 2 * CHUNK, i * CHUNK, (i + 1) * CHUNK, f"sha256:{i:064x}") for i in range(n)]


def span(chunks: list[Chunk]) -> int:
    return chunks[-1].compressed_end - chunks[0].compressed_offset if chunks else 0


def test_an_isolated_miss_fetches_nothing_extra() -> None:
    ra = BlobReadahead(min_window=4 * CHUNK, max_window=64 * CHUNK)
    chunks = blob(1000)
    assert ra.on_read("L", chunks, chunks[500], missed=True) == []
    assert ra.on_read("L", chunks, chunks[10], missed=True) == []  # a jump backwards: still random
    assert ra.on_read("L", chunks, chunks[700], missed=True) == []


def test_sequential_misses_open_a_window_that_doubles() -> None:
    ra = BlobReadahead(min_window=4 * CHUNK, max_window=32 * CHUNK)
    chunks = blob(1000)
    assert ra.on_read("L", chunks, chunks[0], missed=True) == []
    first = ra.on_read("L", chunks, chunks[1], missed=True)  # follows the first miss: sequential
    assert first == chunks[2:6]  # the window starts after the missed chunk
    # the reader runs past the window before it is fetched: the next window is twice as big
    second = ra.on_read("L", chunks, chunks[6], missed=True)
    assert second == chunks[7:15]
    sizes = [span(second)]
    pos = 15
    for _ in range(4):
        more = ra.on_read("L", chunks, chunks[pos], missed=True)
        sizes.append(span(more))
        pos = chunks.index(more[-1]) + 1
    assert sizes == [8 * CHUNK, 16 * CHUNK, 32 * CHUNK, 32 * CHUNK, 32 * CHUNK]  # capped at max_window


def test_reaching_the_second_half_fetches_the_next_window_once() -> None:
    ra = BlobReadahead(min_window=4 * CHUNK, max_window=64 * CHUNK)
    chunks = blob(1000)
    ra.on_read("L", chunks, chunks[0], missed=True)
    window = ra.on_read("L", chunks, chunks[1], missed=True)
    assert window == chunks[2:6]
    assert ra.on_read("L", chunks, chunks[2], missed=False) == []  # first half: nothing yet
    assert ra.on_read("L", chunks, chunks[3], missed=True) == []  # still in flight: no new window
    ahead = ra.on_read("L", chunks, chunks[4], missed=False)  # the second half: the next window, now
    assert ahead == chunks[6:14]
    assert ra.on_read("L", chunks, chunks[5], missed=False) == []  # fetched ahead already: nothing twice
    assert ra.on_read("L", chunks, chunks[10], missed=False) == chunks[14:30]  # and so on, doubling


def test_hits_outside_a_window_and_other_blobs_are_left_alone() -> None:
    ra = BlobReadahead(min_window=4 * CHUNK, max_window=64 * CHUNK)
    chunks = blob(100)
    assert ra.on_read("L", chunks, chunks[40], missed=False) == []  # background fetched it: no window
    ra.on_read("A", chunks, chunks[0], missed=True)
    assert ra.on_read("B", chunks, chunks[1], missed=True) == []  # windows are per blob
    assert ra.on_read("A", chunks, chunks[1], missed=True) == chunks[2:6]
    ra.forget("A")
    assert ra.on_read("A", chunks, chunks[6], missed=True) == []  # forgotten: a fresh start


def test_the_window_stops_at_the_end_of_the_blob() -> None:
    ra = BlobReadahead(min_window=4 * CHUNK, max_window=64 * CHUNK)
    chunks = blob(5)
    ra.on_read("L", chunks, chunks[2], missed=True)
    assert ra.on_read("L", chunks, chunks[3], missed=True) == chunks[4:]
    assert ra.on_read("L", chunks, chunks[4], missed=True) == []


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError):
        BlobReadahead(min_window=0)
    with pytest.raises(ValueError):
        BlobReadahead(min_window=2 * CHUNK, max_window=CHUNK)
