"""Pack files: the small blobs of one ``put_many`` kept together in one file, ``packs/<16 hex>``.

A lazy read stores what it fetched as one batch of verified chunks (tens to hundreds of 64 KiB-2 MiB
pieces). A file per chunk cost a create, a rename and an ext4 inode per chunk, and that was a fifth of the
daemon's CPU while a container read a whole image. A batch of at least ``PACK_MIN_ITEMS`` new blobs of at
most ``PACK_ITEM_MAX`` bytes each is written as one file instead; each blob's record names the pack and the
offset of its bytes (:class:`~fs.store.records.BlobRecord`, ``KIND_PACKED``).

Packs follow the blob protocols of :mod:`fs.store.blobs`: written in ``wip/`` and synced, renamed into
``packs/`` inside the write transaction that indexes their blobs, never written again. A pack's row in the
``packs`` table counts its blobs still indexed; removing one (gc) decrements it, and once nothing in the pack
is live its row goes and its file is unlinked, under the writer lock. Blobs removed one by one leave dead
bytes behind: gc rewrites the live rest of a pack that is more than half dead (``BlobArea.repack``), so after
a gc a pack file is never more than twice the live bytes it holds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .files import create_written, fsync_dir, sync_close
from .index import Index, Txn
from .records import BlobRecord, PackRecord, pack_key, record_place, record_size

__all__ = ["PACK_ITEM_MAX", "PACK_MIN_ITEMS", "NewPacks", "PackFiles"]

PACK_ITEM_MAX = 4 << 20  # bigger blobs (whole layers, big chunks) keep a file of their own
PACK_MIN_ITEMS = 2  # a single new blob is a file of its own: a pack of one saves nothing


class PackFiles:
    """The ``packs/`` directory and the ``packs`` rows of one store. Methods taking ``txn`` run inside the
    caller's transaction; those that unlink need a write transaction (the writer lock)."""

    def __init__(self, root: Path, index: Index) -> None:
        self.dir = root / "packs"
        self._index = index

    def path(self, pack_id: int) -> str:
        return f"{self.dir}/{pack_key(pack_id).decode()}"

    @staticmethod
    def fd_key(pack_id: int) -> bytes:
        """The descriptor cache's key of a pack (blob keys are ``sha256:…``, so these never collide)."""
        return b"pack:%016x" % pack_id  # pack_key's form: one formatting on the read path

    def new_id(self, txn: Txn) -> int:
        while True:
            pack_id = secrets.randbits(64)
            if txn.get(pack_key(pack_id), db=self._index.packs) is None:
                return pack_id

    def row(self, txn: Txn, pack_id: int) -> PackRecord | None:
        raw = txn.get(pack_key(pack_id), db=self._index.packs)
        return None if raw is None else PackRecord.unpack(raw)

    def put_row(self, txn: Txn, pack_id: int, row: PackRecord) -> None:
        txn.put(pack_key(pack_id), row.pack(), db=self._index.packs)

    def drop_empty(self, txn: Txn, pack_ids: Iterable[int] | None = None) -> list[int]:
        """In a write transaction: remove the rows of packs without a live blob (of ``pack_ids``, or every
        pack). Returns the ids removed: the caller unlinks their files (:meth:`unlink`) once the
        transaction has committed, and drops their descriptors. A file unlinked before the commit would
        be gone while a crash rolled its row back, and after a repack the records pointing into it too."""
        if pack_ids is None:
            with txn.cursor(db=self._index.packs) as cur:
                pack_ids = [int(key, 16) for key, raw in cur if PackRecord.unpack(raw).live == 0]
        removed: list[int] = []
        for pack_id in pack_ids:
            row = self.row(txn, pack_id)
            if row is None or row.live:
                continue
            txn.delete(pack_key(pack_id), db=self._index.packs)
            removed.append(pack_id)
        return removed

    def unlink(self, pack_ids: Iterable[int]) -> None:
        """Unlink the files of packs whose rows a committed transaction removed (ids are random 64-bit
        numbers, never handed out again while a file has them; a crash before this leaves orphans, which
        :meth:`remove_orphans` removes)."""
        for pack_id in pack_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(pack_id))

    def remove_orphans(self, txn: Txn) -> list[str]:
        """In a write transaction: unlink pack files without a row (a publish that never committed).
        Returns their paths relative to the root."""
        removed: list[str] = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return removed
        for name in names:
            if txn.get(name.encode(), db=self._index.packs) is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / name)
                removed.append(f"packs/{name}")
        return removed

    def repack(self, pack_id: int, members: list[tuple[bytes, int, int]], wip: Path) -> bool:
        """Copy the live blobs ``members`` (``(key, offset, size)``, from :meth:`members`) of a pack into a
        new one written at ``wip``, point their records at it and drop the old file once nothing live is
        left in it. Returns whether the old pack went (False if it was gone already or nothing moved).

        A reader holding the old file open keeps reading the same bytes; one that looked the record up
        before the move and opens the old path after it gets NotInStore and fetches again.
        """
        try:
            fd = os.open(self.path(pack_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            parts = [os.pread(fd, size, offset) for _, offset, size in members]
        finally:
            os.close(fd)
        pending = [(wip, create_written(wip, parts))]
        try:
            sync_close(pending)
            with self._index.write() as txn:
                old = self.row(txn, pack_id)
                if old is None:
                    return False
                new_id, moved, moved_bytes, new_offset = self.new_id(txn), 0, 0, 0
                for (key, offset, size), data in zip(members, parts, strict=True):
                    raw = txn.get(key, db=self._index.blobs)
                    if raw is not None and record_place(raw) == (pack_id, offset) and len(data) == size:
                        rec = replace(BlobRecord.unpack(raw), pack_id=new_id, offset=new_offset)
                        txn.put(key, rec.pack(), db=self._index.blobs)
                        moved, moved_bytes = moved + 1, moved_bytes + size
                    new_offset += len(data)
                if not moved:
                    return False
                os.rename(wip, self.path(new_id))
                fsync_dir(self.dir)
                self.put_row(txn, new_id, PackRecord(moved, moved_bytes, new_offset))
                left = PackRecord(old.live - moved, old.live_bytes - moved_bytes, old.size)
                self.put_row(txn, pack_id, left)
                emptied = self.drop_empty(txn, [pack_id])
            self.unlink(emptied)  # committed: no rollback can point records back into it now
            return bool(emptied)
        finally:
            wip.unlink(missing_ok=True)

    def mostly_dead(self, txn: Txn) -> list[int]:
        """Packs whose live bytes are less than half of their file."""
        with txn.cursor(db=self._index.packs) as cur:
            return [int(key, 16) for key, raw in cur if _mostly_dead(PackRecord.unpack(raw))]

    def members(self, txn: Txn, pack_ids: Iterable[int]) -> dict[int, list[tuple[bytes, int, int]]]:
        """The live blobs of ``pack_ids``: ``{pack_id: [(key, offset, size), …]}`` in pack order (one scan
        of the blob records)."""
        wanted: dict[int, list[tuple[bytes, int, int]]] = {pack_id: [] for pack_id in pack_ids}
        if not wanted:
            return wanted
        with txn.cursor(db=self._index.blobs) as cur:
            for key, raw in cur:
                place = record_place(raw)
                if place is not None and place[0] in wanted:
                    wanted[place[0]].append((key, place[1], record_size(raw)))
        for blobs in wanted.values():
            blobs.sort(key=lambda blob: blob[1])
        return wanted


class NewPacks:
    """The packs one publish transaction renames into place: an id for each wip file, and its live count."""

    def __init__(self, packs: PackFiles, txn: Txn) -> None:
        self._packs = packs
        self._txn = txn
        self._new: dict[Path, tuple[int, int, int]] = {}  # wip -> (pack id, live blobs, live bytes)

    def add(self, wip: Path, size: int) -> int:
        """Count one blob of ``size`` bytes of the pack written at ``wip`` as indexed; returns the pack id."""
        pack_id, live, live_bytes = self._new.get(wip) or (self._packs.new_id(self._txn), 0, 0)
        self._new[wip] = (pack_id, live + 1, live_bytes + size)
        return pack_id

    def publish(self, renamed: list[tuple[str, Path]]) -> set[str]:
        """Rename every pack with a live blob into ``packs/`` (appending ``(final, wip)`` to ``renamed``) and
        write its row; returns the directories to fsync before the commit."""
        for wip, (pack_id, live, live_bytes) in self._new.items():
            final = self._packs.path(pack_id)
            os.rename(wip, final)
            renamed.append((final, wip))
            # the whole file: blobs others indexed first are dead bytes in it from the start
            self._packs.put_row(self._txn, pack_id, PackRecord(live, live_bytes, os.stat(final).st_size))
        return {str(self._packs.dir)} if self._new else set()


def _mostly_dead(row: PackRecord) -> bool:
    return row.live > 0 and row.live_bytes * 2 < row.size
