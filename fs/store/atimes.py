"""Last-access times of blobs: kept in memory by reads, written to the index by one background thread.

A read never writes to the index: it may run on an event loop (the FUSE server), and a write transaction
waits for the cross-process writer lock and fsyncs. :class:`AccessTimes` buffers the times; every
``ACCESS_FLUSH_SECONDS`` or ``ACCESS_FLUSH_ENTRIES`` reads it asks its :class:`Flusher` (one long-lived
thread per store, started by the first such read, stopped by close) to write them in one transaction;
gc and close flush on their own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .index import Index
from .records import BlobRecord

__all__ = ["ACCESS_FLUSH_ENTRIES", "ACCESS_FLUSH_SECONDS", "AccessTimes", "Flusher"]

log = logging.getLogger(__name__)

ACCESS_FLUSH_SECONDS = 30.0
ACCESS_FLUSH_ENTRIES = 4096


class AccessTimes:
    """The buffered last-access times of one store's blobs. Thread-safe."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._pending: dict[bytes, float] = {}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self.flusher = Flusher(self.flush, name="zsnap-atime-flush", what="access times")

    def touch(self, key: bytes, when: float | None = None) -> None:
        """Note that blob ``key`` was used now (or at ``when``); asks for a background flush when due."""
        self._pending[key] = time.time() if when is None else when
        if (
            len(self._pending) >= ACCESS_FLUSH_ENTRIES
            or time.monotonic() - self._last_flush > ACCESS_FLUSH_SECONDS
        ) and not self.flusher.pending:
            self._last_flush = time.monotonic()
            self.flusher.request()

    def flush(self) -> int:
        """Write buffered last-access times to the index (one transaction). Returns entries written."""
        if not self._lock.acquire(blocking=False):
            return 0  # another thread is flushing; these times go out with the next flush
        try:
            self._last_flush = time.monotonic()
            pending, self._pending = self._pending, {}
            if not pending:
                return 0
            written = 0
            with self._index.write() as txn:
                # list(): a reader that fetched the old dict just before the swap may still add to it
                for key, when in list(pending.items()):
                    raw = txn.get(key, db=self._index.blobs)
                    if raw is None:
                        continue
                    rec = BlobRecord.unpack(raw)
                    if when > rec.last_access:
                        txn.put(key, replace(rec, last_access=when).pack(), db=self._index.blobs)
                        written += 1
            return written
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the flusher, then write what is left."""
        self.flusher.stop()  # joins the flusher thread: a flush in progress finishes first
        with self._lock:  # so does one running on a caller's thread (gc, Store.flush)
            pass
        self.flush()


class Flusher:
    """One long-lived daemon thread that runs ``flush`` each time it is asked to, until :meth:`stop`.

    The thread starts at the first :meth:`request` (a store nobody reads from never has one). Requests made
    while a flush runs coalesce into one more flush. Errors are logged, never raised into readers.
    """

    def __init__(self, flush: Callable[[], object], *, name: str, what: str) -> None:
        self._flush = flush
        self._name = name
        self._what = what
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> bool:
        """True while a requested flush has not started yet."""
        return self._wake.is_set()

    @property
    def thread(self) -> threading.Thread | None:
        """The flusher thread, once started (None before the first request)."""
        return self._thread

    def request(self) -> None:
        """Ask for a flush soon, on the flusher thread; returns at once. Ignored after :meth:`stop`."""
        with self._lock:
            if self._stopping:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread after the flush it is running (if any) and wait for it. Idempotent."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._flush()
            except Exception as exc:  # e.g. disk full: what it flushes is best-effort, readers go on
                log.warning("store: flushing %s failed: %s", self._what, exc)
