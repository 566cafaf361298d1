"""Named temp objects: single-flight across threads, trio tasks and processes; refcounted by claims.

A temp object (``uncompressed/sha256:…``) is one file ``tmp/<quoted name>.<generation>`` plus one record in
the ``temps`` table::

    {"gen": <token>, "state": "producing" | "ready" | "failed", "producer": <claim id> | null,
     "claims": {<claim id>: [holder, pid, start]},       # live handles and registered waiters
     "failed": {<claim id>: [reason, pid, start]}}        # waiters still to be told their producer failed

Each ``acquire`` makes one claim with a fresh id, so ``release`` drops exactly one ref. A per-name lock
file ``locks/<quoted name>.lock`` carries ``fcntl.flock`` locks; the flock, not the pid, is the truth
about whether a producer is alive (the kernel drops it when the process dies).

Protocol (every step is one LMDB write transaction; no step blocks on a flock while it is open):

1. *Try*: take the name's flock with ``LOCK_EX | LOCK_NB`` (may fail), then in one transaction:
   a. my claim id is in ``failed`` -> remove it, raise :class:`ProducerFailed`;
   b. ``ready`` -> add my claim, return a handle;
   c. I got the flock -> nobody is producing (a producer holds the flock from before it commits
      ``producing`` until after it commits the outcome), so I become the producer: new generation,
      ``producing``, claims kept (a stale ``producing`` record means its producer died: take over and
      delete its file), commit, and keep the flock while producing;
   d. otherwise somebody holds the flock: if the record is ``producing``, register my claim as a waiter
      (so the object cannot be deleted before I wake); drop my flock attempt and wait.
2. *Wait*: until the flock is free (sync: blocking ``LOCK_SH``; trio: ``LOCK_SH | LOCK_NB`` polled with a
   short sleep, so cancellation is prompt and no worker thread is tied up), then go to 1.
3. *Produce*: run ``producer(path)``. Success: commit ``ready`` + size, then release the flock. Failure or
   cancellation: commit ``failed`` moving every waiter's claim into ``failed`` (or delete the record if
   none), delete the file, release the flock; waiters wake in 1a with ProducerFailed and may retry.
4. *Release* (handle or cancelled waiter): remove my claim; if the object is ``ready`` and no claim is
   left, delete the record (commit), then the file. A cancelled waiter never touches the producer.

Claims and failed entries of dead processes (pid + start time) are pruned whenever a record is touched;
:meth:`TempArea.reclaim` (at open and gc) also settles ``producing`` records whose flock is free. Files in
``tmp/`` are created only after their record commits and generations are never reused, so "files minus
records" (listing first, snapshot second) is a safe orphan test at any time.

Caveats: a cancelled trio producer's worker thread cannot be killed; it is abandoned, runs to
completion, and deletes its output itself. A caller arriving after the last holder released starts a
new production: temp objects live only as long as somebody holds them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from fs.errors import ProducerFailed, StoreError

from .holders import AliveCache, ProcessId
from .index import Index, Txn
from .tempstate import (
    FAILED,
    PRODUCING,
    READY,
    Claim,
    NameLock,
    TempHandle,
    TempRecord,
    base_name,
    check_name,
    remove_path,
)

__all__ = ["READY", "TempArea", "TempHandle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Ready:
    """The object exists: our claim on it is recorded."""

    path: Path
    size: int | None


@dataclass(frozen=True, slots=True)
class _Failed:
    """The producer we waited for failed (``reason``); our claim was dropped with it."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Produce:
    """We produce it (generation ``gen``), holding the name's exclusive ``lock``."""

    gen: str
    lock: NameLock


@dataclass(frozen=True, slots=True)
class _Wait:
    """Someone else produces it: wait on ``lock``, then try again."""

    lock: NameLock


_Outcome: TypeAlias = _Ready | _Failed | _Produce | _Wait


class TempArea:
    """The temp-object half of the store. Thread-safe; see the module docstring for the protocol."""

    def __init__(self, root: Path, index: Index) -> None:
        self.tmp_dir = root / "tmp"
        self.lock_dir = root / "locks"
        self._index = index
        self._handles: set[TempHandle] = set()

    def make_dirs(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dir.mkdir(parents=True, exist_ok=True)

    def path_of(self, name: str, gen: str) -> Path:
        return self.tmp_dir / f"{base_name(name)}.{gen}"

    def _lock(self, name: str) -> NameLock:
        return NameLock(self.lock_dir / f"{base_name(name)}.lock")

    def _new_claim(self, name: str, holder: str | None) -> Claim:
        check_name(name)
        me = ProcessId.current()
        holder = holder if holder is not None else f"pid:{me.pid}"
        if not holder or "\0" in holder:
            raise ValueError(f"invalid holder name: {holder!r}")
        return Claim(f"{me.pid}.{me.start}.{secrets.token_hex(6)}", holder, me)

    # -- protocol steps (each one write transaction) -------------------------------------------------

    def _load(self, txn: Txn, name: str) -> TempRecord | None:
        raw = txn.get(name.encode(), db=self._index.temps)
        return None if raw is None else TempRecord.decode(raw)

    def _save(self, txn: Txn, name: str, rec: TempRecord) -> None:
        txn.put(name.encode(), rec.encode(), db=self._index.temps)

    def _settle(self, txn: Txn, name: str, rec: TempRecord) -> Path | None:
        """Store ``rec`` after claims changed; returns a file to delete once the txn commits."""
        if rec.state == READY and not rec.claims:
            path = self.path_of(name, rec.gen)
            if rec.failed:
                rec.state, rec.size = FAILED, None
                self._save(txn, name, rec)
            else:
                txn.delete(name.encode(), db=self._index.temps)
            return path
        if rec.state == FAILED and not rec.failed and not rec.claims:
            txn.delete(name.encode(), db=self._index.temps)
            return None
        self._save(txn, name, rec)
        return None

    def _try(self, name: str, claim: Claim) -> _Outcome:
        lock = self._lock(name)
        got = lock.try_exclusive()
        stale: Path | None = None
        outcome: _Outcome = _Wait(lock)
        try:
            with self._index.write() as txn:
                rec = self._load(txn, name)
                if rec is not None:
                    rec.prune(AliveCache())
                if rec is not None and claim.cid in rec.failed:
                    reason = rec.failed.pop(claim.cid)[0]
                    self._settle(txn, name, rec)
                    outcome = _Failed(reason)
                elif rec is not None and rec.state == READY:
                    rec.claims[claim.cid] = claim.entry()
                    self._save(txn, name, rec)
                    outcome = _Ready(self.path_of(name, rec.gen), rec.size)
                elif got:
                    if rec is not None and rec.state == PRODUCING:
                        stale = self.path_of(name, rec.gen)
                        log.info("temp object %s: producer %s is gone, taking over", name, rec.producer)
                    new = TempRecord(gen=secrets.token_hex(8), state=PRODUCING, producer=claim.cid)
                    if rec is not None:
                        new.claims, new.failed = rec.claims, rec.failed
                    new.claims[claim.cid] = claim.entry()
                    self._save(txn, name, new)
                    outcome = _Produce(new.gen, lock)
                elif rec is not None and rec.state == PRODUCING:
                    rec.claims[claim.cid] = claim.entry()
                    self._save(txn, name, rec)
        finally:
            if not isinstance(outcome, _Produce):
                lock.release()
        if stale is not None:
            remove_path(stale)
        return outcome

    def _finish(self, name: str, claim: Claim, gen: str, lock: NameLock) -> TempHandle:
        path = self.path_of(name, gen)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise StoreError(f"the producer of {name} returned without creating {path}") from None
        with self._index.write() as txn:
            rec = self._load(txn, name)
            if rec is None or rec.gen != gen or rec.state != PRODUCING:  # pragma: no cover - defensive
                raise StoreError(f"temp object {name} changed while it was being produced")
            rec.state, rec.size, rec.producer = READY, size, None
            self._save(txn, name, rec)
        lock.release()
        return self._handle(name, path, claim, size)

    def _fail(self, name: str, claim: Claim, gen: str, lock: NameLock, reason: str) -> None:
        try:
            with self._index.write() as txn:
                rec = self._load(txn, name)
                if rec is not None and rec.gen == gen and rec.state == PRODUCING:
                    rec.claims.pop(claim.cid, None)
                    rec.prune(AliveCache())
                    for cid, (_, pid, start) in rec.claims.items():
                        rec.failed[cid] = [reason, pid, start]
                    rec.claims, rec.state, rec.producer, rec.error = {}, FAILED, None, reason
                    self._settle(txn, name, rec)
        finally:
            remove_path(self.path_of(name, gen))
            lock.release()

    def drop_claim(self, name: str, claim: Claim) -> None:
        """Remove one claim (a released handle or a cancelled waiter); never disturbs a producer."""
        remove = None
        with self._index.write() as txn:
            rec = self._load(txn, name)
            if rec is None or (claim.cid not in rec.claims and claim.cid not in rec.failed):
                return
            rec.claims.pop(claim.cid, None)
            rec.failed.pop(claim.cid, None)
            rec.prune(AliveCache())
            remove = self._settle(txn, name, rec)
        if remove is not None:
            remove_path(remove)

    def _handle(self, name: str, path: Path, claim: Claim, size: int | None) -> TempHandle:
        handle = TempHandle(self, name, path, claim, size)
        self._handles.add(handle)
        return handle

    # -- drivers -------------------------------------------------------------------------------------

    def acquire(
        self, name: str, producer: Callable[[Path], None], *, holder: str | None = None
    ) -> TempHandle:
        """Sync driver of the protocol; see ``Store.acquire``."""
        claim = self._new_claim(name, holder)
        try:
            while True:
                outcome = self._try(name, claim)
                if isinstance(outcome, _Ready):
                    return self._handle(name, outcome.path, claim, outcome.size)
                if isinstance(outcome, _Failed):
                    raise ProducerFailed(f"the producer of temp object {name} failed: {outcome.reason}")
                if isinstance(outcome, _Produce):
                    return self._produce_sync(name, claim, outcome.gen, outcome.lock, producer)
                outcome.lock.wait_sync()
        except BaseException:
            self.drop_claim(name, claim)
            raise

    def _produce_sync(
        self, name: str, claim: Claim, gen: str, lock: NameLock, producer: Callable[[Path], None]
    ) -> TempHandle:
        try:
            producer(self.path_of(name, gen))
            return self._finish(name, claim, gen, lock)
        except BaseException as exc:
            self._fail(name, claim, gen, lock, _describe(exc))
            if isinstance(exc, Exception) and not isinstance(exc, ProducerFailed):
                raise ProducerFailed(f"the producer of temp object {name} failed: {_describe(exc)}") from exc
            raise

    async def acquire_async(
        self, name: str, producer: Callable[[Path], None], *, holder: str | None = None
    ) -> TempHandle:
        """Trio driver of the protocol; see ``Store.acquire_async``."""
        import trio

        claim = self._new_claim(name, holder)
        try:
            while True:
                await trio.lowlevel.checkpoint()
                outcome = self._try(name, claim)
                if isinstance(outcome, _Ready):
                    return self._handle(name, outcome.path, claim, outcome.size)
                if isinstance(outcome, _Failed):
                    raise ProducerFailed(f"the producer of temp object {name} failed: {outcome.reason}")
                if isinstance(outcome, _Produce):
                    return await self._produce_async(name, claim, outcome.gen, outcome.lock, producer)
                await outcome.lock.wait_async()
        except BaseException:
            self.drop_claim(name, claim)
            raise

    async def _produce_async(
        self, name: str, claim: Claim, gen: str, lock: NameLock, producer: Callable[[Path], None]
    ) -> TempHandle:
        import trio

        path = self.path_of(name, gen)
        abandoned = threading.Event()

        def run() -> None:
            try:
                producer(path)
            finally:
                if abandoned.is_set():  # our task was cancelled and already cleaned up
                    remove_path(path)

        try:
            await trio.to_thread.run_sync(run, abandon_on_cancel=True)
            return self._finish(name, claim, gen, lock)
        except BaseException as exc:
            abandoned.set()
            self._fail(name, claim, gen, lock, _describe(exc))
            if isinstance(exc, Exception) and not isinstance(exc, ProducerFailed):
                raise ProducerFailed(f"the producer of temp object {name} failed: {_describe(exc)}") from exc
            raise

    # -- maintenance ---------------------------------------------------------------------------------

    def records(self) -> list[tuple[str, TempRecord]]:
        with self._index.read() as txn, txn.cursor(db=self._index.temps) as cur:
            return [(k.decode(), TempRecord.decode(v)) for k, v in cur]

    def reclaim(self) -> list[str]:
        """Prune dead claims, settle records whose producer is gone, delete unheld objects.

        Returns the names of temp objects whose dead holders were dropped or whose file was deleted.
        """
        reclaimed = []
        alive = AliveCache()
        for name, snapshot in self.records():
            lock = None
            if snapshot.state == PRODUCING:
                lock = self._lock(name)
                if not lock.try_exclusive():
                    continue  # a live producer holds it
            remove: list[Path] = []
            dropped: list[str] = []
            try:
                with self._index.write() as txn:
                    rec = self._load(txn, name)
                    if rec is None:
                        continue
                    dropped = rec.prune(alive)
                    if rec.state == PRODUCING and lock is not None:  # flock free: the producer is gone
                        remove.append(self.path_of(name, rec.gen))
                        for cid, (_, pid, start) in rec.claims.items():
                            rec.failed[cid] = ["the producer process died", pid, start]
                        rec.claims, rec.state, rec.producer = {}, FAILED, None
                        dropped.append("producer")
                    path = self._settle(txn, name, rec)
                    if path is not None:
                        remove.append(path)
            finally:
                for path in remove:
                    remove_path(path)
                if lock is not None:
                    lock.release()
            if dropped or remove:
                reclaimed.append(name)
        return reclaimed

    def scan_orphans(self) -> list[str]:
        """Delete files in ``tmp/`` without a record (and idle lock files); returns removed paths."""
        removed: list[str] = []
        try:
            files = os.listdir(self.tmp_dir)
            locks = os.listdir(self.lock_dir)
        except FileNotFoundError:
            return removed
        records = self.records()  # after the listing: see the module docstring
        expected = {f"{base_name(name)}.{rec.gen}" for name, rec in records}
        for fname in files:
            if fname not in expected:
                remove_path(self.tmp_dir / fname)
                removed.append(f"tmp/{fname}")
        names = {f"{base_name(name)}.lock" for name, _ in records}
        for fname in locks:
            if fname in names:
                continue
            lock = NameLock(self.lock_dir / fname)
            if lock.try_exclusive():
                try:  # holding the flock, no record can appear for this name
                    with self._index.read() as txn, txn.cursor(db=self._index.temps) as cur:
                        keys = cur.iternext(values=False)
                        busy = any(f"{base_name(k.decode())}.lock" == fname for k in keys)
                    if not busy:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(lock.path)
                finally:
                    lock.release()
        return removed

    def close(self) -> None:
        """Release every handle this area still holds."""
        for handle in list(self._handles):
            with contextlib.suppress(StoreError, OSError):
                handle.release()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        text = f"no space left on device ({text})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
