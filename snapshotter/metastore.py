"""Snapshot metadata in the store's LMDB environment (modelled on containerd's ``snapshots/storage``).

One sub-database, ``snapshots``, in the same environment as the chunk store (``fs.store.index``)::

    b"k" + key                      -> JSON record (see :class:`Record`)
    b"c" + parent id + child id     -> b""   (8-byte big-endian ids: who has children)
    b"#seq"                         -> last snapshot id handed out (8-byte big-endian)

Keys are opaque strings from containerd (``"k8s.io/7/extract-… sha256:…"``); they are only ever LMDB keys,
never path components: a snapshot's directory is named by its numeric id. Every public operation of the
snapshotter is one call of :meth:`MetaStore.write` or :meth:`MetaStore.read`, which commit (or abort on an
exception) for you; the ``txn_*`` functions below run inside such a block and never await.
"""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import lmdb

from fs.store.index import Index

from .errors import SnapshotExists, SnapshotInvalid, SnapshotNotFound, SnapshotPrecondition

__all__ = ["Kind", "MetaStore", "Record", "Txn"]

DB_NAME = "snapshots"
#: LMDB's key limit is 511 bytes; one byte goes to the record prefix.
MAX_KEY_BYTES = 500
#: containerd's limit on one label (key + value), enforced by its metadata store too.
MAX_LABEL_BYTES = 4096

_SEQ = b"#seq"
_ID = struct.Struct(">Q")


class Kind(IntEnum):
    """Snapshot kinds, numbered as in ``snapshots.proto``."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def label(self) -> str:
        """The name containerd's filters use (``kind==committed``)."""
        return self.name.lower()


@dataclass(frozen=True)
class Record:
    """One snapshot as stored.

    Attributes:
        key: containerd's key (for a committed snapshot, its name).
        id: numeric id; the snapshot's directory is ``<root>/snapshots/<id>``.
        parent: key of the parent snapshot, ``""`` for none.
        created, updated: nanoseconds since the epoch (UTC).
        size, inodes: usage recorded at commit (active snapshots are measured on demand).
        lazy: for a layer served by the lazy host instead of a directory: ``{"digest", "image",
            "manifest", "holder"}``; None for ordinary snapshots.
    """

    key: str
    id: int
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    size: int = 0
    inodes: int = 0
    lazy: Mapping[str, str] | None = None

    def to_json(self) -> bytes:
        doc = {
            "id": self.id, "kind": int(self.kind), "parent": self.parent, "labels": dict(self.labels),
            "created": self.created, "updated": self.updated, "size": self.size, "inodes": self.inodes,
        }  # fmt: skip
        if self.lazy is not None:
            doc["lazy"] = dict(self.lazy)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, key: str, data: bytes) -> Record:
        doc: dict[str, Any] = json.loads(data)
        return cls(
            key=key, id=doc["id"], kind=Kind(doc["kind"]), parent=doc["parent"], labels=doc["labels"],
            created=doc["created"], updated=doc["updated"], size=doc["size"], inodes=doc["inodes"],
            lazy=doc.get("lazy"),
        )  # fmt: skip


def check_key(key: str, what: str = "key") -> bytes:
    """The LMDB form of a snapshot key; raises SnapshotInvalid for an empty or oversized one."""
    if not key:
        raise SnapshotInvalid(f"snapshot {what} must not be empty")
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES:
        raise SnapshotInvalid(f"snapshot {what} is {len(raw)} bytes long (at most {MAX_KEY_BYTES})")
    return raw


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``labels``; raises SnapshotInvalid for an empty key or a label over 4096 bytes."""
    for name, value in labels.items():
        if not name:
            raise SnapshotInvalid("label key must not be empty")
        if len(name.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise SnapshotInvalid(f"label {name!r} is longer than {MAX_LABEL_BYTES} bytes (key + value)")
    return dict(labels)


def now_ns() -> int:
    return time.time_ns()


class Txn:
    """One open transaction on the ``snapshots`` sub-database (read-only unless opened by ``write``)."""

    def __init__(self, txn: lmdb.Transaction[bytes], db: lmdb._Database) -> None:
        self._txn = txn
        self._db = db

    # -- reading ------------------------------------------------------------------------------------------

    def find(self, key: str) -> Record | None:
        data = self._txn.get(b"k" + check_key(key), db=self._db)
        return None if data is None else Record.from_json(key, data)

    def get(self, key: str) -> Record:
        """The record under ``key``; raises SnapshotNotFound."""
        record = self.find(key)
        if record is None:
            raise SnapshotNotFound(f"snapshot {key} does not exist")
        return record

    def chain(self, record: Record) -> list[Record]:
        """The ancestors of ``record``, its parent first (topmost lower layer first)."""
        parents = []
        while record.parent:
            record = self.get(record.parent)
            parents.append(record)
        return parents

    def has_children(self, record: Record) -> bool:
        prefix = b"c" + _ID.pack(record.id)
        with self._txn.cursor(db=self._db) as cursor:
            return cursor.set_range(prefix) and cursor.key().startswith(prefix)

    def records(self) -> Iterator[Record]:
        """Every snapshot, in key order."""
        with self._txn.cursor(db=self._db) as cursor:
            if not cursor.set_range(b"k"):
                return
            for raw_key, data in cursor:
                if not raw_key.startswith(b"k"):
                    break
                yield Record.from_json(raw_key[1:].decode("utf-8", "surrogatepass"), data)

    # -- writing ------------------------------------------------------------------------------------------

    def _put(self, record: Record) -> None:
        self._txn.put(b"k" + check_key(record.key), record.to_json(), db=self._db)

    def _next_id(self) -> int:
        raw = self._txn.get(_SEQ, db=self._db)
        next_id = (_ID.unpack(raw)[0] if raw else 0) + 1
        self._txn.put(_SEQ, _ID.pack(next_id), db=self._db)
        return next_id

    def create(self, key: str, kind: Kind, *, parent: str = "", labels: Mapping[str, str] | None = None,
               lazy: Mapping[str, str] | None = None) -> Record:  # fmt: skip
        """Add a snapshot; the parent must exist and be committed.

        Raises:
            SnapshotExists: ``key`` is taken.
            SnapshotNotFound: ``parent`` does not exist.
            SnapshotInvalid: ``parent`` is not committed, or a bad key or label.
        """
        labels = check_labels(labels or {})
        if self.find(key) is not None:
            raise SnapshotExists(f"snapshot {key} already exists")
        parent_record = None
        if parent:
            parent_record = self.find(parent)
            if parent_record is None:
                raise SnapshotNotFound(f"parent snapshot {parent} does not exist")
            if parent_record.kind != Kind.COMMITTED:
                raise SnapshotInvalid(f"parent {parent} is not a committed snapshot")
        stamp = now_ns()
        record = Record(key=key, id=self._next_id(), kind=kind, parent=parent, labels=labels,
                        created=stamp, updated=stamp, lazy=lazy)  # fmt: skip
        self._put(record)
        if parent_record is not None:
            self._txn.put(b"c" + _ID.pack(parent_record.id) + _ID.pack(record.id), b"", db=self._db)
        return record

    def commit(self, key: str, name: str, *, labels: Mapping[str, str], size: int, inodes: int) -> Record:
        """Turn the active snapshot ``key`` into the committed snapshot ``name`` (same id and directory).

        The committed snapshot's labels are ``labels``; the active one's are not inherited (containerd).

        Raises:
            SnapshotNotFound: no ``key``.  SnapshotPrecondition: ``key`` is not active.
            SnapshotExists: ``name`` is taken.
        """
        labels = check_labels(labels)
        record = self.get(key)
        if record.kind != Kind.ACTIVE:
            raise SnapshotPrecondition(f"snapshot {key} is not active")
        if self.find(name) is not None:
            raise SnapshotExists(f"snapshot {name} already exists")
        stamp = now_ns()
        committed = replace(record, key=name, kind=Kind.COMMITTED, labels=labels, created=stamp,
                            updated=stamp, size=size, inodes=inodes)  # fmt: skip
        self._txn.delete(b"k" + check_key(key), db=self._db)
        self._put(committed)
        return committed

    def remove(self, key: str) -> Record:
        """Delete the snapshot ``key``; returns what it was.

        Raises:
            SnapshotNotFound: no ``key``.
            SnapshotPrecondition: other snapshots still have it as their parent.
        """
        record = self.get(key)
        if self.has_children(record):
            raise SnapshotPrecondition(f"cannot remove snapshot {key}: it has children")
        if record.parent:
            parent = self.get(record.parent)
            self._txn.delete(b"c" + _ID.pack(parent.id) + _ID.pack(record.id), db=self._db)
        self._txn.delete(b"k" + check_key(key), db=self._db)
        return record

    def update_labels(self, key: str, labels: Mapping[str, str], paths: list[str]) -> Record:
        """Update labels by field mask (containerd ``UpdateInfo``): no paths or ``labels`` replace them
        all; ``labels.K`` sets (or, absent from ``labels``, deletes) one label.

        Raises:
            SnapshotNotFound: no ``key``.  SnapshotInvalid: a path other than ``labels[.K]``.
        """
        record = self.get(key)
        updated = dict(record.labels)
        for path in paths or ["labels"]:
            if path == "labels":
                updated = dict(labels)
            elif path.startswith("labels."):
                name = path.removeprefix("labels.")
                if name in labels:
                    updated[name] = labels[name]
                else:
                    updated.pop(name, None)
            else:
                raise SnapshotInvalid(f"cannot update field {path!r} of snapshot {key}")
        record = replace(record, labels=check_labels(updated), updated=now_ns())
        self._put(record)
        return record


class MetaStore:
    """The ``snapshots`` sub-database of a store's index. Thread-safe; one transaction per operation."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._db = index.sub_database(DB_NAME)

    @contextlib.contextmanager
    def write(self) -> Iterator[Txn]:
        """A write transaction: committed if the block returns, aborted if it raises. Never await inside."""
        with self._index.write() as txn:
            yield Txn(txn, self._db)

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A consistent read-only view."""
        with self._index.read() as txn:
            yield Txn(txn, self._db)
