"""fs.store crash consistency: SIGKILL a writer at random points, reopen, check every invariant."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from fs.store import Store
from fs.store.records import PackRecord
from tests.fs.store_worker import expect, kill, spawn

ROUNDS = 14


def test_sigkill_writer_at_random_points_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store.open(root).close()
    rng = random.Random(20261128)
    reclaimed_wip = reclaimed_data = reclaimed_packs = 0
    puts = 0
    for round_ in range(ROUNDS):
        slow = ["--slow-publish"] if round_ % 2 else []
        proc = spawn("put-loop", root, "--seed", str(round_), *slow)
        try:
            expect(proc, "PUT")  # it is writing now
            time.sleep(rng.uniform(0.0, 0.3))
            os.kill(proc.pid, 9)
            proc.wait()
            puts += 1 + proc.stdout.read().count(b"PUT ")
        finally:
            kill(proc)
        with Store.open(root) as store:
            reclaimed_wip += sum(1 for item in store.reclaimed if item.startswith("wip/"))
            reclaimed_data += sum(1 for item in store.reclaimed if item.startswith("data/"))
            reclaimed_packs += sum(1 for item in store.reclaimed if item.startswith("packs/"))
            problems = store.verify()
            assert not problems, f"round {round_}: {problems}"
            assert os.listdir(root / "wip") == []
            files = sum(1 for _ in (root / "data").rglob("*") if _.is_file())
            with store.index.read() as txn, txn.cursor(db=store.index.packs) as cur:
                packed = sum(PackRecord.unpack(raw).live for _, raw in cur)
            assert store.stats().objects == files + packed
    assert puts > ROUNDS  # the writers really wrote
    # With the widened window most slow rounds are killed between rename and commit: the recovery of
    # renamed-but-unindexed files was exercised, not just hoped for.
    assert reclaimed_data + reclaimed_packs > 0
    print(
        f"{puts} acknowledged puts; reclaimed {reclaimed_wip} wip, {reclaimed_data} data and "
        f"{reclaimed_packs} pack orphans"
    )


def test_verify_detects_a_broken_store(tmp_path: Path) -> None:
    """The invariant check the crash test relies on can fail."""
    root = tmp_path / "store"
    with Store.open(root) as store:
        digest = store.put(b"some bytes")
        other = store.put(b"other bytes")
        assert store.verify() == []
        store.path_of(digest).write_bytes(b"same size!")  # corrupted in place
        store.path_of(other).unlink()
        problems = store.verify()
    assert any("does not hash" in p for p in problems)
    assert any("missing" in p for p in problems)
