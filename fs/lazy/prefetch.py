"""Prefetch, then background fetch: fill the store ahead of readers at low priority.

1. **Prefetch** (``Priority.PREFETCH``): for each lazy layer, the chunks the image marks as needed first
   (:meth:`~fs.lazy.layer.OpenedLayer.prefetch_chunks`: eStargz ``.prefetch.landmark`` or the TOC's prefetch
   list), topmost layer first.
2. **Background fetch** (``Priority.BACKGROUND``): every other chunk of every lazy layer, in blob order.

Both go through the same :class:`~fs.lazy.fetcher.ChunkFetcher` path as reads (verify, then store) in
batches of about one request, and pause while on-demand reads are waiting or in flight
(:meth:`~fs.lazy.scheduler.FetchScheduler.wait_turn`); an on-demand read of a chunk already queued here
promotes that fetch. Failures (e.g. the registry is away) are logged at INFO and retried after a back-off;
a chunk that fails verification is skipped (its readers get EIO).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from fs.errors import VerificationError, ZsnapError
from fs.format.tree import Chunk
from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.layer import OpenedLayer
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.stats import MountStats

__all__ = ["batches", "run_prefetch"]

log = logging.getLogger(__name__)

#: prefetch starts no new batch while more chunks than this are fetched but not yet stored (memory bound)
MAX_BACKLOG = 256


def batches(chunks: Sequence[Chunk], max_bytes: int) -> list[list[Chunk]]:
    """Split chunks (in blob order) into runs whose compressed span stays within ``max_bytes``."""
    out: list[list[Chunk]] = []
    cur: list[Chunk] = []
    start = 0
    for c in chunks:
        if cur and c.compressed_end - start > max_bytes:
            out.append(cur)
            cur = []
        if not cur:
            start = c.compressed_offset
        cur.append(c)
    if cur:
        out.append(cur)
    return out


async def _fill(
    layer: OpenedLayer,
    chunks: Sequence[Chunk],
    fetcher: ChunkFetcher,
    scheduler: FetchScheduler,
    priority: Priority,
    *,
    workers: int,
    retry_delay: float,
) -> None:
    assert layer.source is not None
    todo = [b for b in batches(chunks, fetcher.max_request)]
    todo.reverse()

    async def worker() -> None:
        delay = retry_delay
        while todo:
            batch = todo.pop()
            await scheduler.wait_turn(priority, quiet=0.02)
            await fetcher.wait_backlog(MAX_BACKLOG)
            missing = [c for c in batch if not fetcher.is_cached(c)]
            if not missing:
                continue
            try:
                await fetcher.ensure(layer.source, missing, priority)  # type: ignore[arg-type]
                delay = retry_delay
            except VerificationError:
                continue  # counted by the fetcher; the reader of that chunk gets EIO
            except ZsnapError as exc:
                log.info(
                    "%s fetch of %s paused for %.1fs: %s", priority.name.lower(), layer.desc.short, delay, exc
                )
                todo.append(batch)
                await trio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async with trio.open_nursery() as n:
        for _ in range(workers):
            n.start_soon(worker)
    await fetcher.wait_idle()  # "done" means stored, not just fetched


async def run_prefetch(
    layers: Sequence[OpenedLayer],
    fetcher: ChunkFetcher,
    scheduler: FetchScheduler,
    stats: MountStats,
    *,
    prefetch: bool = True,
    background: bool = True,
    retry_delay: float = 1.0,
) -> None:
    """Prefetch marked chunks, then (optionally) fetch everything else; returns when done.

    ``layers`` are topmost first. Cancellation stops it at once (fetches in flight are abandoned by
    their waiters; the fetcher's own nursery owns them).
    """
    lazy = [la for la in layers if la.lazy]
    if prefetch:
        for layer in lazy:
            chunks = layer.prefetch_chunks()
            if chunks:
                await _fill(
                    layer, chunks, fetcher, scheduler, Priority.PREFETCH, workers=4, retry_delay=retry_delay
                )
        stats.prefetch_done = True
    if background:
        for layer in lazy:
            await _fill(
                layer,
                layer.chunks_by_offset(),
                fetcher,
                scheduler,
                Priority.BACKGROUND,
                workers=2,
                retry_delay=retry_delay,
            )
        stats.background_done = True
