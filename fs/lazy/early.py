"""Early prefetch: a layer's hinted prefetch ranges fetched while its TOC is verified and parsed.

The prefetch list is in the TOC, so the prefetch used to start only once every layer's TOC was fetched,
verified and indexed; on the 2 GB bench image the link sat idle for those 0.3-0.5 s, and the container
then waited for the prefetch. A layer written by ``zsnap convert --prefetch-list`` also says in its
descriptor where that list lies in the blob (:mod:`fs.format.hints`). :func:`start_early_fetch` begins
fetching those ranges as soon as the layer's TOC has arrived, and :class:`EarlyRanges` then stands in for
the registry client of the layer's :class:`~fs.lazy.fetcher.BlobSource`: a range inside the fetched (or
still arriving) bytes is answered from them, any other range goes to the registry.

Nothing here is trusted more than the registry: the bytes only ever reach the fetcher's decode + verify
step, exactly as a range GET's would, so a lying hint costs bandwidth and memory, never correctness. Both
are bounded: one host-wide :class:`EarlyBudget` (:data:`EARLY_BUDGET` bytes) caps what is held, and the
bytes are dropped when the layer's prefetch phase ends (:meth:`EarlyRanges.release`, from
:mod:`fs.lazy.fills`) or :data:`UNUSED_TTL` seconds after they arrived, whichever comes first.

Counting: the fetcher counts what it gets through here as it counts registry bytes (at its priority, when
it gets them); bytes fetched early and never asked for are added to the prefetch bytes on release.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

import trio

from fs.errors import FormatError
from fs.format.hints import parse_prefetch_hint
from fs.lazy.stats import MountStats

__all__ = ["EARLY_BUDGET", "EarlyBudget", "EarlyRanges", "start_early_fetch"]

log = logging.getLogger(__name__)

#: Bytes held host-wide for early prefetch at any time (a hint beyond what is left is cut).
EARLY_BUDGET = 64 << 20
#: Bytes per request: a reader waits for the pieces its range needs, not for the whole hint.
PIECE_BYTES = 1 << 20
#: Requests in flight per layer.
EARLY_WORKERS = 4
#: Seconds the bytes are kept when nobody releases them (a layer detached before its fill started).
UNUSED_TTL = 60.0


class EarlyBudget:
    """The host-wide byte budget of early prefetch (trio thread only)."""

    def __init__(self, max_bytes: int = EARLY_BUDGET) -> None:
        self.left = max_bytes

    def take(self, want: int) -> int:
        got = min(want, self.left)
        self.left -= got
        return got

    def give(self, n: int) -> None:
        self.left += n


class _Piece:
    """One request's ranges; ``data`` (one bytes per range) once fetched, None if it failed or was
    dropped; ``done`` is set either way."""

    __slots__ = ("data", "done", "ranges", "size", "used")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.size = sum(end - start for start, end in ranges)
        self.data: list[bytes] | None = None
        self.done = trio.Event()
        self.used = False


def _pieces(ranges: Sequence[tuple[int, int]]) -> list[_Piece]:
    """Ranges cut at :data:`PIECE_BYTES` and grouped, in blob order, into pieces of at most that much."""
    pieces: list[_Piece] = []
    current: list[tuple[int, int]] = []
    size = 0
    for start, end in ranges:
        while start < end:
            if size == PIECE_BYTES:
                pieces.append(_Piece(current))
                current, size = [], 0
            take = min(end - start, PIECE_BYTES - size)
            current.append((start, start + take))
            size += take
            start += take
    if current:
        pieces.append(_Piece(current))
    return pieces


class EarlyRanges:
    """A range client for one blob that answers from the early-fetched bytes where it can.

    Create with :func:`start_early_fetch`. ``get_ranges`` has the signature of the registry client's; a
    range is served early only when it lies wholly inside contiguous hinted bytes of this blob whose
    requests succeeded (it waits for them while they are in flight); otherwise ``client`` fetches it.
    """

    def __init__(
        self, client: Any, repository: str, digest: str, ranges: Sequence[tuple[int, int]],
        *, stats: MountStats, budget: EarlyBudget,
    ) -> None:  # fmt: skip
        self.client = client
        self.repository = repository
        self.digest = digest
        self._stats = stats
        self._budget = budget
        self._pieces = _pieces(ranges)
        # (start, end, piece, index of the range in the piece), by start
        self._segments = [(s, e, p, i) for p in self._pieces for i, (s, e) in enumerate(p.ranges)]
        self._starts = [seg[0] for seg in self._segments]
        self._reserved = budget.take(self.hinted_bytes)  # the caller cut the ranges to what is left
        self._scope = trio.CancelScope()
        self._released = False

    @property
    def hinted_bytes(self) -> int:
        return sum(p.size for p in self._pieces)

    async def get_ranges(self, repository: str, digest: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        out: list[bytes] = []
        mine = (repository, digest) == (self.repository, self.digest)
        for start, end in ranges:
            data = await self._serve(start, end) if mine else None
            if data is None:
                data = (await self.client.get_ranges(repository, digest, [(start, end)]))[0]
            out.append(data)
        return out

    async def _serve(self, start: int, end: int) -> bytes | None:
        i = bisect.bisect_right(self._starts, start) - 1
        parts: list[bytes] = []
        pos = start
        while pos < end:
            if i < 0 or i >= len(self._segments):
                return None
            seg_start, seg_end, piece, k = self._segments[i]
            if not seg_start <= pos < seg_end:
                return None  # a gap: not hinted
            await piece.done.wait()
            if piece.data is None:
                return None  # failed or dropped: the registry it is
            piece.used = True
            take = min(end, seg_end)
            parts.append(piece.data[k][pos - seg_start : take - seg_start])
            pos = take
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def run(self) -> None:
        """Fetch the pieces (:data:`EARLY_WORKERS` at a time, in blob order), keep them at most
        :data:`UNUSED_TTL` seconds, then :meth:`release`."""
        todo = list(reversed(self._pieces))

        async def worker() -> None:
            while todo:
                await self._fetch(todo.pop())

        try:
            with self._scope:
                async with trio.open_nursery() as n:
                    for _ in range(EARLY_WORKERS):
                        n.start_soon(worker)
                await trio.sleep(UNUSED_TTL)
        finally:
            self.release()

    async def _fetch(self, piece: _Piece) -> None:
        try:
            data = await self.client.get_ranges(self.repository, self.digest, piece.ranges)
            if len(data) == len(piece.ranges) and all(
                len(d) == e - s for d, (s, e) in zip(data, piece.ranges, strict=True)
            ):
                piece.data = data
        except Exception as exc:  # the registry's error reaches whoever asks for these bytes again
            log.debug("early prefetch of %s bytes %s failed: %s", self.digest[:19], piece.ranges[0], exc)
        finally:
            piece.done.set()

    def release(self) -> None:
        """Drop the bytes (waiting readers go to the registry) and return the budget; idempotent."""
        if self._released:
            return
        self._released = True
        self._scope.cancel()
        fetched = used = 0
        for piece in self._pieces:
            if piece.data is not None:
                fetched += piece.size
                used += piece.size if piece.used else 0
            piece.data = None
            piece.done.set()
        self._budget.give(self._reserved)
        if fetched > used:
            by_priority = self._stats.bytes_by_priority
            self._stats.bytes_fetched += fetched - used
            by_priority["prefetch"] = by_priority.get("prefetch", 0) + fetched - used
        if fetched:
            log.info(
                "early prefetch of layer %s: %d of %d hinted bytes fetched, %d of them read through it",
                self.digest, fetched, self.hinted_bytes, used,
            )  # fmt: skip


def start_early_fetch(
    nursery: trio.Nursery, client: Any, repository: str, desc: Any, *, stats: MountStats, budget: EarlyBudget
) -> EarlyRanges | None:
    """Start fetching the prefetch hint of layer ``desc`` (a manifest descriptor) in ``nursery``; None
    when it has none, the budget is spent, or the hint is malformed (logged, then ignored)."""
    try:
        ranges = parse_prefetch_hint(desc.annotations, desc.size, max_bytes=budget.left)
    except FormatError as exc:
        log.warning("layer %s: prefetch hint ignored: %s", desc.digest, exc)
        return None
    if not ranges:
        return None
    early = EarlyRanges(client, repository, desc.digest, ranges, stats=stats, budget=budget)
    nursery.start_soon(early.run)
    return early
