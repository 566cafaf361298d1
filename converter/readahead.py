"""Decompress a source layer on its own thread, ahead of the tar parser.

The layer writer's parsing thread is the bottleneck for layers of many small files. Inflating gzip or
zstd on that same thread serialises the two; isal and zstandard release the GIL while they inflate, so a
reader thread that keeps a few MiB decompressed ahead lets both cores work. Memory stays bounded by
``depth * block`` bytes.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import TYPE_CHECKING, BinaryIO, Protocol

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["ReadAhead"]

_DONE = object()


class Readable(Protocol):
    """A byte source :class:`ReadAhead` can drain (files, gzip and zstd stream readers)."""

    def read(self, size: int = ..., /) -> bytes: ...
    def close(self) -> None: ...


class ReadAhead(io.RawIOBase):
    """A read-only stream over ``source`` filled by a background thread.

    Args:
        source: any readable binary stream; read only by the background thread, closed by :meth:`close`.
        also_close: closed after ``source`` (the raw file under a decompressor that does not close it).
        block: bytes per background read.
        depth: blocks kept ahead at most.

    An error raised by ``source.read`` is re-raised by the next :meth:`readinto` that reaches it.
    :meth:`close` stops the thread even if the consumer stopped early (a cancelled conversion).
    """

    def __init__(
        self, source: Readable, *, block: int = 1 << 20, depth: int = 8, also_close: BinaryIO | None = None
    ) -> None:
        super().__init__()
        self._source = source
        self._also_close = also_close
        self._block = block
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._fill, name="zsnap-readahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        item: object
        try:
            while not self._stop.is_set():
                data = self._source.read(self._block)
                if not data:
                    break
                self._put(data)
            item = _DONE
        except BaseException as exc:  # handed to the consumer, which re-raises it
            item = exc
        self._put(item)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._pending:
            if self._eof:
                return 0
            item = self._queue.get()
            if item is _DONE:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._pending = memoryview(item)  # type: ignore[arg-type]
        out = memoryview(buffer).cast("B")
        n = min(len(out), len(self._pending))
        out[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join()
            self._source.close()
            if self._also_close is not None:
                self._also_close.close()
        super().close()
