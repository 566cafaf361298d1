"""Priorities for registry fetches: on-demand reads preempt prefetch, which preempts background fetch.

The stargz-snapshotter precedent is ``task/task.go``'s ``BackgroundTaskManager``: background work pauses
while prioritized work runs. :class:`FetchScheduler` is zsnap's named object for the same policy, expressed
as *slots* a fetch must hold while its range GET is on the wire:

* ``ON_DEMAND`` (a process is blocked in ``read(2)``): granted whenever fewer than ``limits[ON_DEMAND]``
  on-demand fetches are in flight; lower-priority work has slots of its own, so it waits for it only when
  the mount's total ``max_in_flight`` (``max-concurrent-fetches``) is reached.
* ``PREFETCH`` (files the image marks as needed first): granted only while no on-demand fetch is waiting or
  in flight, and fewer than ``limits[PREFETCH]`` prefetches are in flight.
* ``BACKGROUND`` (the rest of the layer): granted only while nothing of higher priority is waiting or in
  flight, and fewer than ``limits[BACKGROUND]`` background fetches are in flight.

Lower-priority work already on the wire is not cancelled (its requests are bounded in size, a few ms), but
no new one starts while a higher priority is active. A waiting :class:`Ticket` can be *promoted* (an
on-demand read joining a queued background fetch of the same chunk), and is then granted under the new
priority's rule. Pure trio, no I/O: unit tested without a registry.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import trio

__all__ = ["FetchScheduler", "Priority", "SchedulerStatistics", "Ticket"]


class Priority(enum.IntEnum):
    """Smaller value = more urgent."""

    ON_DEMAND = 0
    PREFETCH = 1
    BACKGROUND = 2


DEFAULT_LIMITS: Mapping[Priority, int] = {
    Priority.ON_DEMAND: 8,
    Priority.PREFETCH: 4,
    Priority.BACKGROUND: 2,
}


@dataclass(frozen=True)
class SchedulerStatistics:
    """Snapshot of a :class:`FetchScheduler`: per-priority counts, indexed by ``Priority``."""

    in_flight: tuple[int, int, int]
    waiting: tuple[int, int, int]
    granted: tuple[int, int, int]


class Ticket:
    """One claim on a fetch slot; use as ``async with ticket:`` (waits for the grant, releases on exit).

    A ticket is single-use. Cancellation while waiting drops the claim and nothing else.
    """

    __slots__ = ("_event", "_granted_as", "_sched", "_seq", "_state", "priority")

    def __init__(self, sched: FetchScheduler, priority: Priority, seq: int) -> None:
        self._sched = sched
        self.priority = Priority(priority)
        self._seq = seq
        self._event = trio.Event()
        self._state = "new"  # new -> waiting -> granted -> released
        self._granted_as: Priority | None = None

    def sort_key(self) -> tuple[int, int]:
        return (int(self.priority), self._seq)

    @property
    def granted(self) -> bool:
        return self._state == "granted"

    def promote(self, priority: Priority) -> None:
        """Raise the ticket to ``priority`` if that is more urgent; no-op once granted or released."""
        if priority < self.priority and self._state in ("new", "waiting"):
            self.priority = Priority(priority)
            if self._state == "waiting":
                self._sched._dispatch()

    async def __aenter__(self) -> Ticket:
        if self._state != "new":
            raise RuntimeError("a Ticket can be used once")
        self._state = "waiting"
        self._sched._last_active[self.priority] = trio.current_time()
        self._sched._waiting.append(self)
        self._sched._dispatch()
        try:
            await self._event.wait()
        except BaseException:
            if self._state == "granted":
                self._release()
            else:
                self._sched._waiting.remove(self)
                self._sched._last_active[self.priority] = trio.current_time()
                self._state = "released"
                self._sched._dispatch()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._state != "granted":
            return
        self._state = "released"
        assert self._granted_as is not None
        self._sched._last_active[self._granted_as] = trio.current_time()
        self._sched._in_flight[self._granted_as] -= 1
        self._sched._dispatch()


class FetchScheduler:
    """Grants fetch slots in priority order (see the module docstring for the rules).

    Args:
        limits: maximum in-flight fetches per priority (missing keys take :data:`DEFAULT_LIMITS`).
        max_in_flight: maximum in-flight fetches of all priorities together (``max-concurrent-fetches``;
            None: the sum of the per-priority limits). When it is reached even an on-demand fetch waits
            for a slot (lower-priority fetches on the wire are short).

    Must be used from one trio run; no locking beyond trio's single thread.
    """

    def __init__(
        self, limits: Mapping[Priority, int] | None = None, *, max_in_flight: int | None = None
    ) -> None:
        merged = dict(DEFAULT_LIMITS)
        merged.update(limits or {})
        if any(v < 1 for v in merged.values()):
            raise ValueError("every priority needs at least one slot")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._limits = merged
        self._max_in_flight = sum(merged.values()) if max_in_flight is None else max_in_flight
        self._in_flight = dict.fromkeys(Priority, 0)
        self._granted = dict.fromkeys(Priority, 0)
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()
        self._changed = trio.Event()  # set (and replaced) on every change of waiting/in-flight work
        # when a fetch of each priority last waited, started or ended (wait_turn's quiet period)
        self._last_active = dict.fromkeys(Priority, -math.inf)

    def ticket(self, priority: Priority) -> Ticket:
        """A new claim at ``priority``; nothing happens until it is entered."""
        return Ticket(self, priority, next(self._seq))

    def busy_above(self, priority: Priority) -> bool:
        """True while any fetch more urgent than ``priority`` is waiting or in flight."""
        if any(self._in_flight[p] for p in Priority if p < priority):
            return True
        return any(t.priority < priority for t in self._waiting)

    def mark_active(self, priority: Priority, *, for_seconds: float = 0.0) -> None:
        """Count ``priority`` as active from now for ``for_seconds``, for the quiet periods of
        :meth:`wait_turn` (e.g. an image was just attached: its container starts in a moment, so
        background fetch holds off a while)."""
        until = trio.current_time() + max(0.0, for_seconds)
        self._last_active[priority] = max(self._last_active[priority], until)

    async def wait_turn(self, priority: Priority, *, quiet: float = 0.0) -> None:
        """Return once no more-urgent fetch has been active for ``quiet`` seconds.

        Used by prefetch/background loops between batches so they do not even build the next batch while
        a reader is waiting.
        """
        while True:
            while self.busy_above(priority):
                await self._changed.wait()
            if quiet <= 0:
                return
            last = max((self._last_active[p] for p in Priority if p < priority), default=-math.inf)
            idle_for = trio.current_time() - last
            if idle_for >= quiet:  # quiet long enough already: no sleep per batch when nobody reads
                return
            await trio.sleep(quiet - idle_for)
            if not self.busy_above(priority):
                return

    def statistics(self) -> SchedulerStatistics:
        waiting = [0, 0, 0]
        for t in self._waiting:
            waiting[int(t.priority)] += 1
        return SchedulerStatistics(
            in_flight=tuple(self._in_flight[p] for p in Priority),  # type: ignore[arg-type]
            waiting=tuple(waiting),  # type: ignore[arg-type]
            granted=tuple(self._granted[p] for p in Priority),  # type: ignore[arg-type]
        )

    def _may_start(self, priority: Priority) -> bool:
        if self._in_flight[priority] >= self._limits[priority]:
            return False
        if sum(self._in_flight.values()) >= self._max_in_flight:
            return False
        return all(self._in_flight[p] == 0 for p in Priority if p < priority)

    def _dispatch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if not self._waiting:
            return
        self._waiting.sort(key=Ticket.sort_key)
        blocked_below: Priority | None = None  # a more urgent ticket is still waiting
        for t in list(self._waiting):
            if blocked_below is not None and t.priority > blocked_below:
                break
            if self._may_start(t.priority):
                self._waiting.remove(t)
                t._state = "granted"
                t._granted_as = t.priority
                self._in_flight[t.priority] += 1
                self._granted[t.priority] += 1
                t._event.set()
            elif blocked_below is None:
                blocked_below = t.priority
