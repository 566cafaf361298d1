"""The read path: file range -> chunks -> store hit, or coalesced range GET -> decode -> verify -> store.

One :class:`ChunkFetcher` per mount. For a read of ``[off, off+len)`` of a lazily served file:

1. the chunks covering the range are found by bisection on ``Chunk.file_offset``;
2. ``zeros`` chunks are synthesized, never fetched, once their digest is checked to be that of their zero
   bytes (cached by size; a big run is hashed the first time in a worker thread, not on the trio thread);
3. every other chunk is looked up in the store by its digest (content-addressed, so identical chunks of other
   files, layers or images are hits); a hit is a ``pread``;
4. misses (plus a bounded read-ahead of the same file's following chunks) become *flights*, one per chunk
   digest (single-flight: a second reader of the same chunk waits on the same flight);
5. new flights are grouped by :func:`fs.registry.ranges.coalesce` into compressed byte ranges
   (neighbours merged when the gap is small), each fetched by its own task with one range GET, several
   in flight, gated by the :class:`~fs.lazy.scheduler.FetchScheduler` at the caller's priority;
6. in a worker thread each chunk's compressed slice is decoded (zstd across frames / gzip members, skipping
   ``inner_offset`` and taking exactly ``size`` bytes), hashed and compared with the TOC's chunk digest;
   waiting readers are answered from the verified bytes at once, while the group's good chunks are put in
   the store (one transaction) behind them. A chunk that fails verification is never served or cached: its
   readers get :class:`~fs.errors.VerificationError` (EIO at the FUSE boundary); other chunks of the group
   are unaffected.

Steps 4-6 are :mod:`fs.lazy.flights`. Fetch tasks live in the fetcher's nursery, not in the reader's
task, so a reader that gives up (timeout) does not cancel a fetch another reader shares. Every fetch and
every wait is bounded by ``fetch_timeout``.

One fetcher serves every layer of a host. Store references: a chunk *fetched* for a layer is put with that
layer's holder (:attr:`BlobSource.holder`: ``layer:<digest>`` in the daemon, dropped when the layer is
detached; else the fetcher's own ``holder``, e.g. ``mount:<id>`` bound to the serving process, which
:meth:`ChunkFetcher.release_refs` drops at exit), after which the chunks stay cached but evictable. Puts
run in worker threads under the store's write limiter. Hits on chunks already in the
store take no ref (a write transaction per hit would cost more than the read); should GC evict one
mid-mount, the next read refetches it transparently (``NotInStore`` -> miss).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import trio

from fs.errors import NotInStore, RegistryUnavailable, ZsnapError
from fs.format.tree import Chunk
from fs.lazy.decode import (
    ChunkLike,
    known_zeros_digest,
    stored_piece,
    zeros_digest,
    zeros_piece,
)
from fs.lazy.flights import BlobSource, Flight, Flights, RangeClient
from fs.lazy.readahead import BlobReadahead
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.stats import MountStats
from fs.limits import DEFAULT_LIMITS

__all__ = [
    "BlobSource",  # where a layer's bytes come from (fs.lazy.flights), named here for the read path
    "ChunkFetcher",
    "RangeClient",
    "open_fetcher",
]

log = logging.getLogger(__name__)

#: Neighbouring missing chunks closer than this (compressed bytes) are fetched in one range.
DEFAULT_MAX_GAP = 64 * 1024
#: A coalesced range does not grow past this (unless a single chunk is bigger).
DEFAULT_MAX_REQUEST = 4 * 1024 * 1024
#: On-demand reads also fetch the file's following missing chunks up to this many uncompressed bytes.
DEFAULT_READAHEAD = 1024 * 1024
#: Zero runs up to this size are hashed inline the first time (tens of µs, less than a thread hop);
#: bigger ones in a worker thread (1 GiB is ~0.7 s the trio thread must not spend).
INLINE_ZEROS_HASH = 64 * 1024


def _file_offset(c: ChunkLike) -> int:
    return c.file_offset


class ChunkFetcher:
    """Serves chunk reads from the store and fetches what is missing (see the module docstring).

    Create with :func:`open_fetcher`. All methods are called from the mount's trio thread.
    """

    def __init__(
        self,
        store: Any,
        scheduler: FetchScheduler,
        stats: MountStats,
        nursery: trio.Nursery,
        *,
        holder: str | None,
        fetch_timeout: float,
        max_gap: int = DEFAULT_MAX_GAP,
        max_request: int = DEFAULT_MAX_REQUEST,
        readahead: int = DEFAULT_READAHEAD,
        max_materialize: int = DEFAULT_LIMITS.max_read_materialize,
        cpu_limiter: trio.CapacityLimiter | None = None,
        store_limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.holder = holder
        self.fetch_timeout = fetch_timeout
        self.readahead = readahead
        self._cpu = cpu_limiter or trio.CapacityLimiter(2)
        self._store_limiter = store_limiter or self._cpu  # store writes (fsync) never on the trio thread
        self._zeros_hashing: dict[int, trio.Event] = {}  # zero-run sizes being hashed in a thread
        self.flights = Flights(
            store, scheduler, stats, nursery, holder=holder, fetch_timeout=fetch_timeout, max_gap=max_gap,
            max_request=max_request, max_materialize=max_materialize, cpu_limiter=self._cpu,
            store_limiter=self._store_limiter,
        )  # fmt: skip
        self.blob_ahead = BlobReadahead()

    @property
    def max_request(self) -> int:
        """The largest coalesced range request (unless one chunk is bigger): prefetch batches to it."""
        return self.flights.max_request

    # -- reads ------------------------------------------------------------------------------------------

    async def read(
        self,
        source: BlobSource,
        chunks: Sequence[ChunkLike],
        file_size: int,
        off: int,
        size: int,
        blob_chunks: Sequence[Chunk] = (),
    ) -> bytes:
        """Return bytes ``[off, off+size)`` of a file (short at EOF) whose content is ``chunks``.

        ``blob_chunks`` (the layer's chunks in blob order) enable blob-order read-ahead
        (:mod:`fs.lazy.readahead`).

        Raises:
            VerificationError: a needed chunk did not match its digest.
            RegistryError: fetching failed (incl. :class:`RegistryUnavailable` on timeout).
            FormatError: a chunk could not be decoded.
        """
        end = min(off + size, file_size)
        if off >= end:
            return b""
        first = max(0, bisect.bisect_right(chunks, off, key=_file_offset) - 1)
        spans: list[tuple[ChunkLike, int, int]] = []
        idx = first
        while idx < len(chunks) and chunks[idx].file_offset < end:
            c = chunks[idx]
            idx += 1
            lo = max(off, c.file_offset) - c.file_offset
            hi = min(end, c.file_offset + c.size) - c.file_offset
            if hi > lo:
                spans.append((c, lo, hi))
        await self._learn_zero_runs(spans)
        pieces, missing = self._gather(spans)  # inline: a worker thread per read measured slower
        self.stats.cache_hits += len(spans) - len(missing)
        if missing:
            self.stats.cache_misses += len(missing)
            needed = [spans[i][0] for i in missing]
            last = needed[-1]
            ahead = []
            if blob_chunks and isinstance(last, Chunk):
                ahead = self.blob_ahead.on_read(source.digest, blob_chunks, last, missed=True)
            got = await self.ensure(source, needed, Priority.ON_DEMAND, also=self._readahead(chunks, idx))
            self._fetch_ahead(source, ahead)  # once the read's own request is answered: it goes first
            for i in missing:
                c, lo, hi = spans[i]
                data = got.get(c.digest)
                pieces[i] = data[lo:hi] if data is not None else stored_piece(self.store, c, lo, hi)
        elif blob_chunks and spans and isinstance(spans[-1][0], Chunk):
            self._fetch_ahead(
                source, self.blob_ahead.on_read(source.digest, blob_chunks, spans[-1][0], missed=False)
            )
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _fetch_ahead(self, source: BlobSource, chunks: Sequence[Chunk]) -> None:
        """Start fetching ``chunks`` at prefetch priority (promoting background fetches of them); no wait."""
        new: list[Flight] = []
        for c in chunks:
            self.flights.claim(c, Priority.PREFETCH, new)
        if new:
            self.flights.start(source, new, Priority.PREFETCH)

    async def _learn_zero_runs(self, spans: list[tuple[ChunkLike, int, int]]) -> None:
        """Hash, in a worker thread, the zero runs of ``spans`` whose digest is not cached yet (one thread
        per size however many readers ask), so that :meth:`_gather` checks them against the cache."""
        for c, _, _ in spans:
            while c.zeros and c.size > INLINE_ZEROS_HASH and known_zeros_digest(c.size) is None:
                hashing = self._zeros_hashing.get(c.size)
                if hashing is not None:
                    await hashing.wait()  # then look again: that thread may have failed
                    continue
                await self._hash_zero_run(c.size)

    async def _hash_zero_run(self, size: int) -> None:
        self._zeros_hashing[size] = done = trio.Event()
        try:
            await trio.to_thread.run_sync(zeros_digest, size, limiter=self._cpu)
        finally:
            del self._zeros_hashing[size]
            done.set()

    def _gather(self, spans: list[tuple[ChunkLike, int, int]]) -> tuple[list[bytes], list[int]]:
        """The cached pieces of ``spans`` (zeros synthesized, chunks whose put is held back read from
        memory) and the indices of those not in the store (a chunk still being fetched is not there yet)."""
        pieces: list[bytes] = []
        missing: list[int] = []
        for i, (c, lo, hi) in enumerate(spans):
            if c.zeros:
                pieces.append(zeros_piece(c, lo, hi))  # only if its digest is that of zero bytes
                continue
            try:
                pieces.append(stored_piece(self.store, c, lo, hi))  # only if the stored size is c.size
            except NotInStore:
                held = self.flights.held(c.digest)  # verified, its put held back while a container starts
                if held is not None:
                    pieces.append(held[lo:hi])
                    continue
                missing.append(i)
                pieces.append(b"")
        return pieces, missing

    def _readahead(self, chunks: Sequence[ChunkLike], idx: int) -> list[ChunkLike]:
        """The file's chunks from ``idx`` on, up to ``readahead`` bytes, that are not fetched or being
        fetched; [] while less than half of that is missing: a reader walking through the file then
        refills in requests of at least half the read-ahead, not in one small request per read(2)."""
        extra: list[ChunkLike] = []
        budget = self.readahead
        missing = 0
        while idx < len(chunks) and budget > 0:
            c = chunks[idx]
            idx += 1
            if c.zeros:
                continue
            budget -= c.size
            if c.digest not in self.flights and not self.store.has(c.digest):
                extra.append(c)
                missing += c.size
        return extra if missing * 2 >= self.readahead or idx >= len(chunks) else []

    async def wait_idle(self) -> None:
        """Return once no fetch is in flight (every fetched chunk is stored or failed)."""
        await self.flights.wait_idle()

    async def wait_backlog(self, max_flights: int) -> None:
        """Return once at most ``max_flights`` chunks are in flight (see :meth:`Flights.wait_backlog`)."""
        await self.flights.wait_backlog(max_flights)

    def is_cached(self, chunk: ChunkLike) -> bool:
        """True when ``chunk`` needs no fetch (zeros, or in the store and not being fetched)."""
        return chunk.zeros or (chunk.digest not in self.flights and self.store.has(chunk.digest))

    async def ensure(
        self,
        source: BlobSource,
        chunks: Sequence[ChunkLike],
        priority: Priority,
        *,
        also: Sequence[ChunkLike] = (),
    ) -> dict[str, bytes]:
        """Make sure ``chunks`` are available, fetching what is missing at ``priority``.

        ``also`` are fetched opportunistically in the same requests (read-ahead) but not waited for.
        Waits at most ``fetch_timeout`` seconds.

        Returns:
            The verified bytes of the chunks this call waited for (by digest); chunks absent from it were
            already in the store.

        Raises:
            the first chunk's error (VerificationError, RegistryError, FormatError); RegistryUnavailable
            when the wait timed out.
        """
        waits: list[Flight] = []
        new: list[Flight] = []
        for c in chunks:
            fl = self.flights.claim(c, priority, new)
            if fl is not None:
                waits.append(fl)
        for c in also:
            if c.digest not in self.flights:  # read-ahead does not promote fetches already queued
                self.flights.claim(c, priority, new)  # which skips zeros and what the store has
        if new:
            self.flights.start(source, new, priority)
        if not waits:
            return {}
        with trio.move_on_after(self.fetch_timeout) as scope:
            for fl in waits:
                await fl.ready.wait()
        if scope.cancelled_caught:
            raise RegistryUnavailable(
                f"fetch did not complete within {self.fetch_timeout:g}s", layer=source.label
            )
        got: dict[str, bytes] = {}
        for fl in waits:
            if fl.error is not None:
                if isinstance(fl.error, ZsnapError):
                    raise fl.error
                raise RegistryUnavailable(f"fetch failed: {fl.error!r}", layer=source.label)
            if fl.data is not None:
                got[fl.chunk.digest] = fl.data
        return got

    # -- life cycle -------------------------------------------------------------------------------------

    async def release_refs(self) -> int:
        """Drop every ref of the fetcher's own holder (fetched chunks stay cached, evictable), in a
        worker thread. Idempotent; nothing to do without a holder."""
        if self.holder is None:
            return 0
        try:
            return int(
                await trio.to_thread.run_sync(
                    self.store.drop_holder, self.holder, limiter=self._store_limiter
                )
            )
        except ZsnapError as exc:
            log.info("could not drop the refs of %s: %s", self.holder, exc)
            return 0


@contextlib.asynccontextmanager
async def open_fetcher(
    store: Any,
    scheduler: FetchScheduler,
    stats: MountStats,
    *,
    holder: str | None,
    fetch_timeout: float = 30.0,
    **kwargs: Any,
) -> AsyncIterator[ChunkFetcher]:
    """Run a :class:`ChunkFetcher` whose fetch tasks live in a nursery closed (cancelled) on exit.

    On exit in-flight fetches are cancelled (their readers get errors) and the refs of ``holder`` are
    released (sources carrying their own holder keep theirs: the owner of those names drops them).
    """
    if not math.isfinite(fetch_timeout) or fetch_timeout <= 0:
        raise ValueError("fetch_timeout must be a positive number of seconds")
    async with trio.open_nursery() as nursery:
        fetcher = ChunkFetcher(
            store, scheduler, stats, nursery, holder=holder, fetch_timeout=fetch_timeout, **kwargs
        )
        try:
            yield fetcher
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await fetcher.release_refs()
