"""The :class:`Store` facade: one root directory, an LMDB index, blob files and temp files.

Layout of a root::

    index/                 LMDB environment (see fs.store.index)
    data/sha256/ab/<hex>   content-addressed blobs, immutable once published (fs.store.blobs)
    packs/<16 hex>         small blobs put together, one file per batch (fs.store.packs)
    wip/                   blobs being written: <pid>-<start>-<token>
    tmp/<name>.<gen>       temp objects (fs.store.temp)
    locks/<name>.lock      per-temp-object flock files

Every method is thread-safe and may be called from several processes on the same root. Methods are
synchronous and short unless they say otherwise; from trio, call the slow ones (put of large data,
put_file, gc) through ``trio.to_thread.run_sync``. A Store must not be used across ``fork()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from fs.errors import StoreError

from .blobs import BlobArea
from .gc import (
    GCReport,
    bind_holder,
    choose_victims,
    close_session,
    collect,
    compact_packs,
    open_session,
    recover,
    remove_blobs,
)
from .holders import AliveCache, ProcessId
from .index import Index
from .records import blob_key, check_holder, holders_with_prefix, read_counters
from .stats import StoreStats, TempObjectStats
from .temp import READY, TempArea, TempHandle
from .verify import verify

__all__ = ["Store"]

AUTO_EVICT_LOW_WATER = 0.9  # automatic eviction frees down to 90 % of max_size


class Store:
    """The refcounted content-addressed store plus named temp objects. Create with :meth:`open`."""

    def __init__(self, root: Path, max_size: int | None, index: Index, blobs: BlobArea, temps: TempArea,
                 session: bytes, reclaimed: list[str]) -> None:  # fmt: skip
        self.root = root
        self.max_size = max_size
        self.reclaimed = reclaimed
        self._index = index
        self._blobs = blobs
        self._temps = temps
        self._session = session
        self._closed = False
        self._evicting = threading.Lock()

    @classmethod
    def open(cls, root: Path, *, max_size: int | None = None) -> Store:
        """Open (creating if needed) the store at ``root`` and recover from crashes.

        Recovery drops what dead processes held (temp-object claims, bound holders' refs), removes
        orphan files, and lists what it reclaimed in :attr:`reclaimed`.

        Args:
            root: the store directory.
            max_size: cap on blob bytes; puts that exceed it evict least-recently-used unreferenced
                blobs (down to 90 % of the cap), and :meth:`gc` uses it by default. None: no cap.

        Raises:
            StoreError: the index cannot be opened (permissions, corrupt environment).
            ValueError: ``max_size`` is negative.
        """
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0, not {max_size}")
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory: {exc.strerror}", path=str(root)) from exc
        index = Index(root / "index")
        try:
            blobs = BlobArea(root, index)
            temps = TempArea(root, index)
            blobs.make_dirs()
            temps.make_dirs()
            session, dead = open_session(index)
            reclaimed = recover(index, blobs, temps, dead)
        except BaseException:
            index.close()
            raise
        return cls(root, max_size, index, blobs, temps, session, reclaimed)

    @property
    def index(self) -> Index:
        """The LMDB index, for components that keep their own sub-database in it
        (:meth:`Index.sub_database`) and write it with :meth:`Index.write`."""
        return self._index

    def close(self) -> None:
        """Flush access times, release handles still held, close descriptors. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._temps.close()
            self._blobs.close()
            close_session(self._index, self._session)
        finally:
            self._index.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the store is closed", path=str(self.root))

    # -- blobs ---------------------------------------------------------------------------------------

    def put(self, data: bytes, *, digest: str | None = None, holder: str | None = None) -> str:
        """Store ``data`` under its sha256 digest (once, however often it is put); returns the digest.

        The bytes are durable before the index says they exist. With ``holder``, also adds that ref.

        Raises:
            VerificationError: ``digest`` was given and the bytes do not hash to it (nothing stored).
            DiskFull: no space for the file. StoreError: other I/O or index failure.
        """
        self._check()
        digest, total = self._blobs.put(data, digest=digest, holder=holder)
        self._after_put(total)
        return digest

    def put_many(
        self,
        items: Iterable[tuple[bytes, str | None]],
        *,
        holder: str | None = None,
        verified: bool = False,
    ) -> list[str]:
        """Like :meth:`put` for several ``(data, digest or None)`` items, in one index transaction.

        All or nothing: if any item fails verification, none is stored. ``verified=True`` says the caller
        has just hashed every item to its digest (the fetcher's chunks): they are not hashed again (the
        second of two sha256 passes over every byte a lazy read fetches). Every digest must be given.
        """
        self._check()
        digests, total = self._blobs.put_many(items, holder=holder, verified=verified)
        self._after_put(total)
        return digests

    def put_file(
        self, path: Path, *, digest: str | None = None, holder: str | None = None, move: bool = False
    ) -> str:
        """Store the contents of file ``path``; returns its digest.

        Copies by default; with ``move=True`` the file is hard-linked in (falls back to a copy across file
        systems) and ``path`` is removed on success. When ``digest`` is given and already stored, the file
        is not read at all.

        Raises:
            VerificationError: the file does not hash to ``digest`` (nothing stored, ``path`` kept).
            DiskFull, StoreError: as for :meth:`put`.
        """
        self._check()
        digest, total = self._blobs.put_file(Path(path), digest=digest, holder=holder, move=move)
        self._after_put(total)
        return digest

    def has(self, digest: str) -> bool:
        """True if ``digest`` is stored."""
        self._check()
        return self._blobs.has(digest)

    def size(self, digest: str) -> int:
        """Size of a stored blob. Raises NotInStore."""
        self._check()
        return self._blobs.size(digest)

    def pread(self, digest: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (fewer only at the end of the blob) without loading it.

        Raises:
            NotInStore: not stored, or removed by a gc before it could be opened.
        """
        self._check()
        return self._blobs.pread(digest, offset, length)

    def open_blob(self, digest: str) -> BinaryIO:
        """A readable binary file over the whole blob; the caller closes it. It stays valid even if a gc
        removes the blob meanwhile. Raises NotInStore."""
        self._check()
        return self._blobs.open_blob(digest)

    def path_of(self, digest: str) -> Path:
        """Where the blob's file is (read-only; valid while it is stored and referenced). Blobs put alone
        or from a file have one; raises ValueError for a small blob stored in a pack with others."""
        blob_key(digest)
        return self._blobs.path_of(digest)

    def ref(self, digest: str, holder: str) -> None:
        """Record that ``holder`` needs ``digest`` (idempotent per pair). Raises NotInStore."""
        self._check()
        self._blobs.ref(digest, holder)

    def unref(self, digest: str, holder: str) -> bool:
        """Drop ``holder``'s ref on ``digest``; returns False if it had none. Data goes at the next gc."""
        self._check()
        return self._blobs.unref(digest, holder)

    def refs(self, digest: str) -> set[str]:
        """Holders of ``digest``. Raises NotInStore."""
        self._check()
        return self._blobs.refs(digest)

    def drop_holder(self, holder: str) -> int:
        """Drop every blob ref of ``holder`` (e.g. a removed layer); returns how many."""
        self._check()
        raw = check_holder(holder)
        with self._index.write() as txn:
            txn.delete(raw, db=self._index.holders)
            return self._blobs.drop_holder_refs(txn, raw)

    def holders(self, prefix: str = "") -> list[str]:
        """Holders whose name starts with ``prefix`` that hold at least one blob (e.g. ``"layer:"``)."""
        self._check()
        with self._index.read() as txn:
            return [h.decode() for h in holders_with_prefix(txn, self._index, prefix.encode())]

    def bind_holder(self, holder: str) -> None:
        """Tie ``holder``'s blob refs to this process: if it dies, they are dropped at the next open/gc."""
        self._check()
        bind_holder(self._index, check_holder(holder))

    def flush(self) -> None:
        """Write buffered last-access times to the index now (gc and close do it too)."""
        self._check()
        self._blobs.atimes.flush()

    def _after_put(self, total: int) -> None:
        if self.max_size is None or total <= self.max_size:
            return
        if not self._evicting.acquire(blocking=False):
            return  # another thread is evicting
        try:
            self._blobs.atimes.flush()
            victims, _, _ = choose_victims(self._index, int(self.max_size * AUTO_EVICT_LOW_WATER))
            remove_blobs(self._index, self._blobs, victims)
            compact_packs(self._index, self._blobs)  # the cap counts live bytes: keep the dead ones few
        finally:
            self._evicting.release()

    # -- temp objects --------------------------------------------------------------------------------

    def acquire(
        self, name: str, producer: Callable[[Path], None], *, holder: str | None = None
    ) -> TempHandle:
        """Get a handle on temp object ``name``, producing it with ``producer(path)`` if nobody has.

        Exactly one caller (thread or process) runs the producer; concurrent callers block until it is
        done and share the file. ``holder`` labels the claim (default ``pid:<pid>``); each call is its own
        claim, dropped by ``handle.release()``; the last release deletes the file.

        Raises:
            ProducerFailed: the producer (here or in another process) failed or died; nothing was left
                behind and a retry may succeed. The local producer's exception is ``__cause__``;
                BaseExceptions (KeyboardInterrupt) propagate as themselves.
        """
        self._check()
        return self._temps.acquire(name, producer, holder=holder)

    async def acquire_async(
        self, name: str, producer: Callable[[Path], None], *, holder: str | None = None
    ) -> TempHandle:
        """Trio version of :meth:`acquire`; the producer runs in a worker thread.

        Cancellation: a cancelled waiter drops only its own claim (the producer and other holders are
        not disturbed). A cancelled producer fails the production (waiters get ProducerFailed, the file
        is deleted) and re-raises Cancelled promptly; its worker thread is abandoned and deletes whatever
        it still writes when it ends.
        """
        self._check()
        return await self._temps.acquire_async(name, producer, holder=holder)

    # -- maintenance ---------------------------------------------------------------------------------

    def gc(self, *, max_size: int | None = None) -> GCReport:
        """Remove unreferenced blobs (LRU first, down to ``max_size`` or the store's cap; all of them when
        neither is set), temp objects nobody alive holds, and orphan files. Referenced blobs and held
        temp objects are never removed; readers with a blob already open keep reading valid bytes."""
        self._check()
        cap = max_size if max_size is not None else self.max_size
        return collect(self._index, self._blobs, self._temps, cap)

    def verify(self, *, full: bool = True) -> list[str]:
        """Check invariants (every record has its complete bytes, hashing to its digest with ``full``;
        every data or pack file has a record; pack rows, refcounts and totals agree). Returns problems;
        empty = consistent. Reads every blob with ``full``: meant for tests and ``fsck``-style checks of a
        quiet store."""
        self._check()
        return verify(self._index, self._blobs, full=full)

    def stats(self) -> StoreStats:
        """A snapshot of totals, temp objects and live bound holders."""
        self._check()
        alive = AliveCache()
        with self._index.read() as txn:
            counters = read_counters(txn, self._index)
            with txn.cursor(db=self._index.holders) as cur:
                holders = tuple(sorted(k.decode() for k, v in cur if alive(*ProcessId.decode(v).to_list())))
        temps = []
        for name, rec in self._temps.records():
            rec.prune(alive)
            temps.append(TempObjectStats(name, rec.state, rec.size, tuple(rec.holders())))
        return StoreStats(
            root=str(self.root),
            objects=counters.objects,
            bytes=counters.bytes,
            refs=counters.refs,
            referenced_objects=counters.referenced_objects,
            referenced_bytes=counters.referenced_bytes,
            temp_objects=tuple(temps),
            temp_bytes=sum(t.size or 0 for t in temps if t.state == READY),
            holders=holders,
            max_size=self.max_size,
        )

    def __repr__(self) -> str:
        return f"<Store {str(self.root)!r}{' closed' if self._closed else ''}>"
