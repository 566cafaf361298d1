"""Index records and the small in-transaction operations on them (no file I/O here).

Blob records are packed structs (they are read on every chunk lookup); temp records are JSON (rare,
and readable with ``mdb_dump`` when debugging). Totals in ``meta`` are updated in the same transaction
as the rows they count, so ``stats`` is O(1) in the number of blobs.
"""

from __future__ import annotations

import builtins
import re
import struct
from dataclasses import dataclass, replace

from fs.errors import NotInStore

from .index import Index, Txn

__all__ = [
    "KIND_FILE",
    "KIND_PACKED",
    "BlobRecord",
    "Counters",
    "PackRecord",
    "add_ref",
    "blob_key",
    "check_holder",
    "delete_blob",
    "holder_refs",
    "pack_key",
    "read_counters",
    "record_place",
    "remove_ref",
    "write_counters",
]

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
KIND_FILE = 1  # the blob is a file of its own under data/
KIND_PACKED = 2  # the blob is a byte range of a pack file under packs/


def blob_key(digest: str) -> bytes:
    """Validate ``sha256:<64 lowercase hex>`` and return the index key.

    Raises:
        ValueError: ``digest`` is not a sha256 digest string.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.encode()


def check_holder(holder: str) -> bytes:
    """Validate a holder name (non-empty, no NUL, ≤ 400 bytes) and return it encoded.

    Raises:
        ValueError: the name is unusable as a key part.
    """
    raw = holder.encode() if isinstance(holder, str) else b""
    if not raw or b"\0" in raw or len(raw) > 400:
        raise ValueError(f"invalid holder name: {holder!r}")
    return raw


@dataclass(frozen=True, slots=True)
class BlobRecord:
    """What the index knows about one content-addressed blob."""

    size: int
    created: float
    last_access: float
    nrefs: int = 0
    kind: int = KIND_FILE
    pack_id: int = 0  # KIND_PACKED: which pack file
    offset: int = 0  # KIND_PACKED: where in it the blob's bytes start

    _FMT = struct.Struct("<QddIB")
    _PACKED_FMT = struct.Struct("<QddIBQQ")

    def pack(self) -> bytes:
        if self.kind == KIND_PACKED:
            return self._PACKED_FMT.pack(
                self.size, self.created, self.last_access, self.nrefs, self.kind, self.pack_id, self.offset
            )
        return self._FMT.pack(self.size, self.created, self.last_access, self.nrefs, self.kind)

    @classmethod
    def unpack(cls, raw: bytes) -> BlobRecord:
        if len(raw) == cls._PACKED_FMT.size:
            return cls(*cls._PACKED_FMT.unpack(raw))
        return cls(*cls._FMT.unpack(raw))


#: Size of a packed record of a KIND_PACKED blob, and where its (pack_id, offset) pair sits in it.
PACKED_RECORD_SIZE = BlobRecord._PACKED_FMT.size
_PACK_PLACE = struct.Struct("<QQ")
_PACK_PLACE_AT = BlobRecord._FMT.size


def record_place(raw: bytes) -> tuple[int, int] | None:
    """``(pack_id, offset)`` of a packed record of a KIND_PACKED blob, None for a file (hot path)."""
    if len(raw) != PACKED_RECORD_SIZE:
        return None
    place: tuple[int, int] = _PACK_PLACE.unpack_from(raw, _PACK_PLACE_AT)
    return place


@dataclass(frozen=True, slots=True)
class PackRecord:
    """What the index knows about one pack file: how many of its blobs are still indexed (``live``),
    their bytes, and the file's size (live bytes plus the dead ones of blobs since removed)."""

    live: int
    live_bytes: int
    size: int

    _FMT = struct.Struct("<QQQ")

    def pack(self) -> bytes:
        return self._FMT.pack(self.live, self.live_bytes, self.size)

    @classmethod
    def unpack(cls, raw: bytes) -> PackRecord:
        return cls(*cls._FMT.unpack(raw))


def pack_key(pack_id: int) -> bytes:
    """The ``packs`` row key of a pack (also its file name under ``packs/``)."""
    return b"%016x" % pack_id


_SIZE_ONLY = struct.Struct("<Q")


def record_size(raw: bytes) -> int:
    """The size field of a packed :class:`BlobRecord`, without building the object (hot path)."""
    size: int = _SIZE_ONLY.unpack_from(raw)[0]
    return size


@dataclass(frozen=True, slots=True)
class Counters:
    """Totals over ``blobs`` and ``refs``."""

    objects: int = 0
    bytes: int = 0
    refs: int = 0
    referenced_objects: int = 0
    referenced_bytes: int = 0

    _FMT = struct.Struct("<5q")

    def pack(self) -> builtins.bytes:  # ``bytes`` is a field here
        return self._FMT.pack(
            self.objects, self.bytes, self.refs, self.referenced_objects, self.referenced_bytes
        )

    @classmethod
    def unpack(cls, raw: builtins.bytes | None) -> Counters:
        return cls() if raw is None else cls(*cls._FMT.unpack(raw))

    def plus(self, other: Counters) -> Counters:
        return Counters(*(a + b for a, b in zip(self._fields(), other._fields(), strict=True)))

    def _fields(self) -> tuple[int, ...]:
        return (self.objects, self.bytes, self.refs, self.referenced_objects, self.referenced_bytes)


_COUNTERS_KEY = b"counters"


def read_counters(txn: Txn, index: Index) -> Counters:
    return Counters.unpack(txn.get(_COUNTERS_KEY, db=index.meta))


def write_counters(txn: Txn, index: Index, counters: Counters) -> None:
    txn.put(_COUNTERS_KEY, counters.pack(), db=index.meta)


def add_ref(txn: Txn, index: Index, key: bytes, holder: bytes) -> Counters:
    """Record that ``holder`` holds blob ``key`` (idempotent). Returns the counter delta.

    Raises:
        NotInStore: the blob has no record.
    """
    raw = txn.get(key, db=index.blobs)
    if raw is None:
        raise NotInStore(f"{key.decode()} is not in the store")
    ref_key = key + b"\0" + holder
    if txn.get(ref_key, db=index.refs) is not None:
        return Counters()
    txn.put(ref_key, b"", db=index.refs)
    txn.put(holder + b"\0" + key, b"", db=index.hrefs)
    rec = BlobRecord.unpack(raw)
    txn.put(key, replace(rec, nrefs=rec.nrefs + 1).pack(), db=index.blobs)
    first = rec.nrefs == 0
    return Counters(refs=1, referenced_objects=int(first), referenced_bytes=rec.size if first else 0)


def remove_ref(txn: Txn, index: Index, key: bytes, holder: bytes) -> Counters:
    """Drop ``holder``'s ref on blob ``key`` if it exists. Returns the counter delta."""
    ref_key = key + b"\0" + holder
    if not txn.delete(ref_key, db=index.refs):
        return Counters()
    txn.delete(holder + b"\0" + key, db=index.hrefs)
    raw = txn.get(key, db=index.blobs)
    if raw is None:  # pragma: no cover - refs are deleted with their blob
        return Counters(refs=-1)
    rec = BlobRecord.unpack(raw)
    nrefs = max(rec.nrefs - 1, 0)
    txn.put(key, replace(rec, nrefs=nrefs).pack(), db=index.blobs)
    last = nrefs == 0
    return Counters(refs=-1, referenced_objects=-int(last), referenced_bytes=-rec.size if last else 0)


def holder_refs(txn: Txn, index: Index, holder: bytes) -> list[bytes]:
    """Blob keys held by ``holder``."""
    prefix = holder + b"\0"
    keys = []
    with txn.cursor(db=index.hrefs) as cur:
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                keys.append(k[len(prefix) :])
    return keys


def holders_with_prefix(txn: Txn, index: Index, prefix: bytes) -> list[bytes]:
    """Distinct holders starting with ``prefix`` that hold at least one blob, in order."""
    holders: list[bytes] = []
    with txn.cursor(db=index.hrefs) as cur:
        if not cur.set_range(prefix):
            return holders
        while cur.key().startswith(prefix):
            holder = cur.key().partition(b"\0")[0]
            holders.append(holder)
            if not cur.set_range(holder + b"\1"):  # past every ``holder\0key`` row of this holder
                break
    return holders


def blob_holders(txn: Txn, index: Index, key: bytes) -> list[bytes]:
    """Holders of blob ``key``."""
    prefix = key + b"\0"
    holders = []
    with txn.cursor(db=index.refs) as cur:
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                holders.append(k[len(prefix) :])
    return holders


def delete_blob(txn: Txn, index: Index, key: bytes, rec: BlobRecord) -> Counters:
    """Delete an unreferenced blob's record; a packed blob leaves its pack's live count (the caller
    removes the file, or the pack once nothing in it is live). Returns the counter delta."""
    txn.delete(key, db=index.blobs)
    if rec.kind == KIND_PACKED:
        pkey = pack_key(rec.pack_id)
        raw = txn.get(pkey, db=index.packs)
        if raw is not None:
            row = PackRecord.unpack(raw)
            row = PackRecord(max(row.live - 1, 0), max(row.live_bytes - rec.size, 0), row.size)
            txn.put(pkey, row.pack(), db=index.packs)
    return Counters(objects=-1, bytes=-rec.size)
