"""Who holds what: process identity (pid + start time), liveness, sessions and process-bound holders.

A process is identified by its pid *and* its start time (field 22 of ``/proc/<pid>/stat``, clock ticks
since boot), so a pid reused by an unrelated process is not mistaken for the original one. Zombies count
as dead: a SIGKILLed child that its parent has not reaped yet holds nothing.

Two tables in the index use this:

* ``sessions``: one row per open :class:`~fs.store.Store` instance. A row whose process is dead means that
  process crashed with the store open, so the next opener runs the full orphan scan of ``data/``.
* ``holders``: holders bound to a process with :meth:`~fs.store.Store.bind_holder` (e.g. ``convert:<pid>``);
  when that process dies, every blob ref of the holder is dropped at the next open or gc.

Temp-object claims carry the same identity inside their own records (see :mod:`fs.store.temp`).
Limitation: liveness is judged in the caller's pid namespace; processes in another pid namespace sharing
one store root would look dead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

__all__ = ["AliveCache", "ProcessId", "process_start_time"]


def process_start_time(pid: int) -> int | None:
    """Return the start time of ``pid`` in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    if fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process that cannot be confused with a later one reusing its pid."""

    pid: int
    start: int

    @classmethod
    def current(cls) -> ProcessId:
        """The calling process (cached; recomputed after a fork)."""
        global _CURRENT
        pid = os.getpid()
        cached = _CURRENT
        if cached is not None and cached.pid == pid:
            return cached
        start = process_start_time(pid)
        if start is None:  # pragma: no cover - /proc not mounted
            raise RuntimeError("cannot read /proc/self/stat: the store needs /proc")
        _CURRENT = cls(pid, start)
        return _CURRENT

    def alive(self) -> bool:
        """True if this exact process (pid and start time) still runs and is not a zombie."""
        return process_start_time(self.pid) == self.start

    def to_list(self) -> list[int]:
        return [self.pid, self.start]

    def encode(self) -> bytes:
        return json.dumps(self.to_list()).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ProcessId:
        pid, start = json.loads(raw)
        return cls(int(pid), int(start))


_CURRENT: ProcessId | None = None  # keyed by pid implicitly: a fork sees a different pid


class AliveCache:
    """Memoises liveness checks for the duration of one scan (one /proc read per pid)."""

    def __init__(self) -> None:
        self._me = ProcessId.current()
        self._seen: dict[tuple[int, int], bool] = {}

    def __call__(self, pid: int, start: int) -> bool:
        if pid == self._me.pid and start == self._me.start:
            return True
        key = (pid, start)
        alive = self._seen.get(key)
        if alive is None:
            alive = self._seen[key] = process_start_time(pid) == start
        return alive
