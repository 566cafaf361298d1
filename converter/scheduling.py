"""Largest-first admission for layer jobs.

A batch's wall time is bounded below by its biggest layer's conversion: a 3.5 GB layer started last runs
alone on an otherwise idle machine at the end. Admitting the biggest layers first lets the small ones fill
the gaps beside them instead. :class:`PriorityLimiter` is a :class:`trio.CapacityLimiter` whose waiters
are served highest priority first (ties: first come, first served); the planner uses the layer's
compressed size as the priority.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable

import trio

__all__ = ["PriorityLimiter"]


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False


class PriorityLimiter:
    """At most ``total`` holders at once; when a slot frees, the waiter with the highest priority gets it.

    Args:
        total: slots (at least 1).
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a limiter needs at least one slot, got {total}")
        self.total = total
        self._used = 0
        self._order = itertools.count()
        self._waiting: list[tuple[int, int, _Waiter]] = []  # heap of (-priority, arrival, waiter)

    @property
    def borrowed(self) -> int:
        """Slots held now."""
        return self._used

    @contextlib.asynccontextmanager
    async def hold(self, priority: int, *, queued: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Hold one slot for the body, waiting behind every higher-priority waiter.

        ``queued`` is called once this call holds the slot or waits in the queue (so a caller can start
        the next, smaller one knowing this one is served first). A waiter cancelled before it gets the
        slot leaves the queue; one cancelled just after being granted it passes it on, so no slot is
        lost.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._used < self.total and not self._waiting:
            self._used += 1
            if queued is not None:
                queued()
        else:
            waiter = _Waiter()
            heapq.heappush(self._waiting, (-priority, next(self._order), waiter))
            if queued is not None:
                queued()
            try:
                await waiter.event.wait()
            except BaseException:
                if waiter.granted:
                    self._release()
                else:
                    self._waiting = [w for w in self._waiting if w[2] is not waiter]
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        if self._waiting:
            _, _, waiter = heapq.heappop(self._waiting)
            waiter.granted = True  # the slot passes straight to it; _used is unchanged
            waiter.event.set()
        else:
            self._used -= 1
