"""Ordered, parallel zstd frame writer: compress independent frames on a thread pool, write them in order.

::

    caller thread            compression pool (N threads)         writer thread
    frame(data, tag) ─┐
    frame(...)        ├─ batch (~1 MiB) ──► compress each frame ──► in submission order:
    ...               ┘                     sha256 if asked           write, hash the output,
                                                                      on_frame(tag, start, end, digest)
                                                                      for tagged frames

Every frame is an independent zstd frame (content size in its header, no checksum), so frames compress
in parallel; ``zstandard`` and ``hashlib`` release the GIL while they work. Memory is bounded: the
caller blocks in :meth:`FramePipeline.frame` while more than ``max_inflight`` uncompressed bytes are
queued, compressing or waiting to be written.

``on_frame`` runs on the writer thread, strictly in frame order; it receives the compressed byte range
``[start, end)`` of the frame in the output and the frame's sha256 hex digest (or None when not asked).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, Literal

import zstandard

from fs.errors import ConversionError, ZsnapError

__all__ = [
    "FramePipeline",
    "PipelineTotals",
]

Buffer = bytes | bytearray | memoryview
OnFrame = Callable[[Any, int, int, "str | None"], None]

_BATCH_BYTES = 1 << 20
_BATCH_FRAMES = 512
_WRITE_CHUNK = 4 << 20


class PipelineTotals:
    """What the pipeline wrote: compressed size and sha256, and the uncompressed bytes of its frames."""

    __slots__ = ("compressed_sha256", "compressed_size", "uncompressed_size")

    def __init__(self, csize: int, csha: str, usize: int) -> None:
        self.compressed_size = csize
        self.compressed_sha256 = csha
        self.uncompressed_size = usize


#: one compressed batch: its frames back to back, each frame's size, the sha256 hex of those that asked
_Batch = tuple[bytes, list[int], list[str | None]]


def _compress_batch(local: threading.local, level: int, items: list[tuple[Buffer, bool]]) -> _Batch:
    """Compress a batch (one GIL release for all its frames) and hash the frames that asked for it."""
    cctx: zstandard.ZstdCompressor | None = getattr(local, "cctx", None)
    if cctx is None:
        cctx = local.cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    frames = cctx.multi_compress_to_buffer([data for data, _ in items], threads=0)
    # zstandard's stub omits that BufferWithSegmentsCollection iterates and its segments are buffers
    sizes = [len(f) for f in frames]  # type: ignore[attr-defined]
    digests: list[str | None]
    if any(want for _, want in items):
        sha = hashlib.sha256
        digests = [sha(data).hexdigest() if want else None for data, want in items]
    else:
        digests = [None] * len(items)
    return b"".join(frames), sizes, digests  # type: ignore[arg-type]


#: what the writer thread takes from its queue, in order (None: stop)
_QueueItem = (
    tuple[Literal["raw"], bytes, int]
    | tuple[Literal["call"], Callable[[], None], int]
    | tuple[Literal["frames"], "concurrent.futures.Future[_Batch]", list[int] | None, list[Any], int]
)


class FramePipeline:
    """Compress frames in parallel and write them to ``dst`` in order (see module docstring).

    Args:
        dst: binary writable; written only from the writer thread.
        level: zstd level for every frame.
        threads: compression threads.
        on_frame: callback for tagged frames (writer thread, in order).
        max_inflight: bound on queued uncompressed bytes.

    Use :meth:`frame` / :meth:`raw` from one thread, then :meth:`close`; on any error call :meth:`abort`
    (idempotent). Errors from the pool or the writer surface in the caller's next call.
    """

    def __init__(
        self,
        dst: BinaryIO,
        *,
        level: int = 3,
        threads: int = 2,
        on_frame: OnFrame | None = None,
        max_inflight: int = 32 << 20,
    ) -> None:
        self._dst = dst
        self._level = level
        self._on_frame = on_frame
        self._max_inflight = max_inflight
        self._pool = concurrent.futures.ThreadPoolExecutor(max(1, threads), thread_name_prefix="zsnap-zstd")
        self._local = threading.local()
        self._queue: queue.SimpleQueue[_QueueItem | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._stop = False
        self._items: list[tuple[Buffer, bool]] = []
        self._tags: list[Any] = []
        self._tagged: list[int] = []
        self._batch_bytes = 0
        # writer-thread state
        self._out_hash = hashlib.sha256()
        self.written = 0  #: compressed bytes written so far (updated by the writer thread)
        self.consumed = 0  #: uncompressed frame bytes written so far
        self._writer = threading.Thread(target=self._write_loop, name="zsnap-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------------------------ producer

    def frame(self, data: Buffer, tag: Any = None, *, digest: bool = False) -> None:
        """Queue one frame holding ``data`` (non-empty). ``digest``: compute its sha256 for ``on_frame``."""
        if tag is not None:
            self._tagged.append(len(self._items))
        self._items.append((data, digest))
        self._tags.append(tag)
        self._batch_bytes += len(data)
        if self._batch_bytes >= _BATCH_BYTES or len(self._items) >= _BATCH_FRAMES:
            self.flush()

    def raw(self, data: bytes) -> None:
        """Queue bytes to write verbatim after the frames queued so far (skippable frames)."""
        self.flush()
        self._reserve(len(data))
        self._queue.put(("raw", data, len(data)))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on the writer thread once every frame queued so far has been written."""
        self.flush()
        self._queue.put(("call", fn, 0))

    def flush(self) -> None:
        """Submit the pending batch."""
        if not self._items:
            return
        items, tags, tagged, nbytes = self._items, self._tags, self._tagged, self._batch_bytes
        self._items, self._tags, self._tagged, self._batch_bytes = [], [], [], 0
        self._reserve(nbytes)
        future = self._pool.submit(_compress_batch, self._local, self._level, items)
        self._queue.put(("frames", future, tagged if self._on_frame else None, tags, nbytes))

    def _reserve(self, nbytes: int) -> None:
        with self._cond:
            while self._inflight > 0 and self._inflight + nbytes > self._max_inflight and not self._stop:
                self._cond.wait()
            self._raise_if_failed()
            self._inflight += nbytes

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, ZsnapError):
                raise err
            raise ConversionError(f"writing zstd frames failed: {err}") from err
        if self._stop:
            raise ConversionError("frame pipeline was aborted")

    def drain(self) -> int:
        """Flush and wait until everything queued so far (frames, raw bytes and :meth:`call` callbacks)
        has been handled by the writer thread; return the compressed bytes written.

        A barrier callback, not the in-flight byte count, decides: callbacks carry no bytes, and one still
        queued when this returned could run after the caller had moved on (a TOC slice lost or reordered).

        Raises:
            ConversionError: as :meth:`close`.
        """
        self.flush()
        reached = threading.Event()
        self._queue.put(("call", reached.set, 0))
        while not reached.wait(0.05):
            with self._cond:
                if self._stop or self._error is not None:
                    self._raise_if_failed()
        with self._cond:
            self._raise_if_failed()
            return self.written

    def close(self) -> PipelineTotals:
        """Flush, wait for every frame to be written, and return the totals.

        Raises:
            ConversionError: a compression or write failed (``__cause__`` holds it), or a ZsnapError raised
                by ``on_frame`` as is.
        """
        self.flush()
        self._queue.put(None)
        self._writer.join()
        self._pool.shutdown(wait=True)
        with self._cond:
            self._raise_if_failed()
        return PipelineTotals(self.written, "sha256:" + self._out_hash.hexdigest(), self.consumed)

    def abort(self) -> None:
        """Stop everything without writing more; safe to call at any time, more than once."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._queue.put(None)
        self._writer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------------------------ writer

    def _write_loop(self) -> None:
        pending: list[bytes] = []
        pending_len = 0
        try:
            while True:
                item = self._queue.get()
                if item is None or self._stop:
                    break
                if item[0] == "call":
                    item[1]()
                    continue
                if item[0] == "raw":
                    data, nbytes = item[1], item[2]
                    pending.append(data)
                    pending_len += len(data)
                    self._out_hash.update(data)
                    self.written += len(data)
                else:
                    _, future, tagged, tags, nbytes = item
                    blob, sizes, digests = future.result()
                    pending.append(blob)
                    pending_len += len(blob)
                    self._out_hash.update(blob)
                    base = self.written
                    if tagged:
                        offsets = list(itertools.accumulate(sizes, initial=base))
                        on_frame = self._on_frame
                        for i in tagged:
                            on_frame(tags[i], offsets[i], offsets[i + 1], digests[i])  # type: ignore[misc]
                    self.written = base + len(blob)
                    self.consumed += nbytes
                if pending_len >= _WRITE_CHUNK:
                    self._dst.write(b"".join(pending))
                    pending, pending_len = [], 0
                with self._cond:
                    self._inflight -= nbytes
                    self._cond.notify_all()
            if pending and not self._stop:
                self._dst.write(b"".join(pending))
        except BaseException as exc:  # surfaced in the producer thread
            with self._cond:
                self._error = exc
                self._stop = True
                self._cond.notify_all()
