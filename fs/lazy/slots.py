"""The persistent ``layer digest -> slot`` map behind inode numbers (``slot << 32 | entry index``).

A small JSON file (``<root>/lazy/slots.json``), read-modified-written under an ``flock`` so that several
processes sharing a root agree. Slots are never reused: a layer keeps its inode numbers for the life of
the root, across restarts (DESIGN.md decision 10). File work runs in a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import trio

__all__ = ["LayerSlots"]


class LayerSlots:
    """The persistent ``digest -> slot`` map behind inode numbers (a small JSON file, flock'ed).

    Slots are never reused, so a layer keeps its inode numbers for the life of the root.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, int] = {}

    def _load_or_assign(self, digest: str) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {"next": 1, "slots": {}}
            slots = data.setdefault("slots", {})
            slot = slots.get(digest)
            if slot is None:
                slot = int(data.get("next", 1))
                slots[digest] = slot
                data["next"] = slot + 1
                tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, sort_keys=True))
                os.replace(tmp, self.path)
            self._cache.update({k: int(v) for k, v in slots.items()})
            return int(slot)

    async def slot(self, digest: str) -> int:
        """The slot of ``digest`` (assigned on first use; file work in a worker thread)."""
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        return await trio.to_thread.run_sync(self._load_or_assign, digest)
