"""Garbage collection and crash recovery.

*Collection* (:func:`collect`): flush buffered access times, reclaim what dead processes held, then remove
unreferenced blobs: all of them when no size cap applies, else least-recently-used first until the blob
bytes fit under the cap. Removal is two transactions per batch: (1) delete the records of blobs that are
still unreferenced and not touched since we looked; (2) under the writer lock again, unlink each file whose
record is still absent (a concurrent put may have brought it back: then the file is the new one). A crash
between (1) and (2) leaves orphan files, never a record without its file. Referenced blobs and temp objects
with live holders are never removed.

*Recovery* (:func:`recover`, at open): sessions (one row per open Store) whose process died mean a crash
happened with the store open; then ``data/`` is scanned for files without a record (one subdirectory per
write transaction, so a put, which renames under the same lock, is never mistaken for an orphan) and the
totals are recounted. ``wip/`` files carry their writer's pid + start time and are removed when it is dead;
``tmp/`` orphans are removed by :meth:`fs.store.temp.TempArea.scan_orphans`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from .blobs import BlobArea
from .holders import AliveCache, ProcessId
from .index import Index
from .records import (
    KIND_PACKED,
    BlobRecord,
    Counters,
    delete_blob,
    pack_key,
    read_counters,
    write_counters,
)
from .temp import TempArea

__all__ = ["GCReport", "collect", "recover"]

log = logging.getLogger(__name__)
_BATCH = 1000


@dataclass(frozen=True)
class GCReport:
    """What one gc did. ``over_cap`` means referenced blobs alone exceed ``max_size``."""

    removed_objects: int
    removed_bytes: int
    removed_temps: tuple[str, ...]
    reclaimed: tuple[str, ...]
    orphans_removed: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    max_size: int | None
    over_cap: bool
    compacted_packs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON object (``{"removed_objects": …}``)."""
        return json.dumps(self.to_dict(), sort_keys=True)


# -- removal -----------------------------------------------------------------------------------------


def remove_blobs(index: Index, blobs: BlobArea, victims: list[tuple[bytes, BlobRecord]]) -> tuple[int, int]:
    """Remove blobs that are still unreferenced and untouched since ``victims`` was read.

    Returns (objects removed, bytes removed).
    """
    count = size = 0
    for start in range(0, len(victims), _BATCH):
        batch = victims[start : start + _BATCH]
        deleted: list[bytes] = []
        files: list[bytes] = []  # of the deleted, those with a file of their own
        packs: set[int] = set()  # packs that lost a blob
        with index.write() as txn:
            delta = Counters()
            for key, seen in batch:
                raw = txn.get(key, db=index.blobs)
                if raw is None:
                    continue
                rec = BlobRecord.unpack(raw)
                if rec.nrefs or rec.last_access > seen.last_access:
                    continue  # referenced or read since we chose it
                delta = delta.plus(delete_blob(txn, index, key, rec))
                deleted.append(key)
                if rec.kind == KIND_PACKED:
                    packs.add(rec.pack_id)
                else:
                    files.append(key)
                count += 1
                size += rec.size
            write_counters(txn, index, read_counters(txn, index).plus(delta))
        with index.write() as txn:  # writer lock: no put can rename a file in meanwhile
            for key in files:
                if txn.get(key, db=index.blobs) is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(blobs.key_path(key))
            emptied = blobs.packs.drop_empty(txn, packs)
        blobs.forget(deleted)
        blobs.remove_packs(emptied)
    return count, size


def compact_packs(index: Index, blobs: BlobArea) -> int:
    """Rewrite the live rest of every pack that is more than half dead; returns how many were replaced."""
    with index.read() as txn:
        members = blobs.packs.members(txn, blobs.packs.mostly_dead(txn))
    return sum(blobs.repack(pack_id, live) for pack_id, live in members.items())


def remove_pack_leftovers(index: Index, blobs: BlobArea) -> list[str]:
    """Unlink pack files without a row and packs with nothing live (a crash between gc's two steps)."""
    with index.write() as txn:
        removed = blobs.packs.remove_orphans(txn)
        emptied = blobs.packs.drop_empty(txn)
    blobs.remove_packs(emptied)
    return removed + [f"packs/{pack_key(pack_id).decode()}" for pack_id in emptied]


def choose_victims(index: Index, cap: int | None) -> tuple[list[tuple[bytes, BlobRecord]], int, bool]:
    """Unreferenced blobs to remove (LRU first) so that blob bytes fit under ``cap`` (all if None).

    Returns (victims, blob bytes now, whether referenced bytes alone exceed the cap).
    """
    with index.read() as txn:
        total = read_counters(txn, index).bytes
        if cap is not None and total <= cap:
            return [], total, False
        free: list[tuple[bytes, BlobRecord]] = []
        referenced = 0
        with txn.cursor(db=index.blobs) as cur:
            for key, raw in cur:
                rec = BlobRecord.unpack(raw)
                if rec.nrefs:
                    referenced += rec.size
                else:
                    free.append((key, rec))
    if cap is None:
        return free, total, False
    free.sort(key=lambda item: item[1].last_access)
    victims = []
    excess = total - cap
    for key, rec in free:
        if excess <= 0:
            break
        victims.append((key, rec))
        excess -= rec.size
    return victims, total, referenced > cap


def collect(index: Index, blobs: BlobArea, temps: TempArea, cap: int | None) -> GCReport:
    """Run one gc (see the module docstring)."""
    started = time.monotonic()
    blobs.atimes.flush()
    with index.read() as txn:
        before = read_counters(txn, index).bytes
    reclaimed = reclaim_bound_holders(index, blobs)
    removed_temps = temps.reclaim()
    orphans = remove_dead_wip(blobs) + temps.scan_orphans() + remove_pack_leftovers(index, blobs)
    victims, _, over_cap = choose_victims(index, cap)
    count, size = remove_blobs(index, blobs, victims)
    compacted = compact_packs(index, blobs)
    with index.read() as txn:
        after = read_counters(txn, index).bytes
    if cap is not None:
        over_cap = after > cap
    return GCReport(
        removed_objects=count,
        removed_bytes=size,
        removed_temps=tuple(removed_temps),
        reclaimed=tuple(reclaimed),
        orphans_removed=tuple(orphans),
        bytes_before=before,
        bytes_after=after,
        max_size=cap,
        over_cap=over_cap,
        compacted_packs=compacted,
        seconds=round(time.monotonic() - started, 6),
    )


# -- process-bound holders and sessions --------------------------------------------------------------


def bind_holder(index: Index, holder: bytes) -> None:
    with index.write() as txn:
        txn.put(holder, ProcessId.current().encode(), db=index.holders)


def reclaim_bound_holders(index: Index, blobs: BlobArea) -> list[str]:
    """Drop every blob ref of bound holders whose process died; returns ``holder:<name>`` entries."""
    alive = AliveCache()
    with index.read() as txn, txn.cursor(db=index.holders) as cur:
        dead = [k for k, v in cur if not alive(*ProcessId.decode(v).to_list())]
    reclaimed = []
    for holder in dead:
        with index.write() as txn:
            raw = txn.get(holder, db=index.holders)
            if raw is None or alive(*ProcessId.decode(raw).to_list()):
                continue
            blobs.drop_holder_refs(txn, holder)
            txn.delete(holder, db=index.holders)
        reclaimed.append(f"holder:{holder.decode()}")
    return reclaimed


def open_session(index: Index) -> tuple[bytes, list[bytes]]:
    """Register this Store instance; returns (its session key, sessions of dead processes)."""
    me = ProcessId.current()
    key = f"{me.pid}:{me.start}:{secrets.token_hex(4)}".encode()
    alive = AliveCache()
    with index.write() as txn:
        txn.put(key, b"", db=index.sessions)
        with txn.cursor(db=index.sessions) as cur:
            dead = [k for k in cur.iternext(values=False) if not alive(*map(int, k.decode().split(":")[:2]))]
    return key, dead


def close_session(index: Index, key: bytes) -> None:
    with index.write() as txn:
        txn.delete(key, db=index.sessions)


# -- recovery ----------------------------------------------------------------------------------------


def remove_dead_wip(blobs: BlobArea) -> list[str]:
    """Remove ``wip/`` files whose writer process is dead; returns their paths."""
    alive = AliveCache()
    removed: list[str] = []
    try:
        names = os.listdir(blobs.wip_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        parts = name.split("-")
        try:
            live = len(parts) == 3 and alive(int(parts[0]), int(parts[1]))
        except ValueError:
            live = False
        if not live:
            try:
                os.unlink(blobs.wip_dir / name)
            except FileNotFoundError:
                continue
            removed.append(f"wip/{name}")
    return removed


def remove_data_orphans(index: Index, blobs: BlobArea) -> list[str]:
    """Remove files in ``data/`` that the index does not know; one writer-locked txn per subdirectory."""
    removed = []
    for sub in sorted(os.listdir(blobs.data_dir)):
        subdir = blobs.data_dir / sub
        with index.write() as txn:
            for name in os.listdir(subdir):
                if txn.get(b"sha256:" + name.encode(), db=index.blobs) is None:
                    os.unlink(subdir / name)
                    removed.append(f"data/sha256/{sub}/{name}")
    return removed


def recount(index: Index) -> Counters:
    """Recompute the totals from the rows (after a crash, or to repair drift)."""
    with index.write() as txn:
        objects = size = refs = ref_objects = ref_bytes = 0
        with txn.cursor(db=index.blobs) as cur:
            for _, raw in cur:
                rec = BlobRecord.unpack(raw)
                objects += 1
                size += rec.size
                refs += rec.nrefs
                if rec.nrefs:
                    ref_objects += 1
                    ref_bytes += rec.size
        counters = Counters(objects, size, refs, ref_objects, ref_bytes)
        write_counters(txn, index, counters)
    return counters


def recover(index: Index, blobs: BlobArea, temps: TempArea, dead_sessions: list[bytes]) -> list[str]:
    """Crash recovery at open; returns what was reclaimed (temp names, ``holder:…``, orphan paths)."""
    index.reader_check()
    reclaimed = reclaim_bound_holders(index, blobs)
    reclaimed += temps.reclaim()
    reclaimed += remove_dead_wip(blobs)
    reclaimed += temps.scan_orphans()
    if dead_sessions:
        reclaimed += remove_data_orphans(index, blobs)
        reclaimed += remove_pack_leftovers(index, blobs)
        recount(index)
        with index.write() as txn:
            for key in dead_sessions:
                txn.delete(key, db=index.sessions)
    if reclaimed:
        log.info("store recovery reclaimed %d item(s): %s", len(reclaimed), ", ".join(reclaimed[:10]))
    return reclaimed
