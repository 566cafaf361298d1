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
    "BlobRecord",
    "Counters",
    "add_ref",
    "blob_key",
    "check_holder",
    "delete_blob",
    "holder_refs",
    "read_counters",
    "remove_ref",
    "write_counters",
]

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
KIND_FILE = 1


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

    _FMT = struct.Struct("<QddIB")

    def pack(self) -> bytes:
        return self._FMT.pack(self.size, self.created, self.last_access, self.nrefs, self.kind)

    @classmethod
    def unpack(cls, raw: bytes) -> BlobRecord:
        return cls(*cls._FMT.unpack(raw))


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
    """Delete an unreferenced blob's record (the caller removes the file). Returns the counter delta."""
    txn.delete(key, db=index.blobs)
    return Counters(objects=-1, bytes=-rec.size)
