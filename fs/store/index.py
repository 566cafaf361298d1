"""The store's LMDB index: one environment per root, its sub-databases and the transaction helper.

Layout of ``<root>/index`` (one LMDB environment, ``lock=True`` so several processes share it safely)::

    blobs     b"sha256:<hex>"                -> BlobRecord (size, created, last access, refcount, kind;
                                               a packed blob adds its pack and offset)
    packs     b"<16 hex>"                    -> PackRecord (live blobs, their bytes, file size)
    refs      b"sha256:<hex>\\0<holder>"      -> b""   (who holds a blob)
    hrefs     b"<holder>\\0sha256:<hex>"      -> b""   (reverse: what a holder holds)
    temps     b"<name>"                      -> TempRecord as JSON (state, generation, claims)
    holders   b"<holder>"                    -> [pid, start] (holders bound to a process)
    sessions  b"<pid>:<start>:<token>"       -> b""   (open Store instances; a dead one means a crash)
    meta      b"counters"                    -> totals kept in step with ``blobs``/``refs``

Every logical operation is one transaction opened by :meth:`Index.write` or :meth:`Index.read`, which commit
or abort for you and translate ``lmdb`` errors into :class:`~fs.errors.StoreError` (the one place this
package talks to ``lmdb``). Nothing awaits while a write transaction is open: callers run plain
synchronous code inside the ``with`` block.

LMDB must not be opened twice in one process (closing one handle would drop the other's locks), so
environments are shared per real path and reference-counted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeAlias

import lmdb

from fs.errors import StoreError

__all__ = ["MAP_SIZE", "Index", "Txn"]

#: A transaction of this index (values come back as ``bytes``: the environment never uses ``buffers``).
Txn: TypeAlias = "lmdb.Transaction[bytes]"

MAP_SIZE = 64 << 30  # virtual: the file is sparse and grows with use
MAX_READERS = 1024
_DB_NAMES = ("blobs", "packs", "refs", "hrefs", "temps", "holders", "sessions", "meta")

_SHARED: dict[str, tuple[lmdb.Environment, int]] = {}
_SHARED_LOCK = threading.Lock()


def _acquire_env(path: Path) -> lmdb.Environment:
    key = str(path.resolve())
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is not None:
            _SHARED[key] = (entry[0], entry[1] + 1)
            return entry[0]
        path.mkdir(parents=True, exist_ok=True)
        try:
            env = lmdb.open(
                key,
                map_size=MAP_SIZE,
                max_dbs=len(_DB_NAMES) + 2,
                max_readers=MAX_READERS,
                lock=True,
                subdir=True,
                # Data pages are synced at every commit; only the meta page is not. A power loss can
                # then undo the last commit but never corrupts: data files are fsynced before their
                # record commits, so an undone commit leaves an orphan file, removed at the next open.
                metasync=False,
                readahead=False,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store index: {exc}", path=key) from exc
        _SHARED[key] = (env, 1)
        return env


def _release_env(path: Path) -> None:
    key = str(path.resolve())
    with _SHARED_LOCK:
        env, count = _SHARED[key]
        if count > 1:
            _SHARED[key] = (env, count - 1)
            return
        del _SHARED[key]
        env.close()


class Index:
    """The LMDB environment of one store root plus handles to its sub-databases.

    Attributes ``blobs``, ``packs``, ``refs``, ``hrefs``, ``temps``, ``holders``, ``sessions``, ``meta`` are
    the sub-database handles, for use inside :meth:`read` / :meth:`write` blocks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = _acquire_env(path)
        self._closed = False
        try:
            with self.env.begin(write=True) as txn:
                dbs = {name: self.env.open_db(name.encode(), txn=txn) for name in _DB_NAMES}
        except lmdb.Error as exc:
            _release_env(path)
            raise StoreError(f"cannot open the store index: {exc}", path=str(path)) from exc
        self.blobs = dbs["blobs"]
        self.packs = dbs["packs"]
        self.refs = dbs["refs"]
        self.hrefs = dbs["hrefs"]
        self.temps = dbs["temps"]
        self.holders = dbs["holders"]
        self.sessions = dbs["sessions"]
        self.meta = dbs["meta"]

    def sub_database(self, name: str) -> lmdb._Database:
        """Open (creating if missing) a named sub-database that belongs to a user of the store.

        For components that keep their own records next to the store's in the same environment (one
        LMDB, one fsync per commit), e.g. the snapshotter's ``snapshots`` metadata. The environment has
        room for two such names besides the store's own.

        Raises:
            StoreError: the name is one of the store's own, or LMDB refused (no room for more names).
        """
        if name in _DB_NAMES:
            raise StoreError(f"sub-database {name!r} belongs to the store", path=str(self.path))
        try:
            with self.env.begin(write=True) as txn:
                return self.env.open_db(name.encode(), txn=txn)
        except lmdb.Error as exc:
            raise StoreError(f"cannot open sub-database {name!r}: {exc}", path=str(self.path)) from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction: committed if the block returns, aborted if it raises.

        Blocks (in LMDB's process-shared writer mutex) while another thread or process writes. Never
        await, and never block on anything another writer may hold, inside the block.

        Raises:
            StoreError: LMDB failed (map full, I/O error); the transaction was aborted.
        """
        try:
            txn = self.env.begin(write=True)
        except lmdb.Error as exc:
            raise StoreError(f"cannot start a store transaction: {exc}", path=str(self.path)) from exc
        try:
            yield txn
        except lmdb.Error as exc:
            txn.abort()
            raise StoreError(f"store index operation failed: {exc}", path=str(self.path)) from exc
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except lmdb.Error as exc:
            raise StoreError(f"cannot commit to the store index: {exc}", path=str(self.path)) from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """One read-only snapshot; cheap (LMDB reuses reader slots)."""
        try:
            with self.env.begin() as txn:
                yield txn
        except lmdb.Error as exc:
            raise StoreError(f"store index read failed: {exc}", path=str(self.path)) from exc

    def reader_check(self) -> int:
        """Free reader slots left behind by dead processes; returns how many."""
        try:
            return self.env.reader_check()
        except lmdb.Error as exc:  # pragma: no cover
            raise StoreError(f"store index reader check failed: {exc}", path=str(self.path)) from exc

    def close(self) -> None:
        """Drop this handle (the environment closes when the last handle in the process goes)."""
        if not self._closed:
            self._closed = True
            _release_env(self.path)
