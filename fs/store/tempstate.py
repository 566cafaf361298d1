"""Temp-object pieces outside the protocol: the record, naming, the per-name flock, claims and handles.

See :mod:`fs.store.temp` for the protocol that uses them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .holders import AliveCache, ProcessId

if TYPE_CHECKING:
    from .temp import TempArea

__all__ = [
    "FAILED",
    "PRODUCING",
    "READY",
    "Claim",
    "NameLock",
    "TempHandle",
    "TempRecord",
    "base_name",
    "check_name",
    "remove_path",
]

PRODUCING, READY, FAILED = "producing", "ready", "failed"
_POLL_MIN, _POLL_MAX = 0.002, 0.05


def base_name(name: str) -> str:
    quoted = quote(name, safe="")
    return quoted if len(quoted) <= 180 else "h-" + hashlib.sha256(name.encode()).hexdigest()


def check_name(name: str) -> bytes:
    raw = name.encode() if isinstance(name, str) else b""
    if not raw or b"\0" in raw or len(raw) > 1024:
        raise ValueError(f"invalid temp object name: {name!r}")
    return raw


def remove_path(path: Path) -> None:
    """Remove a produced file (or directory); a missing one is fine."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class TempRecord:
    """The index row of one temp object (see the module docstring)."""

    gen: str
    state: str
    producer: str | None = None
    size: int | None = None
    created: float = field(default_factory=time.time)
    #: JSON rows, claim id -> ``[holder, pid, start]`` / ``[reason, pid, start]``
    claims: dict[str, list[Any]] = field(default_factory=dict)
    failed: dict[str, list[Any]] = field(default_factory=dict)
    error: str | None = None

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TempRecord:
        return cls(**json.loads(raw))

    def prune(self, alive: AliveCache) -> list[str]:
        """Drop claims and failed entries of dead processes; returns the dropped holders."""
        dropped = []
        for cid, (holder, pid, start) in list(self.claims.items()):
            if not alive(pid, start):
                del self.claims[cid]
                dropped.append(holder)
        for cid, (_, pid, start) in list(self.failed.items()):
            if not alive(pid, start):
                del self.failed[cid]
        return dropped

    def holders(self) -> list[str]:
        return sorted(holder for holder, _, _ in self.claims.values())


class NameLock:
    """One attempt at a temp object's flock (own open file description, so threads conflict too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def try_exclusive(self) -> bool:
        """Take LOCK_EX without blocking; False if somebody holds the lock."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            st = os.fstat(fd)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                self.fd = fd
                return True
            os.close(fd)  # a cleaner unlinked the lock file under us: lock the new one

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the description drops the flock
            self.fd = None

    def wait_sync(self) -> None:
        """Block until nobody holds the lock exclusively."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)

    async def wait_async(self) -> None:
        """Poll until nobody holds the lock exclusively; cancellable at every poll."""
        import trio

        delay = _POLL_MIN
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return
            finally:
                os.close(fd)
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)


@dataclass(frozen=True, slots=True)
class Claim:
    cid: str
    holder: str
    proc: ProcessId

    def entry(self) -> list[Any]:
        return [self.holder, self.proc.pid, self.proc.start]


class TempHandle:
    """One claim on a ready temp object. Read ``path``; do not modify the file (others share it).

    ``release()`` drops this claim (idempotent); the last release deletes the file. Use as a context
    manager to release on exit. Handles still held when their Store closes are released by ``close()``.
    """

    def __init__(self, area: TempArea, name: str, path: Path, claim: Claim, size: int | None) -> None:
        self._area = area
        self.name = name
        self.path = path
        self.holder = claim.holder
        self.size = size
        self._claim = claim
        self._released = False
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Drop this handle's claim; no-op when already released."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._area._handles.discard(self)
        self._area.drop_claim(self.name, self._claim)

    def __enter__(self) -> TempHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<TempHandle {self.name!r} {state} by {self.holder!r}>"
