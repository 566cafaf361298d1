"""Content-defined chunking of file payloads (FORMAT.md §1.5), in bounded memory.

Boundaries come from FastCDC (pyfastcdc's compiled Gear hash, ~64 KiB average chunks) instead of
c/storage's bup rollsum: the TOC records every boundary, so readers do not care how they were found. As
in c/storage, every run of at least :data:`HOLE_THRESHOLD` (1024) zero bytes becomes a chunk of its own,
marked ``zeros``; runs are found with ``bytes.find`` (a C memmem) and block compares, never a per-byte
Python loop.

Payloads of at least :data:`LARGE_FILE` bytes (model weights, databases, archives) are cut into ~512 KiB
chunks instead: every chunk is a TOC entry with its own digest, and at ~64 KiB a 10 GB image of such
files carried a 9 MB TOC that every lazy mount must fetch and parse before its first read. eStargz cuts at
4 MiB, nydus at 1 MiB; small and mid-sized files (binaries, libraries, whose pages are read here and there)
keep the fine chunks.

Big payloads are processed in windows of ``window`` bytes: the last chunk of a window, which FastCDC may
have cut only because the buffer ended, is carried into the next window and re-chunked with the new data,
so memory stays ``O(window)`` whatever the file size. A zero run reaching the end of a window is carried
too, unless it is already ≥ :data:`ZERO_CARRY_LIMIT`, in which case it is emitted (a long hole then
becomes several adjacent ``zeros`` chunks, each at most about one window long).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pyfastcdc

__all__ = [
    "AVG_SIZE",
    "HOLE_THRESHOLD",
    "LARGE_AVG_SIZE",
    "LARGE_FILE",
    "SINGLE_CHUNK_MAX",
    "Chunker",
]

#: Zero runs at least this long become ``zeros`` chunks (c/storage ``holesThreshold``).
HOLE_THRESHOLD = 1024
#: FastCDC parameters; the resulting mean chunk is ~64-70 KiB (pyfastcdc's average is avg + min).
AVG_SIZE = 49152
MIN_SIZE = 12288
MAX_SIZE = 256 * 1024
#: Payloads of at least this size get the large-file parameters (mean chunk ~512 KiB).
LARGE_FILE = 16 << 20
LARGE_AVG_SIZE = 448 * 1024
LARGE_MIN_SIZE = 64 * 1024
LARGE_MAX_SIZE = 2 << 20
#: Payloads up to this size are not content-chunked (only zero runs split them): one chunk on average.
SINGLE_CHUNK_MAX = 64 * 1024
#: A zero run touching the end of a window is carried over only while shorter than this.
ZERO_CARRY_LIMIT = 1 << 20
DEFAULT_WINDOW = 8 << 20

_ZEROS_PROBE = bytes(HOLE_THRESHOLD)
_BLOCK = 64 * 1024
_ZERO_BLOCK = bytes(_BLOCK)
_NONZERO = re.compile(rb"[^\x00]")

#: A chunk: (data, is_zeros). ``data`` is a bytes object or a memoryview into a window buffer.
Piece = tuple["bytes | memoryview", bool]


def _zero_run_end(buf: bytes, start: int, end: int) -> int:
    """Index of the first non-zero byte in ``buf[start:end]``, or ``end``."""
    pos = start
    mv = memoryview(buf)
    while end - pos >= _BLOCK:
        if mv[pos : pos + _BLOCK] != _ZERO_BLOCK:
            break
        pos += _BLOCK
    m = _NONZERO.search(buf, pos, end)
    return m.start() if m else end


class Chunker:
    """Cuts payloads into ``(data, is_zeros)`` pieces; reusable, not thread-safe (one per thread).

    Args:
        window: bytes read per step for large payloads (memory bound ≈ 2 windows + one carried chunk).
    """

    def __init__(self, *, window: int = DEFAULT_WINDOW) -> None:
        if window < max(ZERO_CARRY_LIMIT, 2 * LARGE_MAX_SIZE):
            raise ValueError(
                f"chunker window {window} is smaller than {max(ZERO_CARRY_LIMIT, 2 * LARGE_MAX_SIZE)}"
            )
        self._cdc = pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE)
        self._large_cdc = pyfastcdc.FastCDC(LARGE_AVG_SIZE, min_size=LARGE_MIN_SIZE, max_size=LARGE_MAX_SIZE)
        self.window = window

    # ------------------------------------------------------------------------------------ one buffer

    def regions(self, buf: bytes) -> list[tuple[int, int, bool]]:
        """Split ``buf`` into maximal ``(start, end, is_zeros)`` regions (zero runs ≥ 1024 bytes)."""
        n = len(buf)
        if n < HOLE_THRESHOLD:
            return [(0, n, False)] if n else []
        out: list[tuple[int, int, bool]] = []
        pos = 0
        while True:
            hole = buf.find(_ZEROS_PROBE, pos)
            if hole < 0:
                if pos < n:
                    out.append((pos, n, False))
                return out
            if hole > pos:
                out.append((pos, hole, False))
            end = _zero_run_end(buf, hole + HOLE_THRESHOLD, n)
            out.append((hole, end, True))
            pos = end

    def split(self, buf: bytes) -> list[tuple[int, int, bool]]:
        """All chunk boundaries of a complete payload held in memory: ``[(start, end, is_zeros), ...]``."""
        n = len(buf)
        if n < HOLE_THRESHOLD or (n <= SINGLE_CHUNK_MAX and buf.find(_ZEROS_PROBE) < 0):
            return [(0, n, False)] if n else []
        whole = MIN_SIZE if n > SINGLE_CHUNK_MAX else SINGLE_CHUNK_MAX
        return self._cut(buf, self.regions(buf), whole, large=n >= LARGE_FILE)

    def _cut(
        self, buf: bytes, regions: list[tuple[int, int, bool]], whole: int = MIN_SIZE, *, large: bool = False
    ) -> list[tuple[int, int, bool]]:
        """Cut the data regions with FastCDC (regions of at most ``whole`` bytes stay whole); ``large``:
        with the large-file parameters."""
        out: list[tuple[int, int, bool]] = []
        mv = memoryview(buf)
        cdc = self._large_cdc if large else self._cdc
        for start, end, zeros in regions:
            if zeros or end - start <= whole:
                out.append((start, end, zeros))
                continue
            for c in cdc.cut_buf(mv[start:end]):
                s = start + c.offset
                out.append((s, s + c.length, False))
        return out

    # ------------------------------------------------------------------------------------ streaming

    def stream(self, read: Callable[[int], bytes], size: int) -> Iterator[Piece]:
        """Chunk a payload of ``size`` bytes pulled with ``read(n)`` (which returns exactly ``n`` bytes).

        Yields ``(data, is_zeros)`` in order; the pieces concatenate to the payload. ``data`` may be a
        memoryview into a window buffer: it stays valid (buffers are never reused).
        """
        if size <= self.window:
            buf = read(size)
            mv = memoryview(buf)
            for start, end, zeros in self.split(buf):
                yield (buf if end - start == len(buf) else mv[start:end]), zeros
            return
        carry = b""
        left = size
        large = size >= LARGE_FILE
        while left:
            n = min(self.window, left)
            data = read(n)
            left -= n
            buf = carry + data if carry else data
            final = left == 0
            mv = memoryview(buf)
            pieces = self._cut(buf, self.regions(buf), large=large)
            if not final:
                start, end, zeros = pieces[-1]
                if not zeros or end - start < ZERO_CARRY_LIMIT:
                    pieces.pop()
                    carry = buf[start:]
                else:
                    carry = b""
            for start, end, zeros in pieces:
                yield mv[start:end], zeros
