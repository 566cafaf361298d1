"""Prefetch, then background fetch: fill the store ahead of readers at low priority.

1. **Prefetch** (``Priority.PREFETCH``): for each lazy layer, the chunks the image marks as needed first
   (:meth:`~fs.lazy.layer.OpenedLayer.prefetch_chunks`: eStargz ``.prefetch.landmark`` or the TOC's prefetch
   list), topmost layer first.
2. **Background fetch** (``Priority.BACKGROUND``): every other chunk of every lazy layer, in blob order.

Both go through the same :class:`~fs.lazy.fetcher.ChunkFetcher` path as reads (verify, then store) in
batches of about one request, and pause while on-demand reads are waiting or in flight
(:meth:`~fs.lazy.scheduler.FetchScheduler.wait_turn`); an on-demand read of a chunk already queued here
promotes that fetch. A batch whose fetch fails at the registry (away, timing out, failing) is retried under
:data:`PREFETCH_RETRY` (:class:`~fs.retry.RetryPolicy`: back-off with jitter, bounded attempts and time);
once that budget is spent the batch is skipped with one INFO line and the fill goes on (on-demand reads
still fetch those chunks). A batch that fails for its content (verification, decoding) is not retried:
the chunk is bad wherever it comes from, and its readers get EIO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from fs.errors import RegistryError, VerificationError, ZsnapError
from fs.format.tree import Chunk
from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.layer import OpenedLayer
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.stats import MountStats
from fs.retry import RetryPolicy

__all__ = ["PREFETCH_RETRY", "QUIET", "batches", "run_prefetch"]

log = logging.getLogger(__name__)

#: prefetch starts no new batch while more chunks than this are fetched but not yet stored (memory bound)
MAX_BACKLOG = 256

#: How long more urgent fetches must have been idle before a batch starts. Background fetch waits half a
#: second, like stargz-snapshotter's silence period for background tasks: a container that is starting
#: reads in bursts, and a background batch started between two of its reads takes the link from the
#: next one; the prefetch, which the start is waiting for, goes as soon as on-demand reads pause.
QUIET = {Priority.PREFETCH: 0.02, Priority.BACKGROUND: 0.5}

#: Retries of one prefetch/background batch: nothing waits on it, so the back-off is patient (1 s doubling
#: to 15 s), but bounded (5 attempts, 2 minutes): a registry that stays away costs each batch that much.
PREFETCH_RETRY = RetryPolicy(attempts=5, base_delay=1.0, max_delay=15.0, total_time=120.0)


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
    retry: RetryPolicy,
) -> None:
    todo = batches(chunks, fetcher.max_request)
    todo.reverse()

    async def worker() -> None:
        while todo:
            await _fetch_batch(layer, todo.pop(), fetcher, scheduler, priority, retry)

    async with trio.open_nursery() as n:
        for _ in range(workers):
            n.start_soon(worker)
    await fetcher.wait_idle()  # "done" means stored, not just fetched


async def _fetch_batch(
    layer: OpenedLayer,
    batch: list[Chunk],
    fetcher: ChunkFetcher,
    scheduler: FetchScheduler,
    priority: Priority,
    retry: RetryPolicy,
) -> None:
    """Fetch the chunks of ``batch`` not cached yet, retrying registry failures within ``retry``'s budget;
    skip the batch (one INFO line) when that is spent or its content is bad. Never raises a ZsnapError."""
    assert layer.source is not None
    phase = priority.name.lower()
    what = (
        f"{phase} fetch of {layer.desc.short} bytes {batch[0].compressed_offset}-{batch[-1].compressed_end}"
    )
    try:
        async for attempt in retry.tries(what=what, retry_on=RegistryError):
            with attempt:
                await scheduler.wait_turn(priority, quiet=QUIET[priority])
                await fetcher.wait_backlog(MAX_BACKLOG)
                missing = [c for c in batch if not fetcher.is_cached(c)]  # again: reads may have fetched some
                if missing:
                    await fetcher.ensure(layer.source, missing, priority)
    except VerificationError:
        pass  # counted by the fetcher; the reader of that chunk gets EIO
    except ZsnapError as exc:  # retries spent (RetriesExhausted), or bad content (FormatError), or the store
        left = sum(not fetcher.is_cached(c) for c in batch)
        log.info("%s: skipped %d chunks (on-demand reads still fetch them): %s", what, left, exc)


async def run_prefetch(
    layers: Sequence[OpenedLayer],
    fetcher: ChunkFetcher,
    scheduler: FetchScheduler,
    stats: MountStats,
    *,
    prefetch: bool = True,
    background: bool = True,
    retry: RetryPolicy = PREFETCH_RETRY,
) -> None:
    """Prefetch marked chunks, then (optionally) fetch everything else; returns when done.

    ``layers`` are topmost first; ``retry`` bounds the retries of each batch. Cancellation stops it at
    once (fetches in flight are abandoned by their waiters; the fetcher's own nursery owns them).
    """
    lazy = [la for la in layers if la.lazy]
    if prefetch:
        for layer in lazy:
            chunks = layer.prefetch_chunks()
            if chunks:
                await _fill(layer, chunks, fetcher, scheduler, Priority.PREFETCH, workers=4, retry=retry)
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
                retry=retry,
            )
        stats.background_done = True
