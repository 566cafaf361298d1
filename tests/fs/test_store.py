"""fs.store blobs: put/get/dedup/verification, refcounts, gc and LRU eviction, readers during gc."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from fs.errors import DiskFull, NotInStore, StoreError, VerificationError
from fs.store import Store, format_size, free_space_check, parse_size
from fs.store.records import BlobRecord
from tests.fs.store_worker import expect, kill, spawn


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def data_files(root: Path) -> list[Path]:
    return [p for p in (root / "data").rglob("*") if p.is_file()]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path):
    with Store.open(root) as s:
        yield s


def test_put_then_read_ranges(store: Store) -> None:
    data = os.urandom(200_000)
    digest = store.put(data)
    assert digest == sha(data)
    assert store.has(digest) and store.size(digest) == len(data)
    assert store.pread(digest, 0, 10) == data[:10]
    assert store.pread(digest, 123_456, 65536) == data[123_456 : 123_456 + 65536]
    assert store.pread(digest, len(data) - 5, 100) == data[-5:]  # short only at the end
    assert store.pread(digest, len(data), 10) == b""
    with store.open_blob(digest) as f:
        assert f.read() == data
    with pytest.raises(ValueError):
        store.pread(digest, -1, 10)


def test_missing_blob_raises_not_in_store(store: Store) -> None:
    missing = sha(b"never stored")
    assert not store.has(missing)
    assert not store.has("") and not store.has("sha256:" + "a" * 600)  # malformed: simply absent
    with pytest.raises(NotInStore):
        store.pread("sha256:short", 0, 1)
    with pytest.raises(NotInStore):
        store.pread(missing, 0, 1)
    with pytest.raises(NotInStore):
        store.open_blob(missing)
    with pytest.raises(NotInStore):
        store.size(missing)
    with pytest.raises(NotInStore):
        store.ref(missing, "layer:x")


def test_same_bytes_stored_once(store: Store, root: Path) -> None:
    data = os.urandom(10_000)
    first = store.put(data)
    second = store.put(data, digest=first, holder="layer:a")
    third = store.put_many([(data, None), (data, first)])
    assert first == second == third[0] == third[1]
    assert len(data_files(root)) == 1
    stats = store.stats()
    assert (stats.objects, stats.bytes) == (1, len(data))


def test_put_rejects_bytes_that_do_not_match_their_digest(store: Store, root: Path) -> None:
    data = b"the real bytes"
    wrong = sha(b"other bytes")
    with pytest.raises(VerificationError):
        store.put(data, digest=wrong)
    with pytest.raises(VerificationError):  # all or nothing
        store.put_many([(b"fine", None), (data, wrong)])
    assert not store.has(wrong) and not store.has(sha(data)) and not store.has(sha(b"fine"))
    assert data_files(root) == []
    assert os.listdir(root / "wip") == []
    with pytest.raises(ValueError):
        store.put(data, digest="md5:abc")


def test_put_many_of_verified_bytes_takes_their_digests(store: Store, root: Path) -> None:
    """The fetcher's chunks were hashed against their digests a moment before: stored under them without a
    second hash; a missing or malformed digest is still refused, and nothing is written then."""
    items = [(b"chunk one", sha(b"chunk one")), (b"chunk two", sha(b"chunk two"))]
    assert store.put_many(items, holder="mount:v", verified=True) == [sha(b"chunk one"), sha(b"chunk two")]
    assert bytes(store.pread(sha(b"chunk two"), 0, 100)) == b"chunk two"
    assert store.refs(sha(b"chunk one")) == {"mount:v"}
    for bad in ([(b"three", None)], [(b"three", "md5:abc")]):
        with pytest.raises(ValueError):
            store.put_many(bad, verified=True)
    assert not store.has(sha(b"three")) and os.listdir(root / "wip") == []


def test_put_file_copies_or_moves_and_verifies(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "blob"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    with pytest.raises(VerificationError):
        store.put_file(src, digest=sha(b"x"))
    assert src.exists() and not store.has(sha(data))
    digest = store.put_file(src, holder="layer:f")
    assert digest == sha(data) and src.exists()
    assert store.refs(digest) == {"layer:f"}
    other = tmp_path / "other"
    other.write_bytes(data[:1000])
    moved = store.put_file(other, move=True)
    assert not other.exists()
    with store.open_blob(moved) as f:
        assert f.read() == data[:1000]


def test_refcounts_per_holder(store: Store) -> None:
    digest = store.put(b"chunk")
    assert store.refs(digest) == set()
    store.ref(digest, "layer:a")
    store.ref(digest, "layer:a")  # idempotent per (digest, holder)
    store.ref(digest, "snapshot:1")
    assert store.refs(digest) == {"layer:a", "snapshot:1"}
    stats = store.stats()
    assert (stats.refs, stats.referenced_objects, stats.referenced_bytes) == (2, 1, 5)
    assert store.unref(digest, "layer:a") is True
    assert store.unref(digest, "layer:a") is False
    assert store.refs(digest) == {"snapshot:1"}
    assert store.gc().removed_objects == 0  # still referenced
    assert store.drop_holder("snapshot:1") == 1
    assert store.stats().refs == 0
    report = store.gc()
    assert report.removed_objects == 1 and not store.has(digest)


def _record(store: Store, digest: str) -> BlobRecord:
    with store._index.read() as txn:
        return BlobRecord.unpack(txn.get(digest.encode(), db=store._index.blobs))


def test_reads_do_not_write_access_times_until_flushed(store: Store) -> None:
    digest = store.put(b"x" * 1000)
    before = _record(store, digest).last_access
    time.sleep(0.01)
    store.pread(digest, 0, 10)
    assert _record(store, digest).last_access == before  # buffered in memory, no write transaction
    store.flush()
    assert _record(store, digest).last_access > before


def test_lru_eviction_under_cap_never_evicts_referenced(store: Store) -> None:
    chunks = [bytes([i]) * 1000 for i in range(10)]
    digests = []
    for data in chunks:
        digests.append(store.put(data))
        time.sleep(0.002)  # distinct last-access times
    store.ref(digests[0], "layer:keep")  # the oldest, but referenced
    store.ref(digests[1], "layer:keep")
    store.pread(digests[2], 0, 1)  # recently used
    store.pread(digests[3], 0, 1)
    report = store.gc(max_size=6000)
    # 10 000 bytes -> need to free 4000: the four least recently used unreferenced ones (4..7)
    assert report.removed_objects == 4 and report.bytes_after == 6000 and not report.over_cap
    kept = {d for d in digests if store.has(d)}
    assert kept == {digests[i] for i in (0, 1, 2, 3, 8, 9)}
    report = store.gc(max_size=1000)  # referenced alone (2000) exceed the cap: evict all the rest
    assert {d for d in digests if store.has(d)} == {digests[0], digests[1]}
    assert report.over_cap


def test_store_cap_evicts_on_put(root: Path) -> None:
    with Store.open(root, max_size=10_000) as store:
        pinned = store.put(b"p" * 2000, holder="layer:pin")
        digests = [store.put(bytes([i]) * 1000) for i in range(20)]
        stats = store.stats()
        assert stats.bytes <= 10_000
        assert store.has(pinned)
        assert store.has(digests[-1])  # the newest survives, the oldest went first
        assert not store.has(digests[0])


def test_readers_during_gc_see_valid_bytes_or_not_in_store(store: Store) -> None:
    blobs = {}
    for i in range(40):
        data = random.Random(i).randbytes(20_000 + i)
        blobs[store.put(data)] = data
    keep = list(blobs)[:5]
    for d in keep:
        store.ref(d, "layer:keep")
    # A reader that opened the blob before it was collected keeps reading valid bytes.
    victim = list(blobs)[-1]
    early = store.open_blob(victim)
    stop = threading.Event()
    errors: list[str] = []
    counts = {"ok": 0, "gone": 0}

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        names = list(blobs)
        while not stop.is_set():
            digest = rng.choice(names)
            off = rng.randrange(0, 20_000)
            try:
                got = store.pread(digest, off, 4096)
            except NotInStore:
                counts["gone"] += 1
                if digest in keep:
                    errors.append(f"referenced {digest} vanished")
                continue
            if got != blobs[digest][off : off + 4096]:
                errors.append(f"wrong bytes from {digest}@{off}")
            counts["ok"] += 1

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            store.gc()
            for data in list(blobs.values())[5 + round_ :: 3]:
                store.put(data)  # bring some back while readers run
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert counts["ok"] > 0 and counts["gone"] > 0  # the race really happened both ways
    assert all(store.has(d) for d in keep)
    assert early.read() == blobs[victim]
    early.close()


def test_bound_holder_refs_dropped_when_its_process_dies(root: Path) -> None:
    Store.open(root).close()
    proc = spawn("bind", root, "convert:worker", "--content", "held by a dying process")
    try:
        digest = expect(proc, "READY").split()[1]
        with Store.open(root) as store:
            assert store.refs(digest) == {"convert:worker"}
            assert store.stats().holders == ("convert:worker",)
    finally:
        kill(proc)
    with Store.open(root) as store:
        assert "holder:convert:worker" in store.reclaimed
        assert store.refs(digest) == set()
        assert store.stats().holders == ()


def test_orphan_files_removed_at_open_after_a_crash(root: Path) -> None:
    Store.open(root).close()
    proc = spawn("bind", root, "h:1")  # a session that will die without closing
    try:
        expect(proc, "READY")
    finally:
        kill(proc)
    orphan = root / "data" / "sha256" / "ab" / ("ab" + "0" * 62)
    orphan.write_bytes(b"published but never indexed")
    dead_wip = root / "wip" / f"{proc.pid}-1-deadbeef"
    dead_wip.write_bytes(b"half written")
    with Store.open(root) as store:
        assert not orphan.exists() and not dead_wip.exists()
        assert f"data/sha256/ab/{orphan.name}" in store.reclaimed
        assert f"wip/{dead_wip.name}" in store.reclaimed
        assert store.stats().objects == 1  # the worker's own blob is intact


def test_closed_store_refuses_work(root: Path) -> None:
    store = Store.open(root)
    digest = store.put(b"x")
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.pread(digest, 0, 1)


def test_free_space_check(tmp_path: Path) -> None:
    available = free_space_check(tmp_path / "not" / "yet", 1)
    assert available > 0
    with pytest.raises(DiskFull) as info:
        free_space_check(tmp_path, available * 4 + (1 << 40))
    message = str(info.value)
    assert "need" in message and str(tmp_path) in message and "available" in message


def test_sizes() -> None:
    assert parse_size("10G") == 10 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("1.5KiB") == 1536
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("ten gigs")
    assert format_size(1536) == "1.5 KiB" and format_size(12) == "12 B"
