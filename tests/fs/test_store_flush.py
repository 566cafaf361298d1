"""fs.store access-time flushing: one long-lived background flusher per store, stopped by close()."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fs.store import Store
from fs.store import atimes as atimes_module
from fs.store.atimes import AccessTimes
from fs.store.records import BlobRecord


def _last_access(store: Store, digest: str) -> float:
    with store._index.read() as txn:
        return BlobRecord.unpack(txn.get(digest.encode(), db=store._index.blobs)).last_access


def _wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_background_flushes_share_one_thread_that_close_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushers: list[threading.Thread] = []  # kept alive, so identities cannot be reused
    original = AccessTimes.flush

    def recording(self: AccessTimes) -> int:
        written = original(self)
        if written:
            flushers.append(threading.current_thread())
        return written

    monkeypatch.setattr(AccessTimes, "flush", recording)
    monkeypatch.setattr(atimes_module, "ACCESS_FLUSH_ENTRIES", 1)  # every read asks for a flush
    store = Store.open(tmp_path / "store")
    try:
        digests = [store.put(bytes([i]) * 100) for i in range(5)]
        for n, digest in enumerate(digests, 1):
            before = _last_access(store, digest)
            time.sleep(0.01)
            store.pread(digest, 0, 1)  # never writes on this thread
            _wait_for(lambda d=digest, b=before: _last_access(store, d) > b, "the background flush")
            _wait_for(lambda n=n: len(flushers) >= n, "the flush to be recorded")
        assert len(flushers) == 5
        assert len({id(t) for t in flushers}) == 1, "one long-lived flusher, not a thread per flush"
        thread = flushers[0]
        assert thread is not threading.main_thread() and thread.is_alive()
    finally:
        store.close()
    assert not thread.is_alive(), "close() stops the flusher"


def test_close_flushes_what_is_buffered_and_starts_no_thread(tmp_path: Path) -> None:
    before = {t.name for t in threading.enumerate()}
    with Store.open(tmp_path / "store") as store:
        digest = store.put(b"x" * 100)
        stamp = _last_access(store, digest)
        time.sleep(0.01)
        store.pread(digest, 0, 1)  # below both thresholds: stays buffered
        assert store._blobs.atimes.flusher.thread is None
    assert {t.name for t in threading.enumerate()} == before
    with Store.open(tmp_path / "store") as store:
        assert _last_access(store, digest) > stamp  # close() wrote it
