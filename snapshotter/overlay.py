"""The overlay snapshotter: containerd's ``overlay.go`` semantics over :mod:`snapshotter.metastore`.

Layout under the daemon's root::

    snapshots/<id>/fs      upper directory (active) or the layer's files (committed); read-only for views
    snapshots/<id>/work    overlayfs work directory (active snapshots only)
    snapshots/new-*        a snapshot being created (renamed to <id> inside the creating transaction)
    snapshots/rm-*         a snapshot being removed

Metadata and files follow containerd's order: a snapshot's directory is created and renamed into place
inside the same write transaction that records it (so ``Cleanup``, which also runs in a write transaction,
never sees a half-made one); ``Remove`` commits the metadata removal first and deletes files second, logging
(not raising) a failure there; ``Cleanup`` removes every directory whose id is no longer recorded.

A committed snapshot may also be *lazy* (``Record.lazy``): a layer served by the lazy host from its FUSE
mount instead of a directory of ours. :func:`mounts` takes a ``layer_dir`` function that resolves such
layers, so overlay lowerdir lists mix both kinds.

All methods are synchronous and thread-safe (gRPC worker threads call them); ``usage`` walks a directory
tree and may take a while on big upper directories.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SnapshotInvalid, SnapshotPrecondition
from .filters import matcher
from .metastore import Kind, MetaStore, Record

__all__ = ["Mount", "Snapshotter", "Usage", "disk_usage", "mounts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mount:
    """One entry of a mount list, as in ``containerd.types.Mount``."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Usage:
    """Disk usage of a snapshot's own files: bytes allocated and inodes (hard links counted once)."""

    size: int = 0
    inodes: int = 0


def disk_usage(path: Path) -> Usage:
    """What containerd's ``fs.DiskUsage`` reports: allocated bytes (st_blocks * 512) and inodes."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for top, dirs, files in os.walk(path):
        for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            size += st.st_blocks * 512
    return Usage(size=size, inodes=len(seen))


LayerDir = Callable[[Record], Path]


def mounts(record: Record, parents: Sequence[Record], layer_dir: LayerDir) -> list[Mount]:
    """The mounts that give ``record``'s file system (pure apart from ``layer_dir``), as overlay.go does.

    * no parents: a bind mount of its own directory (``rw`` for an active snapshot, ``ro`` for a view);
    * a view with one parent: a read-only bind mount of the parent's directory;
    * otherwise overlay with ``lowerdir`` = the parents topmost first (a directory named twice only at its
      topmost place), plus ``upperdir``/``workdir`` for an active snapshot.

    ``parents`` are the ancestors, immediate parent first; ``layer_dir`` maps a record to the directory
    with its files (``snapshots/<id>/fs``, or the lazy host's layer directory).
    """
    if not parents:
        flag = "ro" if record.kind == Kind.VIEW else "rw"
        return [Mount("bind", str(layer_dir(record)), (flag, "rbind"))]
    # An image may name one layer twice; lazily both are the same host directory, which overlayfs refuses
    # (ELOOP). Keeping only the topmost occurrence gives the same tree: everything the lower copy holds is
    # shadowed by the upper one.
    lowers = list(dict.fromkeys(str(layer_dir(p)) for p in parents))
    options = []
    if record.kind == Kind.ACTIVE:
        own = Path(layer_dir(record))
        options += [f"workdir={own.parent / 'work'}", f"upperdir={own}"]
    elif len(lowers) == 1:
        return [Mount("bind", lowers[0], ("ro", "rbind"))]
    options.append("lowerdir=" + ":".join(lowers))
    return [Mount("overlay", "overlay", tuple(options))]


class Snapshotter:
    """Snapshots under ``root/snapshots`` with metadata in ``meta``.

    Args:
        root: the daemon's state directory.
        meta: the metadata store (in the same root's LMDB).
        lazy_dir: resolves a lazy record's ``Record.lazy`` to its layer directory (the lazy host's); None:
            lazy records cannot be mounted (SnapshotPrecondition).
    """

    def __init__(
        self, root: Path, meta: MetaStore, *, lazy_dir: Callable[[Mapping[str, str]], Path] | None = None
    ) -> None:
        self.root = root
        self.dir = root / "snapshots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self._lazy_dir = lazy_dir

    # -- paths ----------------------------------------------------------------------------------------------

    def layer_dir(self, record: Record) -> Path:
        """The directory with ``record``'s files."""
        if record.lazy is None:
            return self.dir / str(record.id) / "fs"
        if self._lazy_dir is None:
            raise SnapshotPrecondition(f"snapshot {record.key} is a lazy layer and lazy serving is off")
        return self._lazy_dir(record.lazy)

    # -- the Snapshotter API ------------------------------------------------------------------------------

    def stat(self, key: str) -> Record:
        with self.meta.read() as txn:
            return txn.get(key)

    def update(self, key: str, labels: Mapping[str, str], paths: list[str]) -> Record:
        with self.meta.write() as txn:
            return txn.update_labels(key, labels, paths)

    def usage(self, key: str) -> Usage:
        record = self.stat(key)
        if record.kind == Kind.ACTIVE:
            return disk_usage(self.layer_dir(record))
        return Usage(record.size, record.inodes)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of an active snapshot or a view.

        Raises:
            SnapshotNotFound: no ``key``.  SnapshotPrecondition: ``key`` is committed.
        """
        with self.meta.read() as txn:
            record = txn.get(key)
            if record.kind not in (Kind.ACTIVE, Kind.VIEW):
                raise SnapshotPrecondition(f"snapshot {key} is not active or a view")
            parents = txn.chain(record)
        return mounts(record, parents, self.layer_dir)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> Record:
        """Commit the active snapshot ``key`` as ``name``, recording its usage.

        Raises:
            SnapshotNotFound, SnapshotPrecondition (not active), SnapshotExists (name taken).
        """
        record = self.stat(key)
        usage = disk_usage(self.layer_dir(record)) if record.kind == Kind.ACTIVE else Usage()
        with self.meta.write() as txn:
            committed = txn.commit(key, name, labels=labels or {}, size=usage.size, inodes=usage.inodes)
        work = self.dir / str(committed.id) / "work"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(work)
        return committed

    def create_lazy(
        self, name: str, parent: str, labels: Mapping[str, str], lazy: Mapping[str, str]
    ) -> Record:
        """Record a committed snapshot whose files are a lazy host layer (no directory of ours)."""
        with self.meta.write() as txn:
            return txn.create(name, Kind.COMMITTED, parent=parent, labels=labels, lazy=lazy)

    def remove(self, key: str) -> Record:
        """Remove a snapshot without children; returns its record.

        Raises:
            SnapshotNotFound.  SnapshotPrecondition: it is the parent of other snapshots.
        """
        with self.meta.write() as txn:
            record = txn.remove(key)
            path = self.dir / str(record.id)
            doomed = self.dir / f"rm-{record.id}"
            if record.lazy is None and path.exists():
                os.rename(path, doomed)
        self._delete(doomed)
        return record

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Record]:
        """Every snapshot that matches any of ``filters`` (containerd syntax; all when empty).

        Raises:
            SnapshotInvalid: a filter does not parse.
        """
        accept = matcher(filters)
        with self.meta.read() as txn:
            records = [record for record in txn.records() if accept(record)]
        yield from records

    def cleanup(self) -> list[str]:
        """Remove directories no snapshot owns (leftovers of crashes); returns their names."""
        with self.meta.write() as txn:
            ids = {str(record.id) for record in txn.records() if record.lazy is None}
            orphans = []
            for entry in sorted(os.listdir(self.dir)):
                if entry in ids:
                    continue
                doomed = entry if entry.startswith("rm-") else f"rm-{entry}"
                if doomed != entry:
                    os.rename(self.dir / entry, self.dir / doomed)
                orphans.append(doomed)
        for doomed in orphans:
            self._delete(self.dir / doomed)
        return orphans

    # -- helpers --------------------------------------------------------------------------------------------

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> list[Mount]:
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise SnapshotInvalid(f"cannot create a snapshot of kind {kind.label}")
        with self.meta.write() as txn:
            record = txn.create(key, kind, parent=parent, labels=labels)
            parents = txn.chain(record)
            staging = Path(tempfile.mkdtemp(prefix="new-", dir=self.dir))
            try:
                (staging / "fs").mkdir(mode=0o755)
                if kind == Kind.ACTIVE:
                    (staging / "work").mkdir(mode=0o711)
                os.rename(staging, self.dir / str(record.id))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        try:  # resolving a lazy parent may attach its image (after a restart), and that may fail
            return mounts(record, parents, self.layer_dir)
        except BaseException:
            self.remove(key)
            raise

    def _delete(self, path: Path) -> None:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot remove %s (Cleanup will retry): %s", path, exc)
