"""A background thread that runs one flush function whenever asked (the store's access-time flusher)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["Flusher"]

log = logging.getLogger(__name__)


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
