"""The store as the FUSE trio thread may use it: reads inline, every write in a worker thread.

DESIGN.md decision 9: the thread that answers FUSE must never wait for an fsync. A store *read* (an LMDB
read snapshot plus a ``pread``) costs microseconds and stays inline; everything that opens a write
transaction (LMDB commits fsync their pages), writes a blob file or walks many keys runs through
:class:`StoreIO` in a worker thread, all of them under ONE :class:`trio.CapacityLimiter` so that a burst
of writes (chunk puts of many layers, a ``drop_holder`` over 16k refs) cannot take every worker thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import trio

__all__ = ["StoreIO"]

T = TypeVar("T")

#: LMDB has one writer at a time anyway; two threads let a blob write overlap an index commit.
DEFAULT_WRITERS = 2


class StoreIO:
    """Async front of a :class:`~fs.store.Store` for code running on a trio thread.

    Args:
        store: the store (thread-safe).
        limiter: bounds the worker threads doing store writes (default: a new one of
            :data:`DEFAULT_WRITERS`).

    Attributes:
        store: the wrapped store, for inline reads (``has``, ``pread``, ``size``).
        limiter: the one limiter every write runs under.
    """

    def __init__(self, store: Any, limiter: trio.CapacityLimiter | None = None) -> None:
        self.store = store
        self.limiter = limiter or trio.CapacityLimiter(DEFAULT_WRITERS)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` (blocking store work) in a worker thread under :attr:`limiter`."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self.limiter)

    # -- reads (inline: no write transaction, no fsync) -------------------------------------------------

    def has(self, digest: str) -> bool:
        return bool(self.store.has(digest))

    def pread(self, digest: str, offset: int, length: int) -> bytes:
        return bytes(self.store.pread(digest, offset, length))

    # -- writes (worker thread) -------------------------------------------------------------------------

    async def put_many(self, items: Iterable[tuple[bytes, str | None]], *, holder: str | None) -> list[str]:
        return list(await self.run(self.store.put_many, list(items), holder=holder))

    async def put_file(
        self, path: Path, *, digest: str | None = None, holder: str | None = None, move: bool = False
    ) -> str:
        return str(await self.run(self.store.put_file, path, digest=digest, holder=holder, move=move))

    async def ref(self, digest: str, holder: str) -> None:
        await self.run(self.store.ref, digest, holder)

    async def unref(self, digest: str, holder: str) -> bool:
        return bool(await self.run(self.store.unref, digest, holder))

    async def drop_holder(self, holder: str) -> int:
        return int(await self.run(self.store.drop_holder, holder))

    async def bind_holder(self, holder: str) -> None:
        await self.run(self.store.bind_holder, holder)
