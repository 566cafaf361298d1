"""The chunks being fetched: one flight per chunk digest, coalesced range GETs, decode + verify in a worker
thread, readers answered before the store put (steps 4-6 of :mod:`fs.lazy.fetcher`).

A flight is claimed by the first reader (or prefetcher) of a chunk that is neither stored nor already in
flight; later readers of the same digest wait on it. :meth:`Flights.start` groups new flights into
compressed byte ranges (:func:`fs.registry.ranges.coalesce`), each fetched by its own task in the
fetcher's nursery, gated by the :class:`~fs.lazy.scheduler.FetchScheduler` at the group's priority. A
flight leaves the table only once its chunk is stored or failed, so a reader arriving in between is
answered from the verified bytes instead of missing the store.

While a container starts (:meth:`Flights.defer_puts`, called by the host when it attaches an image) the
store puts wait: a put is a file, an ``fdatasync``, a rename and a directory ``fsync`` per chunk, ~30 ms of
kernel CPU per MB on this class of machine, which the container's create and first reads would otherwise
share two cores with. Readers find those chunks in memory as they would in the store (:meth:`Flights.held`:
a hit, which opens no read-ahead); at most :data:`MAX_DEFERRED_BYTES` are held back, the rest is stored at
once.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from fs.errors import RegistryUnavailable, VerificationError, ZsnapError
from fs.lazy.decode import STORED, ChunkLike, decode_verify
from fs.lazy.scheduler import FetchScheduler, Priority, Ticket
from fs.lazy.stats import MountStats
from fs.registry.ranges import coalesce

__all__ = ["MAX_DEFERRED_BYTES", "BlobSource", "Flight", "Flights", "RangeClient"]

log = logging.getLogger(__name__)

#: Verified bytes whose store put may wait for the end of a :meth:`Flights.defer_puts` window.
MAX_DEFERRED_BYTES = 64 << 20


class RangeClient(Protocol):
    async def get_ranges(
        self, repository: str, digest: str, ranges: list[tuple[int, int]]
    ) -> list[bytes]: ...


@dataclass(frozen=True)
class BlobSource:
    """Where one layer's compressed bytes come from.

    Attributes:
        client: the registry client (``get_ranges``).
        repository, digest: the blob.
        codec: ``"zstd"`` or ``"gzip"`` (how a chunk's compressed range decodes).
        label: short name for logs and errors (the layer digest).
        holder: the store holder that refs the chunks fetched for this layer (None: the fetcher's).
    """

    client: Any
    repository: str
    digest: str
    codec: str
    label: str = ""
    holder: str | None = None


class Flight:
    """One chunk being fetched; readers of the same digest share it.

    ``ready`` is set once the outcome is known: ``data`` (verified bytes, possibly not yet stored) or
    ``error``. The flight leaves the table only after the store put finished, so a reader arriving
    in between is served from ``data`` instead of missing the store.
    """

    __slots__ = ("chunk", "data", "error", "held", "ready", "ticket")

    def __init__(self, chunk: ChunkLike, ticket: Ticket) -> None:
        self.chunk = chunk
        self.ready = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None
        self.ticket = ticket
        self.held = False  # verified, its store put waiting for the end of a defer_puts window


class Flights:
    """The table of chunks in flight and the tasks fetching them (trio thread only).

    Args:
        holder: the store holder of fetched chunks whose source names none.
        max_gap, max_request: coalescing of neighbouring chunks into one range (see :mod:`fs.lazy.fetcher`).
        max_materialize: bigger chunks are decoded streaming into the store, not held in memory.
        cpu_limiter, store_limiter: worker threads for decode + verify, and for store writes.
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
        max_gap: int,
        max_request: int,
        max_materialize: int,
        cpu_limiter: trio.CapacityLimiter,
        store_limiter: trio.CapacityLimiter,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.stats = stats
        self.holder = holder
        self.fetch_timeout = fetch_timeout
        self.max_gap = max_gap
        self.max_request = max_request
        self.max_materialize = max_materialize
        self._nursery = nursery
        self._cpu = cpu_limiter
        self._store_limiter = store_limiter
        self._inflight: dict[str, Flight] = {}
        self._drained = trio.Event()  # set (and replaced) whenever the table becomes empty
        self._shrunk = trio.Event()  # set (and replaced) whenever flights leave the table (or wait)
        self._puts_after = -math.inf  # store puts wait until then (defer_puts)
        self._deferred_bytes = 0
        self._deferred_flights = 0  # verified, waiting for their put: not part of the backlog

    def __contains__(self, digest: str) -> bool:
        return digest in self._inflight

    def __len__(self) -> int:
        return len(self._inflight)

    async def wait_idle(self) -> None:
        """Return once no fetch is in flight (every fetched chunk is stored or failed)."""
        while self._inflight:
            await self._drained.wait()

    async def wait_backlog(self, max_flights: int) -> None:
        """Return once at most ``max_flights`` chunks are in flight (fetched chunks leave the table only
        once stored): prefetch waits here so that fetching cannot outrun the store and buffer verified
        bytes without bound. Flights whose put waits for a :meth:`defer_puts` window do not count (their
        bytes are bounded by :data:`MAX_DEFERRED_BYTES`)."""
        while len(self._inflight) - self._deferred_flights > max_flights:
            await self._shrunk.wait()

    def held(self, digest: str) -> bytes | None:
        """The verified bytes of chunk ``digest`` while its store put is held back (:meth:`defer_puts`)."""
        fl = self._inflight.get(digest)
        return fl.data if fl is not None and fl.held else None

    def defer_puts(self, for_seconds: float) -> None:
        """Let the store puts of chunks verified from now wait ``for_seconds`` (see the module docstring)."""
        self._puts_after = max(self._puts_after, trio.current_time() + for_seconds)

    async def _wait_for_puts(self, verified: list[tuple[Flight, bytes]]) -> None:
        """Hold ``verified`` flights (with their bytes) in memory until the :meth:`defer_puts` window ends,
        unless there is none or the byte cap is reached."""
        flights = [fl for fl, _ in verified]
        nbytes = sum(len(data) for _, data in verified)
        if trio.current_time() >= self._puts_after or self._deferred_bytes + nbytes > MAX_DEFERRED_BYTES:
            return
        self._deferred_bytes += nbytes
        self._deferred_flights += len(flights)
        for fl in flights:
            fl.held = True
        self._note_drained()  # the backlog shrank
        try:
            await trio.sleep_until(self._puts_after)
        finally:
            for fl in flights:
                fl.held = False
            self._deferred_bytes -= nbytes
            self._deferred_flights -= len(flights)

    def claim(self, c: ChunkLike, priority: Priority, new: list[Flight]) -> Flight | None:
        """The flight ``c`` waits on (promoted to ``priority``; a new one is appended to ``new``, to be
        :meth:`start`-ed), or None when it needs no fetch (zeros, or in the store)."""
        if c.zeros:
            return None
        fl = self._inflight.get(c.digest)
        if fl is not None:
            fl.ticket.promote(priority)
            return fl
        if self.store.has(c.digest):
            return None
        fl = Flight(c, self.scheduler.ticket(priority))
        self._inflight[c.digest] = fl
        new.append(fl)
        return fl

    def start(self, source: BlobSource, flights: list[Flight], priority: Priority) -> None:
        """Fetch newly claimed ``flights`` of ``source``: one task per coalesced range."""
        spans = [(f.chunk.compressed_offset, f.chunk.compressed_end) for f in flights]
        for g in coalesce(spans, max_gap=self.max_gap, max_size=self.max_request):
            members = [flights[i] for i in g.members]
            ticket = members[0].ticket
            for fl in members[1:]:
                fl.ticket = ticket  # one slot per request; promoting any member promotes the request
            self._nursery.start_soon(self._fetch_group, source, g.start, g.end, members, ticket)

    async def _fetch_group(
        self, source: BlobSource, start: int, end: int, flights: list[Flight], ticket: Ticket
    ) -> None:
        """Fetch one coalesced range, decode + verify its chunks, release readers, then store them."""
        error: BaseException | None = None
        try:
            with trio.fail_after(self.fetch_timeout):
                async with ticket:
                    t0 = trio.current_time()
                    data = (await source.client.get_ranges(source.repository, source.digest, [(start, end)]))[
                        0
                    ]
                    self.stats.record_fetch(
                        len(data), trio.current_time() - t0, priority=ticket.priority.name
                    )
                if len(data) != end - start:
                    raise RegistryUnavailable(
                        f"range {start}-{end} returned {len(data)} bytes", layer=source.label
                    )
                # Chunks too big to hold are decoded streaming into the store right here (STORED).
                results = await trio.to_thread.run_sync(
                    functools.partial(
                        decode_verify,
                        source.codec,
                        data,
                        start,
                        [f.chunk for f in flights],
                        store=self.store,
                        holder=source.holder or self.holder,
                        max_materialize=self.max_materialize,
                    ),
                    limiter=self._cpu,
                )
        except trio.TooSlowError:
            error = RegistryUnavailable(
                f"fetching bytes {start}-{end} took longer than {self.fetch_timeout:g}s", layer=source.label
            )
        except ZsnapError as exc:  # registry errors (transport failures included), bad data, store errors
            error = exc
        except Exception as exc:  # a bug, not an outage: say so loudly, with the trace; readers get EIO
            log.exception("internal error while fetching %s bytes %d-%d", source.label, start, end)
            error = ZsnapError(
                f"internal error while fetching bytes {start}-{end}: {exc!r}", layer=source.label
            )
            error.__cause__ = exc
        if error is not None:
            self.stats.fetch_errors += 1
            log.info("fetch of %s bytes %d-%d failed: %s", source.label, start, end, error)
            self._finish(flights, error)
            return
        good: list[tuple[Flight, bytes]] = []  # verified, in memory until stored
        for fl, res in zip(flights, results, strict=True):
            if isinstance(res, bytes):
                fl.data = res
                good.append((fl, res))
            elif res is STORED:
                self.stats.chunks_verified += 1  # already in the store: readers pread it
            else:
                if isinstance(res, VerificationError):
                    self.stats.verify_failures += 1
                fl.error = res  # type: ignore[assignment]
                if self._inflight.get(fl.chunk.digest) is fl:
                    del self._inflight[fl.chunk.digest]  # nothing to store: the next reader fetches again
                    self._note_drained()
            fl.ready.set()  # readers go on with the verified bytes while they are stored
        self.stats.chunks_verified += len(good)
        try:
            if good:
                await self._wait_for_puts(good)
                holder = source.holder or self.holder
                items = [(data, fl.chunk.digest) for fl, data in good]
                await trio.to_thread.run_sync(self._put, items, holder, limiter=self._store_limiter)
        except ZsnapError as exc:  # disk full, store failure: the bytes were served, just not cached
            log.info("could not store %d chunks of %s: %s", len(good), source.label, exc)
        finally:
            self._finish(flights, None)

    def _finish(self, flights: list[Flight], error: BaseException | None) -> None:
        for fl in flights:
            if error is not None and fl.error is None and fl.data is None:
                fl.error = error
            if self._inflight.get(fl.chunk.digest) is fl:
                del self._inflight[fl.chunk.digest]
            fl.ready.set()
        self._note_drained()

    def _note_drained(self) -> None:
        self._shrunk.set()
        self._shrunk = trio.Event()
        if not self._inflight:
            self._drained.set()
            self._drained = trio.Event()

    def _put(self, items: list[tuple[bytes, str]], holder: str | None) -> None:
        """Worker thread: store verified chunks ``(bytes, digest)`` in one transaction."""
        # decode_verify has just hashed each chunk to its digest
        self.store.put_many(items, holder=holder, verified=True)
