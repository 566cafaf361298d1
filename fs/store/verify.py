"""``Store.verify``: check a quiet store's invariants, fsck-style."""

from __future__ import annotations

import hashlib
import os

from .blobs import BlobArea
from .index import Index
from .records import BlobRecord, Counters, PackRecord, blob_holders, read_counters, record_place

__all__ = ["verify"]


def verify(index: Index, blobs: BlobArea, *, full: bool = True) -> list[str]:
    """Check the store's invariants; returns the problems found (empty: consistent).

    Every record has its bytes: its file with the recorded size, or its range inside its pack (and, with
    ``full``, they hash to its digest); every file in ``data/`` and ``packs/`` has a record; each pack's row
    counts the blobs that point into it and its file has the recorded size; refcounts match the ref rows;
    totals match the rows. Runs in one read snapshot (files published concurrently by other processes may
    show up as unindexed: verify a quiet store).
    """
    problems = []
    seen = set()
    in_packs: dict[int, tuple[int, int]] = {}  # pack id -> (blobs, bytes) the records point at
    with index.read() as txn:
        total = Counters()
        with txn.cursor(db=index.blobs) as cur:
            for key, raw in cur:
                rec = BlobRecord.unpack(raw)
                digest = key.decode()
                place = record_place(raw)
                if place is None:
                    seen.add(digest[7:])
                    problems += _check_bytes(blobs.key_path(key), 0, rec.size, digest, full, whole=True)
                else:
                    count, size = in_packs.get(place[0], (0, 0))
                    in_packs[place[0]] = (count + 1, size + rec.size)
                    path = blobs.packs.path(place[0])
                    problems += _check_bytes(path, place[1], rec.size, digest, full, whole=False)
                holders = blob_holders(txn, index, key)
                if len(holders) != rec.nrefs:
                    problems.append(f"{digest}: refcount {rec.nrefs} but {len(holders)} ref rows")
                referenced = bool(rec.nrefs)
                total = total.plus(
                    Counters(1, rec.size, rec.nrefs, int(referenced), rec.size if referenced else 0)
                )
        counters = read_counters(txn, index)
        if counters != total:
            problems.append(f"totals {counters} do not match the rows {total}")
        rows = {}
        with txn.cursor(db=index.packs) as cur:
            for key, raw in cur:
                rows[int(key, 16)] = PackRecord.unpack(raw)
    for sub in sorted(os.listdir(blobs.data_dir)):
        for name in os.listdir(blobs.data_dir / sub):
            if name not in seen:
                problems.append(f"data/sha256/{sub}/{name}: file without a record")
    problems += _check_packs(blobs, rows, in_packs)
    return problems


def _check_bytes(path: str, offset: int, size: int, digest: str, full: bool, *, whole: bool) -> list[str]:
    """A blob's bytes at ``offset`` of ``path`` (the whole file when ``whole``)."""
    try:
        file_size = os.stat(path).st_size
    except FileNotFoundError:
        return [f"{digest}: indexed but its file is missing ({path})"]
    if whole and file_size != size:
        return [f"{digest}: file has {file_size} bytes, record says {size}"]
    if offset + size > file_size:
        return [f"{digest}: its pack {path} has {file_size} bytes, the record needs {offset + size}"]
    if full:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(offset)
            left = size
            while left and (block := f.read(min(left, 1 << 20))):
                hasher.update(block)
                left -= len(block)
        if "sha256:" + hasher.hexdigest() != digest:
            return [f"{digest}: content in {path} does not hash to its digest"]
    return []


def _check_packs(
    blobs: BlobArea, rows: dict[int, PackRecord], in_packs: dict[int, tuple[int, int]]
) -> list[str]:
    problems = []
    for pack_id, row in rows.items():
        path = blobs.packs.path(pack_id)
        count, size = in_packs.get(pack_id, (0, 0))
        if (row.live, row.live_bytes) != (count, size):
            problems.append(
                f"{path}: row counts {row.live} blobs, {row.live_bytes} bytes; records {count}, {size}"
            )
        try:
            file_size = os.stat(path).st_size
        except FileNotFoundError:
            problems.append(f"{path}: pack row without its file")
            continue
        if file_size != row.size:
            problems.append(f"{path}: file has {file_size} bytes, its row says {row.size}")
    for pack_id in in_packs.keys() - rows.keys():
        problems.append(f"{blobs.packs.path(pack_id)}: blobs point into a pack without a row")
    try:
        names = os.listdir(blobs.packs.dir)
    except FileNotFoundError:
        names = []
    known = {blobs.packs.path(pack_id).rsplit("/", 1)[1] for pack_id in rows}
    problems += [f"packs/{name}: pack file without a row" for name in names if name not in known]
    return problems
