"""fs.store temp objects: single flight across threads, trio tasks and processes; failure, cancellation,
dead producers and dead holders."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import trio

from fs.errors import ProducerFailed
from fs.store import Store
from tests.fs.store_worker import expect, kill, spawn

NAME = "uncompressed/sha256:" + "ab" * 32


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path):
    with Store.open(root) as s:
        yield s


def tmp_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "tmp"))


def counting_producer(count: Path, content: bytes = b"payload", seconds: float = 0.2):
    """A producer that records each run and writes a partial file before the final one."""

    def produce(path: Path) -> None:
        with open(count, "a") as f:
            f.write("run\n")
        path.write_bytes(b"partial")
        time.sleep(seconds)
        path.write_bytes(content)

    return produce


def never(path: Path) -> None:
    raise AssertionError("this caller must not become the producer")


def test_sync_acquire_shares_and_last_release_deletes(store: Store, root: Path, tmp_path: Path) -> None:
    count = tmp_path / "count"
    first = store.acquire(NAME, counting_producer(count, seconds=0), holder="a")
    second = store.acquire(NAME, never, holder="b")
    assert first.path == second.path and first.path.read_bytes() == b"payload"
    [temp] = store.stats().temp_objects
    assert (temp.name, temp.state, temp.size, temp.holders) == (NAME, "ready", 7, ("a", "b"))
    first.release()
    first.release()  # idempotent: must not drop b's claim
    assert second.path.exists()
    with second:
        pass
    assert not second.path.exists() and store.stats().temp_objects == ()
    assert tmp_files(root) == []


def test_threads_single_flight(store: Store, tmp_path: Path) -> None:
    count = tmp_path / "count"
    handles, errors = [], []

    def worker() -> None:
        try:
            handles.append(store.acquire(NAME, counting_producer(count)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count.read_text() == "run\n"
    assert {h.path.read_bytes() for h in handles} == {b"payload"}
    for h in handles:
        h.release()
    assert store.stats().temp_objects == ()


async def test_trio_tasks_single_flight(store: Store, root: Path, tmp_path: Path) -> None:
    count = tmp_path / "count"
    handles = []

    async def one(i: int) -> None:
        handles.append(await store.acquire_async(NAME, counting_producer(count), holder=f"task:{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    assert count.read_text() == "run\n"
    assert len({h.path for h in handles}) == 1
    assert handles[0].path.read_bytes() == b"payload"  # nobody saw the partial file
    assert len(store.stats().temp_objects[0].holders) == 8
    for h in handles[:-1]:
        h.release()
    assert handles[-1].path.exists()
    handles[-1].release()
    assert tmp_files(root) == [] and store.stats().temp_objects == ()


def test_processes_single_flight(root: Path, tmp_path: Path) -> None:
    Store.open(root).close()
    count = tmp_path / "count"
    args = ["--count", str(count), "--produce-seconds", "0.8", "--hold-seconds", "-1", "--content", "xyz"]
    procs = [spawn("acquire", root, NAME, *args, stdin=True) for _ in range(4)]
    try:
        lines = [expect(p, "READY") for p in procs]
        assert len(count.read_text().splitlines()) == 1  # exactly one producer run across 4 processes
        assert {line.split()[1] for line in lines} == {lines[0].split()[1]}
        assert {line.split()[2] for line in lines} == {"xyz"}
        with Store.open(root) as store:
            assert len(store.stats().temp_objects[0].holders) == 4
        for p in procs:
            p.stdin.close()
            expect(p, "RELEASED")
            assert p.wait(10) == 0
    finally:
        for p in procs:
            kill(p)
    assert tmp_files(root) == []
    with Store.open(root) as store:
        assert store.stats().temp_objects == ()


async def test_producer_failure_wakes_waiters_and_leaves_nothing(
    store: Store, root: Path, tmp_path: Path
) -> None:
    def failing(path: Path) -> None:
        path.write_bytes(b"half")
        time.sleep(0.4)
        raise RuntimeError("boom")

    async def producer() -> None:
        with pytest.raises(ProducerFailed, match="boom") as info:
            await store.acquire_async(NAME, failing, holder="producer")
        assert isinstance(info.value.__cause__, RuntimeError)

    async def waiter(i: int) -> None:
        await trio.sleep(0.1)  # the producer is running by now
        with pytest.raises(ProducerFailed, match="boom"):
            await store.acquire_async(NAME, never, holder=f"waiter:{i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        for i in range(3):
            nursery.start_soon(waiter, i)
    assert tmp_files(root) == [] and store.stats().temp_objects == ()
    count = tmp_path / "count"
    with await store.acquire_async(NAME, counting_producer(count, seconds=0)) as handle:  # retry works
        assert handle.path.read_bytes() == b"payload"


def test_producer_failure_in_another_process(store: Store, root: Path, tmp_path: Path) -> None:
    count = tmp_path / "count"
    proc = spawn("acquire", root, NAME, "--count", str(count), "--produce-seconds", "0.8", "--fail")
    try:
        deadline = time.monotonic() + 20
        while not (count.exists() and count.read_text()):
            assert time.monotonic() < deadline, "worker never started producing"
            time.sleep(0.01)
        with pytest.raises(ProducerFailed, match="told to fail"):
            store.acquire(NAME, never)
        expect(proc, "FAILED")
    finally:
        kill(proc)
    assert tmp_files(root) == []
    with store.acquire(NAME, counting_producer(count, seconds=0)) as handle:
        assert handle.path.read_bytes() == b"payload"
    assert len(count.read_text().splitlines()) == 2


async def test_cancelled_producer_fails_waiters_and_cleans_up(store: Store, root: Path) -> None:
    gate, wrote, done = threading.Event(), threading.Event(), threading.Event()

    def slow(path: Path) -> None:
        try:
            path.write_bytes(b"partial")
            wrote.set()
            gate.wait(10)
            path.write_bytes(b"written after the cancel")  # the abandoned thread keeps going
        finally:
            done.set()

    producer_scope = trio.CancelScope()

    async def producer() -> None:
        with producer_scope:
            await store.acquire_async(NAME, slow, holder="producer")
            pytest.fail("the producer was cancelled")

    async def waiter() -> None:
        with pytest.raises(ProducerFailed, match="Cancelled"):
            await store.acquire_async(NAME, never, holder="waiter")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.to_thread.run_sync(wrote.wait)
        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        producer_scope.cancel()
    assert producer_scope.cancelled_caught
    assert not done.is_set()  # cancellation was prompt: the producer thread is still blocked
    assert store.stats().temp_objects == ()
    gate.set()
    await trio.to_thread.run_sync(done.wait)
    await trio.sleep(0.05)  # the abandoned thread's own clean-up runs right after the producer
    assert tmp_files(root) == []
    with await store.acquire_async(NAME, lambda p: p.write_bytes(b"retry")) as handle:
        assert handle.path.read_bytes() == b"retry"


async def test_cancelled_waiter_drops_only_its_claim(store: Store, root: Path) -> None:
    gate = threading.Event()
    handles = {}

    def gated(path: Path) -> None:
        gate.wait(10)
        path.write_bytes(b"done")

    async def take(holder: str) -> None:
        handles[holder] = await store.acquire_async(NAME, gated if holder == "producer" else never,
                                                    holder=holder)  # fmt: skip

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "producer")
        await trio.sleep(0.1)
        with trio.move_on_after(0.2) as scope:
            await take("cancelled")
        assert scope.cancelled_caught
        [temp] = store.stats().temp_objects
        assert (temp.state, temp.holders) == ("producing", ("producer",))
        nursery.start_soon(take, "other")
        await trio.sleep(0.1)
        gate.set()
    assert set(handles) == {"producer", "other"}
    assert handles["other"].path == handles["producer"].path
    assert handles["other"].path.read_bytes() == b"done"
    handles["producer"].release()
    assert handles["other"].path.read_bytes() == b"done"
    handles["other"].release()
    assert tmp_files(root) == []


async def test_waiter_takes_over_when_producer_process_dies(root: Path, tmp_path: Path) -> None:
    Store.open(root).close()
    count = tmp_path / "count"
    proc = spawn("produce-forever", root, NAME, "--count", str(count))
    try:
        expect(proc, "PRODUCING")
        with Store.open(root) as store:
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    handle = await store.acquire_async(NAME, lambda p: p.write_bytes(b"mine"))
                    assert handle.path.read_bytes() == b"mine"
                    handle.release()

                nursery.start_soon(waiter)
                await trio.sleep(0.3)
                [temp] = store.stats().temp_objects
                assert temp.state == "producing" and len(temp.holders) == 2  # dead producer + waiter
                kill(proc)
            assert store.stats().temp_objects == ()
    finally:
        kill(proc)
    assert len(count.read_text().splitlines()) == 1  # only the worker wrote to it
    assert tmp_files(root) == []  # the dead producer's partial file is gone too


def test_holder_killed_is_reclaimed_on_reopen(root: Path) -> None:
    Store.open(root).close()
    proc = spawn("hold", root, NAME, "--content", "held")
    try:
        path = Path(expect(proc, "READY").split()[1])
        assert path.read_text() == "held"
    finally:
        kill(proc)
    with Store.open(root) as store:
        assert NAME in store.reclaimed
        assert not path.exists() and store.stats().temp_objects == ()


def test_close_releases_outstanding_handles(root: Path) -> None:
    store = Store.open(root)
    handle = store.acquire(NAME, lambda p: p.write_bytes(b"x"))
    store.close()
    assert handle.released and not handle.path.exists()
    with Store.open(root) as store:
        assert store.stats().temp_objects == ()


def test_gc_removes_orphan_temp_files(store: Store, root: Path) -> None:
    with store.acquire(NAME, lambda p: p.write_bytes(b"keep")) as handle:
        stray = root / "tmp" / "something.0123456789abcdef"
        stray.write_bytes(b"left by a crash")
        report = store.gc()
        assert "tmp/something.0123456789abcdef" in report.orphans_removed
        assert handle.path.read_bytes() == b"keep"  # held: never removed
    assert not stray.exists()
