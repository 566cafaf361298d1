"""fs.store pack files: a batch of small blobs in one file, read back by range, removed, repacked, checked."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from fs.errors import NotInStore
from fs.store import Store
from fs.store.packs import PACK_ITEM_MAX
from tests.fs.test_store import data_files, sha


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def pack_files(root: Path) -> list[Path]:
    return sorted((root / "packs").iterdir())


def batch(seed: int, sizes: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in sizes]


def test_a_batch_of_small_blobs_is_one_pack_read_back_by_range(root: Path) -> None:
    blobs = batch(1, [1, 65536, 100_000, 3, 2 << 20])
    big = random.Random(2).randbytes(PACK_ITEM_MAX + 1)
    with Store.open(root) as store:
        digests = store.put_many([(data, None) for data in [*blobs, big]])
        assert digests == [sha(data) for data in [*blobs, big]]
        [pack] = pack_files(root)
        assert pack.stat().st_size == sum(map(len, blobs))
        assert [p.name for p in data_files(root)] == [digests[-1][7:]]  # too big to share a pack
        for digest, data in zip(digests, [*blobs, big], strict=True):
            assert store.size(digest) == len(data)
            assert store.pread(digest, 0, len(data) + 10) == data  # short only at its own end
            assert store.pread(digest, len(data) // 2, 7) == data[len(data) // 2 :][:7]
            assert store.pread(digest, len(data), 1) == b""
            with store.open_blob(digest) as f:
                assert f.read() == data
        with pytest.raises(ValueError, match="pack"):
            store.path_of(digests[0])
        assert store.path_of(digests[-1]).read_bytes() == big
        assert store.verify() == []
    with Store.open(root) as store:  # records and pack survive a reopen
        assert all(store.pread(d, 0, len(b)) == b for d, b in zip(digests, [*blobs, big], strict=True))


def test_only_new_blobs_are_packed_and_a_single_new_one_keeps_a_file(root: Path) -> None:
    old, new1, new2 = batch(3, [5000, 6000, 7000])
    with Store.open(root) as store:
        store.put(old)
        store.put_many([(old, None), (new1, None), (new1, None)])  # one new blob (twice): a file
        assert pack_files(root) == [] and len(data_files(root)) == 2
        store.put_many([(old, None), (new1, None), (new2, None), (b"x" * 10, None)])
        [pack] = pack_files(root)
        assert pack.stat().st_size == len(new2) + 10  # the stored ones were not written again
        assert store.stats().objects == 4
        assert store.verify() == []


def test_gc_removes_a_pack_when_its_last_blob_goes(root: Path) -> None:
    blobs = batch(4, [3000, 3000, 3000])
    with Store.open(root) as store:
        digests = store.put_many([(data, None) for data in blobs])
        [pack] = pack_files(root)
        store.ref(digests[0], "layer:a")
        store.ref(digests[1], "layer:a")
        report = store.gc()
        assert report.removed_objects == 1 and pack.exists()  # two thirds still live: not repacked
        assert report.compacted_packs == 0
        assert store.pread(digests[1], 0, 3000) == blobs[1]
        store.drop_holder("layer:a")
        assert store.gc().removed_objects == 2
        assert pack_files(root) == [] and store.stats().objects == 0
        assert store.verify() == []


def test_gc_repacks_a_mostly_dead_pack(root: Path) -> None:
    blobs = batch(5, [40_000, 10_000, 50_000, 20_000])
    with Store.open(root) as store:
        digests = store.put_many([(data, None) for data in blobs])
        [old] = pack_files(root)
        store.ref(digests[1], "layer:keep")  # 10 kB of 120 kB stay live
        early = store.open_blob(digests[1])  # a reader that has it open across the repack
        report = store.gc()
        assert report.removed_objects == 3 and report.compacted_packs == 1
        [new] = pack_files(root)
        assert new != old and new.stat().st_size == 10_000
        assert store.pread(digests[1], 0, 10_000) == blobs[1]
        assert early.read() == blobs[1]
        early.close()
        assert store.verify() == []
        assert store.gc().compacted_packs == 0  # the new pack is all live


def test_concurrent_readers_see_right_bytes_or_not_in_store_while_packs_churn(root: Path) -> None:
    with Store.open(root) as store:
        blobs = batch(6, [20_000 + i for i in range(30)])
        digests = store.put_many([(data, None) for data in blobs])
        expected = dict(zip(digests, blobs, strict=True))
        for digest in digests[::3]:
            store.ref(digest, "layer:keep")  # a third stays: gc removes the rest, then repacks
        errors: list[str] = []
        stop = threading.Event()

        def read() -> None:
            rng = random.Random(7)
            while not stop.is_set():
                digest = rng.choice(digests)
                try:
                    got = store.pread(digest, 100, 5000)
                except NotInStore:
                    continue
                if got != expected[digest][100:5100]:
                    errors.append(digest)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for thread in readers:
            thread.start()
        try:
            report = store.gc()
        finally:
            stop.set()
            for thread in readers:
                thread.join()
        assert errors == []
        assert report.removed_objects == 20 and report.compacted_packs == 1
        assert all(store.pread(d, 0, 1 << 20) == expected[d] for d in digests[::3])
        assert store.verify() == []


def test_verify_finds_a_corrupt_or_missing_pack_and_recovery_drops_an_orphan(root: Path) -> None:
    blobs = batch(8, [4000, 4000])
    with Store.open(root) as store:
        digests = store.put_many([(data, None) for data in blobs])
        [pack] = pack_files(root)
        with open(pack, "r+b") as f:  # flip one byte of the second blob
            f.seek(4000 + 17)
            byte = f.read(1)
            f.seek(4000 + 17)
            f.write(bytes([byte[0] ^ 1]))
        problems = store.verify()
        assert len(problems) == 1 and digests[1] in problems[0] and "does not hash" in problems[0]
        os.unlink(pack)
        problems = store.verify()
        assert any("missing" in p for p in problems) and any("without its file" in p for p in problems)
    orphan = root / "packs" / ("ab" * 8)
    orphan.write_bytes(b"a pack whose publish never committed")
    with Store.open(root) as store:
        report = store.gc()
    assert "packs/" + orphan.name in report.orphans_removed and not orphan.exists()


def test_eviction_under_the_cap_repacks_what_it_leaves_mostly_dead(root: Path) -> None:
    """The daemon's store is capped and evicts on put: the blobs a reader kept using survive the eviction
    of their pack's other blobs, and the pack is rewritten so dead bytes do not pile up under the cap."""
    with Store.open(root, max_size=130_000) as store:
        old = batch(9, [5000] * 10)
        digests = store.put_many([(data, None) for data in old])
        time.sleep(0.01)
        for digest in digests[:2]:
            store.pread(digest, 0, 1)  # used lately: the rest of its pack is older
        time.sleep(0.01)
        for seed in (10, 11):
            store.put_many([(data, None) for data in batch(seed, [5000] * 10)])
        # 150 kB > 130 kB: down to 117 kB, least recently used first: 7 of the 8 old blobs nobody read
        assert sum(map(store.has, digests)) == 3
        assert [store.pread(d, 0, 5000) for d in digests[:2]] == old[:2]
        sizes = sorted(p.stat().st_size for p in pack_files(root))
        assert sizes == [15_000, 50_000, 50_000]  # the old pack rewritten with its 3 live blobs
        assert store.verify() == []


def test_a_repack_that_dies_before_its_commit_loses_no_pack(root: Path, monkeypatch) -> None:
    """The old pack's file goes only after the transaction that moved its blobs out has committed: a
    repack that dies in between (here an exception where a SIGKILL could land) leaves the old pack, its
    row and its records as they were, and the new file an orphan that gc removes."""
    from fs.store.packs import PackFiles

    blobs = batch(9, [40_000, 10_000, 50_000, 20_000])
    original = PackFiles.drop_empty

    def dies_before_commit(self, txn, pack_ids=None):
        dropped = original(self, txn, pack_ids)
        if dropped:  # the repack's transaction, which emptied the old pack
            raise RuntimeError("killed before the commit")
        return dropped

    with Store.open(root) as store:
        digests = store.put_many([(data, None) for data in blobs])
        [old] = pack_files(root)
        store.ref(digests[1], "layer:keep")
        monkeypatch.setattr(PackFiles, "drop_empty", dies_before_commit)
        with pytest.raises(RuntimeError, match="killed before the commit"):
            store.gc()
        monkeypatch.undo()
        assert old.exists()
        assert store.pread(digests[1], 0, 10_000) == blobs[1]
    with Store.open(root) as store:
        store.gc()
        assert store.verify() == []
        assert store.pread(digests[1], 0, 10_000) == blobs[1]
        [new] = pack_files(root)
        assert new.stat().st_size == 10_000
