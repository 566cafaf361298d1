"""File-level helpers of the blob area: durable writes, OSError translation, the descriptor LRU."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from fs.errors import DiskFull, StoreError

__all__ = [
    "FdCache",
    "PinnedFd",
    "copy_in",
    "create_written",
    "fsync_dir",
    "os_error",
    "sync_close",
    "write_all",
]

_COPY_BUFFER = 1 << 20


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def create_written(path: Path, parts: list[bytes] | list[bytes | memoryview]) -> int:
    """Create the new file ``path`` and write ``parts`` to it, one after another; returns its open
    descriptor, written but not synced (see :func:`sync_close`). On failure nothing is left behind.

    Raises:
        DiskFull, StoreError: the file could not be created or written.
    """
    size = sum(len(part) for part in parts)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise os_error(exc, "create a store file", path, size) from exc
    try:
        for part in parts:
            write_all(fd, part)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise os_error(exc, "write a store file", path, size) from exc
    return fd


def sync_close(pending: list[tuple[Path, int]]) -> None:
    """fdatasync then close every written file of ``pending`` (emptied); all writes come first so that
    one journal commit covers a whole batch (later fdatasyncs find their data already on disk).

    Raises:
        DiskFull, StoreError: a sync failed (every descriptor is closed all the same).
    """
    error = None
    for path, fd in pending:
        try:
            if error is None:
                os.fdatasync(fd)
        except OSError as exc:
            error = os_error(exc, "write a store file", path)
        finally:
            os.close(fd)
    pending.clear()
    if error is not None:
        raise error


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(exc: OSError, what: str, path: Path, needed: int | None = None) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        need = f"{needed} bytes " if needed is not None else ""
        return DiskFull(f"no space left to {what}: {need}needed at {path.parent}", path=str(path))
    return StoreError(f"cannot {what}: {exc.strerror or exc}", path=str(path))


class PinnedFd:
    """A cached descriptor: ``pins`` readers use it; ``evicted`` once it left the LRU (the last unpin
    closes it then)."""

    __slots__ = ("evicted", "fd", "pins")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pins = 1
        self.evicted = False


class FdCache:
    """LRU of read-only descriptors, pinned while in use so eviction never closes one mid-pread."""

    def __init__(self, capacity: int, path_of: Callable[[bytes], str]) -> None:
        self._capacity = capacity
        self._path_of = path_of  # only asked on a miss: building a path costs more than the hit
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, PinnedFd] = OrderedDict()

    def pin(self, key: bytes) -> PinnedFd:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.pins += 1
                return entry
        fd = os.open(self._path_of(key), os.O_RDONLY | os.O_CLOEXEC)  # FileNotFoundError: caller maps it
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.pins += 1
                os.close(fd)
                return entry
            entry = self._entries[key] = PinnedFd(fd)
            while len(self._entries) > self._capacity:
                _, old = self._entries.popitem(last=False)
                self._retire(old)
            return entry

    def unpin(self, entry: PinnedFd) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.evicted and entry.pins == 0:
                os.close(entry.fd)

    def _retire(self, entry: PinnedFd) -> None:
        entry.evicted = True
        if entry.pins == 0:
            os.close(entry.fd)

    def discard(self, keys: Iterable[bytes]) -> None:
        with self._lock:
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is not None:
                    self._retire(entry)

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                self._retire(self._entries.popitem()[1])


def copy_in(src: Path, wip: Path, move: bool) -> tuple[int, str]:
    """Copy (or, with ``move``, hard-link) ``src`` to the new file ``wip``, synced; returns (size, digest)."""
    hasher = hashlib.sha256()
    size = 0
    if move:
        try:
            os.link(src, wip)  # same file system: no copy; the caller's name goes at the end
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise os_error(exc, "move a file into the store", src) from exc
        else:
            with open(wip, "rb") as f:
                while block := f.read(_COPY_BUFFER):
                    hasher.update(block)
                    size += len(block)
                os.fdatasync(f.fileno())
            return size, "sha256:" + hasher.hexdigest()
    try:
        with open(src, "rb") as fin:
            fd = os.open(wip, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                while block := fin.read(_COPY_BUFFER):
                    hasher.update(block)
                    size += len(block)
                    write_all(fd, block)
                os.fdatasync(fd)
            finally:
                os.close(fd)
    except FileNotFoundError as exc:
        raise StoreError(f"cannot store {src}: no such file", path=str(src)) from exc
    except OSError as exc:
        raise os_error(exc, "copy a file into the store", wip) from exc
    return size, "sha256:" + hasher.hexdigest()
