"""Blob-order read-ahead: a reader that walks a layer's files in the order they were written stops waiting.

``find | xargs sha256sum``, ``tar c``, a copy of a directory, an interpreter importing a package: they read
file after file in directory order, which for a converted layer is the order of its blob. Each file is its
own chunk, so without read-ahead every file is a miss and a round trip. Like the kernel's read-ahead for a
disk (mm/readahead.c), a miss that follows the previous one in the blob also fetches the chunks that
*follow in the blob*, in a window that doubles while the reader keeps walking into it; a jump elsewhere
drops it, and an isolated miss fetches nothing extra. A read that reaches the second half of the window
fetches the next window before the reader gets there (asynchronous read-ahead), so a sequential reader
finds its chunks fetched.

A start-up workload reads a few scattered files and seldom grows a window past :data:`MIN_WINDOW`. The
windows' fetches go at :attr:`~fs.lazy.scheduler.Priority.PREFETCH` (after on-demand reads, before
background fetch); a reader that needs a chunk of a window promotes its fetch to on-demand. Pure
bookkeeping, no I/O: :class:`~fs.lazy.fetcher.ChunkFetcher` asks which chunks to fetch and fetches them.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from fs.format.tree import Chunk

__all__ = ["MAX_WINDOW", "MIN_WINDOW", "BlobReadahead"]

#: compressed bytes fetched ahead once a second miss follows the first in the blob
MIN_WINDOW = 512 * 1024
#: the window stops doubling here (a few requests of ``max-request`` size; memory held until stored)
MAX_WINDOW = 16 * 1024 * 1024


def _compressed_offset(c: Chunk) -> int:
    return c.compressed_offset


class _Window:
    __slots__ = ("end", "lo", "size", "start", "trigger")

    def __init__(self) -> None:
        self.size = 0
        self.lo = self.start = self.end = self.trigger = -1  # lo: start of the window before this one


class BlobReadahead:
    """Read-ahead windows, one per blob (keyed by the caller, e.g. the layer digest).

    ``blob_chunks`` arguments are the layer's fetchable chunks sorted by compressed offset
    (:meth:`~fs.lazy.layer.OpenedLayer.chunks_by_offset`); the returned chunks may include cached ones
    (the fetcher skips those). Each call costs a dict lookup unless a window moves, which happens once
    per half window.
    """

    def __init__(self, *, min_window: int = MIN_WINDOW, max_window: int = MAX_WINDOW) -> None:
        if not 0 < min_window <= max_window:
            raise ValueError("need 0 < min_window <= max_window")
        self.min_window = min_window
        self.max_window = max_window
        self._windows: dict[str, _Window] = {}

    def on_read(self, key: str, blob_chunks: Sequence[Chunk], last: Chunk, *, missed: bool) -> list[Chunk]:
        """A read reached ``last`` (its furthest chunk), which was cached or not (``missed``): the chunks
        to fetch ahead, usually []."""
        w = self._windows.get(key)
        off = last.compressed_offset
        if w is not None and w.lo <= off < w.end:  # walking through what was fetched ahead
            if w.trigger < 0 or off < w.trigger:
                return []
            w.size = min(w.size * 2, self.max_window)  # reached the second half: the next window now
            return self._advance(w, blob_chunks, w.end)
        if not missed:
            return []  # cached by background fetch or another reader: nothing to do
        if w is None:
            w = self._windows[key] = _Window()
        if w.end >= 0 and w.end <= off <= w.end + max(w.size, self.min_window):  # sequential
            w.size = min(max(w.size * 2, self.min_window), self.max_window)
            w.start = -1  # nothing before this miss counts as fetched ahead
            return self._advance(w, blob_chunks, last.compressed_end)
        # an isolated miss costs nothing extra: remember where it ended, in case the next one follows
        w.size, w.trigger = 0, -1
        w.lo = w.start = off
        w.end = last.compressed_end
        return []

    def forget(self, key: str) -> None:
        """Drop the window of a blob no longer served."""
        self._windows.pop(key, None)

    def _advance(self, w: _Window, blob_chunks: Sequence[Chunk], start: int) -> list[Chunk]:
        i = bisect.bisect_left(blob_chunks, start, key=_compressed_offset)
        out: list[Chunk] = []
        end = start
        while i < len(blob_chunks) and end - start < w.size:
            c = blob_chunks[i]
            out.append(c)
            end = max(end, c.compressed_end)
            i += 1
        w.lo = w.start if w.start >= 0 else start
        w.start, w.end = start, end
        w.trigger = start + (end - start) // 2 if out else -1
        return out
