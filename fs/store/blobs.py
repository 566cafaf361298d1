"""Content-addressed blobs: files under ``data/sha256/<ab>/<hex>``, records in the ``blobs`` table.

Write protocol (a crash at any point leaves the old state or the new one):

1. hash the bytes; refuse them if they do not hash to the digest the caller vouched for;
2. write them to ``wip/<pid>-<start>-<token>``, ``fdatasync``;
3. in ONE write transaction (holding LMDB's cross-process writer lock): if the digest is already indexed,
   drop the wip file (dedup); else ``rename`` it to ``data/sha256/ab/<hex>``, ``fsync`` the directory and
   put the record; commit.

Renaming inside the writer lock is what makes "files on disk minus keys in LMDB" a safe garbage
definition: a file in ``data/`` without a record is either a crash leftover or being published by a
transaction that has not committed yet, and the orphan scan (:mod:`fs.store.gc`) looks at ``data/`` while
holding the same lock. Removal is the mirror image: drop the record (commit), then, under the writer
lock again, unlink the file only if no record came back meanwhile.

Reads look the digest up in a read snapshot (~1 µs) and ``pread`` through a small LRU of open file
descriptors. Files are immutable and content-addressed, so a descriptor kept open across a gc reads the
same valid bytes (POSIX keeps unlinked open files alive). A read never writes to the index: last-access
times are buffered (:mod:`fs.store.atimes`).

Small blobs put together (``put_many``) share one file, a *pack*, published the same way (one wip file,
renamed into ``packs/`` in the transaction that indexes them); see :mod:`fs.store.packs`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fs.errors import NotInStore, StoreError, VerificationError

from .atimes import AccessTimes
from .files import FdCache, copy_in, create_written, fsync_dir, sync_close
from .holders import ProcessId
from .index import Index, Txn
from .packs import PACK_ITEM_MAX, PACK_MIN_ITEMS, NewPacks, PackFiles
from .records import (
    KIND_PACKED,
    BlobRecord,
    Counters,
    add_ref,
    blob_holders,
    blob_key,
    check_holder,
    holder_refs,
    read_counters,
    record_place,
    record_size,
    remove_ref,
    write_counters,
)

__all__ = ["BlobArea"]

log = logging.getLogger(__name__)

FD_CACHE_SIZE = 256
_HEX = "0123456789abcdef"
_KEY_LEN = len("sha256:") + 64


class BlobArea:
    """The content-addressed half of the store. Thread-safe. See the module docstring for protocols."""

    def __init__(self, root: Path, index: Index) -> None:
        self.data_dir = root / "data" / "sha256"
        self.wip_dir = root / "wip"
        self._index = index
        self.packs = PackFiles(root, index)
        self._fds = FdCache(FD_CACHE_SIZE, self._fd_path)
        self.atimes = AccessTimes(index)
        self._me = ProcessId.current()

    def make_dirs(self) -> None:
        """Create ``data/sha256/00..ff``, ``packs/`` and ``wip/`` (durably) if missing."""
        if (self.data_dir / "ff").is_dir() and self.wip_dir.is_dir() and self.packs.dir.is_dir():
            return
        self.wip_dir.mkdir(parents=True, exist_ok=True)
        self.packs.dir.mkdir(exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for a in _HEX:
            for b in _HEX:
                (self.data_dir / (a + b)).mkdir(exist_ok=True)
        fsync_dir(self.data_dir)
        fsync_dir(self.data_dir.parent)
        fsync_dir(self.wip_dir.parent)

    def path_of(self, digest: str) -> Path:
        """The file of ``digest`` (whether or not it is stored). Blobs put alone or from a file have one;
        raises ValueError for a blob kept in a pack."""
        key = digest.encode()
        with self._index.env.begin(db=self._index.blobs) as txn:
            raw = txn.get(key)
        if raw is not None and record_place(raw) is not None:
            raise ValueError(f"{digest} is stored in a pack, not in a file of its own")
        hexpart = digest[7:]
        return self.data_dir / hexpart[:2] / hexpart

    def key_path(self, key: bytes) -> str:
        return f"{self.data_dir}/{key[7:9].decode()}/{key[7:].decode()}"

    def _fd_path(self, fd_key: bytes) -> str:
        """The file behind a descriptor cache key: a blob's own file, or a pack (``PackFiles.fd_key``)."""
        if fd_key.startswith(b"pack:"):
            return self.packs.path(int(fd_key[5:], 16))
        return self.key_path(fd_key)

    # -- lookups -------------------------------------------------------------------------------------

    def _lookup(self, digest: str) -> tuple[bytes, bytes]:
        key = digest.encode() if isinstance(digest, str) else b""
        raw = None
        if len(key) == _KEY_LEN:  # anything else is malformed, hence not stored
            with self._index.env.begin(db=self._index.blobs) as txn:
                raw = txn.get(key)
        if raw is None:
            raise NotInStore(f"{digest} is not in the store")
        return key, raw

    def has(self, digest: str) -> bool:
        """True if ``digest`` is stored (malformed digests are simply absent)."""
        key = digest.encode() if isinstance(digest, str) else b""
        if len(key) != _KEY_LEN:
            return False
        with self._index.env.begin(db=self._index.blobs) as txn:
            return txn.get(key) is not None

    def size(self, digest: str) -> int:
        """Size in bytes. Raises NotInStore."""
        return record_size(self._lookup(digest)[1])

    def pread(self, digest: str, offset: int, length: int) -> bytes:
        """Read up to ``length`` bytes at ``offset`` (short only at the end of the blob).

        Raises:
            NotInStore: not stored (or removed by a concurrent gc before the file was opened).
            ValueError: negative offset or length.
        """
        if offset < 0 or length < 0:
            raise ValueError(f"negative offset/length: {offset}, {length}")
        key, raw = self._lookup(digest)
        size = record_size(raw)
        if offset >= size or length == 0:
            return b""
        length = min(length, size - offset)
        place = record_place(raw)
        if place is None:
            fd_key, start = key, offset
        else:
            fd_key, start = PackFiles.fd_key(place[0]), place[1] + offset
        try:
            entry = self._fds.pin(fd_key)
        except FileNotFoundError:
            raise NotInStore(f"{digest} is not in the store (removed concurrently)") from None
        try:
            data = os.pread(entry.fd, length, start)
        finally:
            self._fds.unpin(entry)
        if len(data) != length:
            raise StoreError(f"{digest}: data file shorter than its record", path=self._fd_path(fd_key))
        self.atimes.touch(key)
        return data

    def open_blob(self, digest: str) -> BinaryIO:
        """A new read-only binary file object over the whole blob; the caller closes it.

        Raises:
            NotInStore: not stored.
        """
        key, raw = self._lookup(digest)
        if record_place(raw) is not None:  # at most PACK_ITEM_MAX bytes
            return io.BytesIO(self.pread(digest, 0, record_size(raw)))
        try:
            f = open(self.key_path(key), "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            raise NotInStore(f"{digest} is not in the store (removed concurrently)") from None
        self.atimes.touch(key)
        return f

    # -- writes --------------------------------------------------------------------------------------

    def new_wip_path(self) -> Path:
        return self.wip_dir / f"{self._me.pid}-{self._me.start}-{secrets.token_hex(8)}"

    def _write_new(self, entries: list[_Staged], pending: list[tuple[Path, int]]) -> None:
        """Write the bytes of ``entries`` (none stored yet) to new wip files, added to ``pending`` unsynced:
        the small ones together in one pack when there are enough of them, every other one alone."""
        small = [(e, e.data) for e in entries if e.data is not None and e.size <= PACK_ITEM_MAX]
        if len(small) >= PACK_MIN_ITEMS:
            path = self.new_wip_path()
            pending.append((path, create_written(path, [data for _, data in small])))
            offset = 0
            for entry, _ in small:
                entry.wip, entry.offset = path, offset
                offset += entry.size
        for entry in entries:
            if entry.wip is None and entry.data is not None:
                path = self.new_wip_path()
                pending.append((path, create_written(path, [entry.data])))
                entry.wip = path

    def put(self, data: bytes, *, digest: str | None = None, holder: str | None = None) -> tuple[str, int]:
        """Store ``data``; returns (digest, blob bytes now in the store). See ``Store.put``."""
        digests, total = self.put_many([(data, digest)], holder=holder)
        return digests[0], total

    def put_many(
        self, items: Iterable[tuple[bytes, str | None]], *, holder: str | None = None, verified: bool = False
    ) -> tuple[list[str], int]:
        """Store several blobs in one index transaction; returns (digests, blob bytes in the store).
        ``verified``: see ``Store.put_many``."""
        holder_b = check_holder(holder) if holder is not None else None
        staged: list[_Staged] = []
        new: list[_Staged] = []  # the first of each digest not stored yet
        pending: list[tuple[Path, int]] = []  # written, not yet synced
        writing: set[str] = set()
        try:
            for data, claimed in items:
                if verified:
                    if claimed is None:
                        raise ValueError("verified=True needs every item's digest")
                    blob_key(claimed)
                    digest = claimed
                else:
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                if claimed is not None and claimed != digest:
                    blob_key(claimed)  # a malformed claim is a ValueError, not a mismatch
                    raise VerificationError(f"bytes hash to {digest}, not to the claimed {claimed}")
                entry = _Staged(digest.encode(), None, len(data), data)
                if digest not in writing and not self.has(digest):
                    writing.add(digest)
                    new.append(entry)
                staged.append(entry)
            self._write_new(new, pending)
            sync_close(pending)
            try:
                total = self._publish(staged, holder_b)
            except _Retry:  # a duplicate we skipped was removed by gc meanwhile: write it after all
                self._write_new([entry for entry in staged if entry.wip is None], pending)
                sync_close(pending)
                total = self._publish(staged, holder_b)
        finally:
            for _, fd in pending:
                os.close(fd)
            # what the publish did not rename into place (it failed, or others indexed the blobs first)
            for wip in {entry.wip for entry in staged if entry.wip is not None}:
                wip.unlink(missing_ok=True)
        return [entry.key.decode() for entry in staged], total

    def put_file(
        self, path: Path, *, digest: str | None = None, holder: str | None = None, move: bool = False
    ) -> tuple[str, int]:
        """Store the contents of ``path`` (copied, or moved with ``move=True``). See ``Store.put_file``."""
        holder_b = check_holder(holder) if holder is not None else None
        if digest is not None and blob_key(digest) and self.has(digest):
            try:
                if holder is not None:
                    self.ref(digest, holder)
            except NotInStore:
                pass  # removed by a concurrent gc: copy it in below
            else:
                self.atimes.touch(digest.encode())
                if move:
                    Path(path).unlink(missing_ok=True)
                with self._index.read() as txn:
                    return digest, read_counters(txn, self._index).bytes
        wip = self.new_wip_path()
        try:
            size, actual = copy_in(Path(path), wip, move)
            if digest is not None and actual != digest:
                raise VerificationError(f"{path} hashes to {actual}, not to the claimed {digest}")
            total = self._publish([_Staged(actual.encode(), wip, size, None)], holder_b)
            if move:
                Path(path).unlink(missing_ok=True)
        finally:
            wip.unlink(missing_ok=True)
        return actual, total

    def _publish(self, staged: list[_Staged], holder: bytes | None) -> int:
        """Rename staged wip files into place and index them, in one write transaction."""
        now = time.time()
        if holder is None and all(entry.wip is None for entry in staged):
            for entry in staged:  # all duplicates: nothing to write (no write transaction)
                self.atimes.touch(entry.key)
            with self._index.read() as txn:
                return read_counters(txn, self._index).bytes
        renamed: list[tuple[str, Path]] = []  # (final, wip): undone on failure so a retry finds its files
        dirs: set[str] = set()
        with self._index.write() as txn:
            packs = NewPacks(self.packs, txn)
            try:
                delta = Counters()
                for entry in staged:
                    key, wip, size = entry.key, entry.wip, entry.size
                    if txn.get(key, db=self._index.blobs) is None:
                        if wip is None:  # removed since we checked: write it after all
                            raise _Retry
                        if entry.offset is None:
                            final = self.key_path(key)
                            os.rename(wip, final)
                            renamed.append((final, wip))
                            dirs.add(os.path.dirname(final))
                            record = BlobRecord(size, now, now)
                        else:
                            pack_id = packs.add(wip, size)
                            record = BlobRecord(
                                size, now, now, kind=KIND_PACKED, pack_id=pack_id, offset=entry.offset
                            )
                        txn.put(key, record.pack(), db=self._index.blobs)
                        delta = delta.plus(Counters(objects=1, bytes=size))
                    else:
                        self.atimes.touch(key, now)
                    if holder is not None:
                        delta = delta.plus(add_ref(txn, self._index, key, holder))
                dirs.update(packs.publish(renamed))
                for d in dirs:
                    fsync_dir(Path(d))
                counters = read_counters(txn, self._index).plus(delta)
                if delta != Counters():
                    write_counters(txn, self._index, counters)
            except BaseException:
                for final, wip in renamed:  # still under the writer lock: nobody indexed these
                    try:
                        os.rename(final, wip)  # back to wip: the caller retries or removes it
                    except OSError:
                        os.unlink(final)
                raise
        return counters.bytes

    def repack(self, pack_id: int, members: list[tuple[bytes, int, int]]) -> bool:
        """Move the live blobs of a mostly dead pack to a new one; see :meth:`PackFiles.repack`."""
        replaced = self.packs.repack(pack_id, members, self.new_wip_path())
        self._fds.discard([PackFiles.fd_key(pack_id)])
        return replaced

    # -- refs ----------------------------------------------------------------------------------------

    def ref(self, digest: str, holder: str) -> None:
        """Add ``holder``'s ref (idempotent). Raises NotInStore, ValueError."""
        key, holder_b = blob_key(digest), check_holder(holder)
        with self._index.write() as txn:
            delta = add_ref(txn, self._index, key, holder_b)
            write_counters(txn, self._index, read_counters(txn, self._index).plus(delta))

    def unref(self, digest: str, holder: str) -> bool:
        """Drop ``holder``'s ref; returns False if it held none. The blob stays until gc."""
        key, holder_b = blob_key(digest), check_holder(holder)
        with self._index.write() as txn:
            delta = remove_ref(txn, self._index, key, holder_b)
            write_counters(txn, self._index, read_counters(txn, self._index).plus(delta))
        return delta.refs != 0

    def refs(self, digest: str) -> set[str]:
        """Holders of ``digest`` (empty if unreferenced). Raises NotInStore."""
        key = blob_key(digest)
        with self._index.read() as txn:
            if txn.get(key, db=self._index.blobs) is None:
                raise NotInStore(f"{digest} is not in the store")
            return {h.decode() for h in blob_holders(txn, self._index, key)}

    def drop_holder_refs(self, txn: Txn, holder: bytes) -> int:
        """Inside a write txn: drop every ref of ``holder``; returns how many."""
        delta = Counters()
        keys = holder_refs(txn, self._index, holder)
        for key in keys:
            delta = delta.plus(remove_ref(txn, self._index, key, holder))
        write_counters(txn, self._index, read_counters(txn, self._index).plus(delta))
        return len(keys)

    def forget(self, keys: Iterable[bytes]) -> None:
        """Close cached descriptors of removed blobs (their bytes stay valid for pinned readers)."""
        self._fds.discard(keys)

    def remove_packs(self, pack_ids: list[int]) -> None:
        """Unlink the files of packs whose rows a committed transaction dropped
        (:meth:`PackFiles.drop_empty`) and close their cached descriptors."""
        self.packs.unlink(pack_ids)
        self.forget([PackFiles.fd_key(pack_id) for pack_id in pack_ids])

    def close(self) -> None:
        self.atimes.close()
        self._fds.clear()


@dataclass(slots=True)
class _Staged:
    """One blob of a publish: its key, the synced wip file (None: already stored), size and bytes.

    ``data`` is None for a file copied in (nothing to rewrite if a retry needs it); ``offset`` is where
    its bytes start when ``wip`` is a pack (None: the file is the blob's alone)."""

    key: bytes
    wip: Path | None
    size: int
    data: bytes | None
    offset: int | None = None


class _Retry(Exception):
    """A blob we skipped writing as a duplicate vanished before the publish transaction."""
