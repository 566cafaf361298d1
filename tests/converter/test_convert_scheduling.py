"""Largest-first scheduling: the order jobs are admitted in, and the limiter that hands out slots."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from converter.convert import schedule_order
from converter.layers import LayerJob
from converter.manifests import Compression
from converter.scheduling import PriorityLimiter
from fs.registry.manifests import Descriptor


def _job(size: int, name: str) -> LayerJob:
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + name * 64, size, {})
    return LayerJob(name, None, layer, Compression.GZIP, None, "image")  # type: ignore[arg-type]


def test_schedule_order_is_biggest_first_ties_in_plan_order():
    jobs = [_job(10, "a"), _job(3500, "b"), _job(0, "c"), _job(2000, "d"), _job(10, "e")]
    assert [j.key for j in schedule_order(jobs)] == ["b", "d", "a", "e", "c"]


async def _hold_in_turn(limiter: PriorityLimiter, priorities: list[int]) -> list[int]:
    """One task holds the only slot while tasks with ``priorities`` queue up (in list order); return
    the order they got the slot in."""
    served: list[int] = []
    release = trio.Event()

    async def first() -> None:
        async with limiter.hold(0):
            await release.wait()

    async def waiter(priority: int) -> None:
        async with limiter.hold(priority):
            served.append(priority)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        for priority in priorities:
            nursery.start_soon(waiter, priority)
            await trio.testing.wait_all_tasks_blocked()  # queued in this order
        release.set()
    return served


async def test_waiters_get_the_slot_highest_priority_first():
    limiter = PriorityLimiter(1)
    assert await _hold_in_turn(limiter, [5, 3500, 10, 2000, 10]) == [3500, 2000, 10, 10, 5]
    assert limiter.borrowed == 0


async def test_a_cancelled_waiter_loses_no_slot():
    limiter = PriorityLimiter(2)
    order: list[str] = []

    async def hold(name: str, priority: int, until: trio.Event) -> None:
        async with limiter.hold(priority):
            order.append(name)
            await until.wait()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a", 1, done)
        nursery.start_soon(hold, "b", 1, done)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            async with limiter.hold(100):  # cancelled before it got a slot: leaves the queue
                pytest.fail("a cancelled waiter got a slot")
        cancelled_waiter = trio.CancelScope()

        async def wait_then_cancelled() -> None:
            with cancelled_waiter:
                async with limiter.hold(50):
                    order.append("never")

        nursery.start_soon(wait_then_cancelled)
        nursery.start_soon(hold, "c", 1, done)
        await trio.testing.wait_all_tasks_blocked()
        cancelled_waiter.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.borrowed == 2
        done.set()
    assert sorted(order[:2]) == ["a", "b"] and order[2:] == ["c"]  # a, b started together: any order
    assert limiter.borrowed == 0


async def test_queued_is_called_once_granted_or_waiting():
    limiter = PriorityLimiter(1)
    calls: list[str] = []
    release = trio.Event()

    async def hold(name: str) -> None:
        async with limiter.hold(1, queued=lambda: calls.append(name)):
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "granted")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "waiting")
        await trio.testing.wait_all_tasks_blocked()
        assert calls == ["granted", "waiting"] and limiter.borrowed == 1
        release.set()
