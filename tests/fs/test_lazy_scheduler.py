"""FetchScheduler: on-demand preempts prefetch preempts background; promotion; cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from fs.lazy.scheduler import FetchScheduler, Priority


async def _hold(
    sched: FetchScheduler, prio: Priority, log: list[str], name: str, release: trio.Event
) -> None:
    async with sched.ticket(prio):
        log.append(name)
        await release.wait()


async def test_on_demand_never_waits_for_lower_priorities() -> None:
    sched = FetchScheduler({Priority.ON_DEMAND: 1, Priority.PREFETCH: 1, Priority.BACKGROUND: 1})
    log: list[str] = []
    bg_release, od_release = trio.Event(), trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.BACKGROUND, log, "bg", bg_release)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["bg"]
        n.start_soon(_hold, sched, Priority.ON_DEMAND, log, "od", od_release)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["bg", "od"]  # granted although background holds its slot
        assert sched.statistics().in_flight == (1, 0, 1)
        bg_release.set()
        od_release.set()


async def test_lower_priorities_wait_while_higher_active() -> None:
    sched = FetchScheduler()
    log: list[str] = []
    od_release, rest = trio.Event(), trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.ON_DEMAND, log, "od", od_release)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(_hold, sched, Priority.BACKGROUND, log, "bg", rest)
        n.start_soon(_hold, sched, Priority.PREFETCH, log, "pf", rest)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["od"]
        assert sched.busy_above(Priority.PREFETCH)
        assert sched.statistics().waiting == (0, 1, 1)
        od_release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["od", "pf"]  # prefetch goes first; background still blocked by it
        rest.set()
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["od", "pf", "bg"]


async def test_limits_per_priority_and_fifo() -> None:
    sched = FetchScheduler({Priority.ON_DEMAND: 2})
    log: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(_hold, sched, Priority.ON_DEMAND, log, f"od{i}", release)
            await trio.testing.wait_all_tasks_blocked()
        assert log == ["od0", "od1"]
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == ["od0", "od1", "od2", "od3"]
    assert sched.statistics().granted == (4, 0, 0)
    assert sched.statistics().in_flight == (0, 0, 0)


async def test_promote_waiting_ticket() -> None:
    sched = FetchScheduler({Priority.ON_DEMAND: 1})
    log: list[str] = []
    od_release, bg_release = trio.Event(), trio.Event()
    ticket = sched.ticket(Priority.BACKGROUND)

    async def bg() -> None:
        async with ticket:
            log.append("bg")
            await bg_release.wait()

    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.PREFETCH, log, "pf", od_release)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(bg)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["pf"]
        ticket.promote(Priority.ON_DEMAND)
        await trio.testing.wait_all_tasks_blocked()
        assert log == ["pf", "bg"]
        ticket.promote(Priority.BACKGROUND)  # demotion is ignored
        assert ticket.priority is Priority.ON_DEMAND
        od_release.set()
        bg_release.set()


async def test_cancelled_waiter_drops_only_its_claim() -> None:
    sched = FetchScheduler({Priority.ON_DEMAND: 1})
    log: list[str] = []
    release = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.ON_DEMAND, log, "a", release)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            async with sched.ticket(Priority.ON_DEMAND):
                log.append("never")
        n.start_soon(_hold, sched, Priority.ON_DEMAND, log, "b", release)
        await trio.testing.wait_all_tasks_blocked()
        assert sched.statistics().waiting == (1, 0, 0)
        release.set()
    assert log == ["a", "b"]
    assert sched.statistics().in_flight == (0, 0, 0)


async def test_wait_turn_returns_when_quiet() -> None:
    sched = FetchScheduler()
    release = trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.ON_DEMAND, [], "od", release)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.05) as scope:
            await sched.wait_turn(Priority.BACKGROUND)
        assert scope.cancelled_caught
        release.set()
    with trio.fail_after(1):
        await sched.wait_turn(Priority.BACKGROUND, quiet=0.01)


async def test_wait_turn_sleeps_only_what_is_left_of_the_quiet_period(autojump_clock: object) -> None:
    """Right after an on-demand fetch ends, prefetch waits out ``quiet``; once nothing more urgent has been
    active for that long (or ever), it returns at once instead of sleeping ``quiet`` before every batch."""
    sched = FetchScheduler()
    t0 = trio.current_time()
    await sched.wait_turn(Priority.PREFETCH, quiet=10.0)  # nothing was ever active: no sleep
    assert trio.current_time() == t0
    async with sched.ticket(Priority.ON_DEMAND):
        pass
    ended = trio.current_time()
    await sched.wait_turn(Priority.PREFETCH, quiet=10.0)
    assert trio.current_time() - ended >= 10.0  # the quiet period after the on-demand fetch
    t1 = trio.current_time()
    await sched.wait_turn(Priority.PREFETCH, quiet=10.0)  # quiet long enough already
    assert trio.current_time() == t1


async def test_mark_active_starts_a_quiet_period(autojump_clock: object) -> None:
    """An attach marks prefetch active: background fetch (which waits for prefetch to be quiet) holds off
    for its quiet period from then on, though no fetch ran; on-demand reads are not held at all."""
    sched = FetchScheduler()
    sched.mark_active(Priority.PREFETCH)
    marked = trio.current_time()
    await sched.wait_turn(Priority.PREFETCH, quiet=0.5)  # prefetch waits for on-demand only
    assert trio.current_time() == marked
    await sched.wait_turn(Priority.BACKGROUND, quiet=0.5)
    assert trio.current_time() - marked >= 0.5
    held = trio.current_time()
    sched.mark_active(Priority.PREFETCH, for_seconds=2.0)  # an attach: held off for 2 s, then quiet
    sched.mark_active(Priority.PREFETCH)  # a shorter mark does not cut the hold short
    await sched.wait_turn(Priority.BACKGROUND, quiet=0.5)
    assert trio.current_time() - held >= 2.5


def test_ticket_single_use_and_limits_validated() -> None:
    with pytest.raises(ValueError):
        FetchScheduler({Priority.PREFETCH: 0})


async def test_max_in_flight_bounds_all_priorities_together() -> None:
    sched = FetchScheduler(max_in_flight=2)  # max-concurrent-fetches = 2
    log: list[str] = []
    bg_release, od_release = trio.Event(), trio.Event()
    async with trio.open_nursery() as n:
        n.start_soon(_hold, sched, Priority.BACKGROUND, log, "bg", bg_release)
        await trio.testing.wait_all_tasks_blocked()
        for name in ("od1", "od2"):
            n.start_soon(_hold, sched, Priority.ON_DEMAND, log, name, od_release)
        await trio.testing.wait_all_tasks_blocked()
        assert log[0] == "bg" and len(log) == 2  # the total is reached: one on-demand fetch waits
        assert sched.statistics().in_flight == (1, 0, 1) and sched.statistics().waiting == (1, 0, 0)
        bg_release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(log) == ["bg", "od1", "od2"]
        od_release.set()
    with pytest.raises(ValueError):
        FetchScheduler(max_in_flight=0)
