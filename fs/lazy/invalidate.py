"""Telling the kernel to drop what it cached of a layer that left the tree, from a worker thread we own.

A detached layer's directory entries stay in the kernel's dentry cache until it is told otherwise
(``FUSE_NOTIFY_INVAL_ENTRY``). The notification must not be written from the thread that answers FUSE
requests (the kernel may need an answer first), so it goes to a worker thread. pyfuse3's own
``invalidate_entry_async`` queues to a thread of its own that outlives the session: entries still queued
when the host stopped were written to a destroyed session, each logging a traceback (hundreds after a
detach just before a SIGTERM). Here the host's nursery owns the sender, and the host lets it drain
before the session ends (bounded by :data:`DRAIN_GRACE`); what is left after that is moot, since the
mount goes away or the next process starts with a tree that no longer has the layer.
"""

from __future__ import annotations

import logging
import math

import pyfuse3
import trio

__all__ = ["DRAIN_GRACE", "EntryInvalidator"]

log = logging.getLogger(__name__)

#: Seconds a stopping host waits for queued invalidations to reach the kernel.
DRAIN_GRACE = 2.0
_BATCH = 256  # per worker-thread hop


class EntryInvalidator:
    """A queue of ``(parent inode, name)`` entries to invalidate, sent in order by :meth:`run`."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[int, bytes]](math.inf)
        self._pending = 0
        self._drained = trio.Event()
        self._drained.set()

    def invalidate(self, parent_inode: int, name: bytes) -> None:
        """Queue one entry (never blocks; safe from FUSE handlers and host code on the trio thread)."""
        self._pending += 1
        if self._drained.is_set():
            self._drained = trio.Event()
        self._send.send_nowait((parent_inode, name))

    async def run(self) -> None:
        """Send queued entries until cancelled (run it in the host's nursery)."""
        async for first in self._receive:
            batch = [first]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await trio.to_thread.run_sync(_invalidate_all, batch)
            self._pending -= len(batch)
            if not self._pending:
                self._drained.set()

    async def drain(self) -> None:
        """Wait until every queued entry has been sent."""
        await self._drained.wait()


def _invalidate_all(batch: list[tuple[int, bytes]]) -> None:
    for parent, name in batch:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except FileNotFoundError:
            pass  # the kernel had not cached it
        except OSError as exc:  # the session ended under us: nothing left to invalidate
            log.debug("invalidating %r under inode %d: %s", name, parent, exc)
