"""Helper threads shared by the layer writers: input hashing, ordered streaming compression, GIL tuning.

Why these exist: the thread that parses the tar is the bottleneck for layers of many small files, so
anything that can run beside it does — but every helper thread needs the GIL briefly whenever it comes
back from C code, so helpers work on large units (1 MiB blocks) to come back rarely.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import queue
import sys
import threading
from collections.abc import Iterator

import zstandard

__all__ = [
    "SWITCH_INTERVAL",
    "InputHasher",
    "OrderedCompressor",
    "short_switch_interval",
]

#: While conversions run, the interpreter switches threads at least this often (default 5 ms). The
#: compression and writer threads need the GIL briefly once per batch; with the default interval they
#: can wait up to 5 ms behind the parsing thread each time, which starves the pipeline.
SWITCH_INTERVAL = 0.001

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


@contextlib.contextmanager
def short_switch_interval() -> Iterator[None]:
    """Lower ``sys.setswitchinterval`` to :data:`SWITCH_INTERVAL` while at least one conversion runs in
    this process; the previous value comes back when the last one ends (process-wide setting)."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class InputHasher:
    """sha256 of a byte stream fed in pieces (``hasher(piece)``), computed on a helper thread.

    Pieces must not change after being fed (bytes, or views of immutable bytes).
    """

    def __init__(self, *, max_pending: int = 32 << 20) -> None:
        self._queue: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._hash = hashlib.sha256()
        self.size = 0
        self._max_pending = max_pending
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="zsnap-hash", daemon=True)
        self._thread.start()

    def __call__(self, data: bytes | memoryview) -> None:
        """Queue ``data``; blocks while more than ``max_pending`` bytes wait to be hashed."""
        with self._cond:
            while self._pending > 0 and self._pending + len(data) > self._max_pending:
                self._cond.wait()
            self._pending += len(data)
        self._queue.put(data)

    def _run(self) -> None:
        update = self._hash.update
        get = self._queue.get
        while (data := get()) is not None:
            update(data)
            self.size += len(data)
            with self._cond:
                self._pending -= len(data)
                self._cond.notify()

    def close(self) -> str:
        """Wait for the hashing to finish; return ``sha256:<hex>`` (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        return "sha256:" + self._hash.hexdigest()


class OrderedCompressor:
    """Compress a stream of lines into one zstd frame, in order, on a helper thread (the tar-split)."""

    def __init__(self, level: int, *, step: int = 1 << 20) -> None:
        self._cobj = zstandard.ZstdCompressor(level=level).compressobj()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zsnap-tarsplit")
        self._lines: list[bytes] = []
        self._pending = 0
        self._step = step
        self._futures: list[concurrent.futures.Future[bytes]] = []
        #: uncompressed bytes added so far
        self.size = 0

    def add(self, line: bytes) -> None:
        """Append bytes (compressed once about ``step`` bytes are pending)."""
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= self._step:
            self._submit()

    def _submit(self) -> None:
        data = b"".join(self._lines)
        self._lines, self._pending = [], 0
        self.size += len(data)
        self._futures.append(self._pool.submit(self._cobj.compress, data))

    def finish(self) -> bytes:
        """Return the complete compressed frame and stop the helper thread."""
        if self._lines:
            self._submit()
        self._futures.append(self._pool.submit(self._cobj.flush))
        try:
            return b"".join(f.result() for f in self._futures)
        finally:
            self._pool.shutdown()

    def abort(self) -> None:
        """Stop the helper thread, dropping pending work (idempotent)."""
        self._pool.shutdown(cancel_futures=True)
