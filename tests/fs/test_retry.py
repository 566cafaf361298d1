"""fs.retry: one retry policy (budget, back-off, Retry-After, last reason kept), on an autojump clock."""

from __future__ import annotations

import itertools

import pytest
import trio

from fs.errors import RegistryUnavailable, VerificationError, ZsnapError
from fs.retry import RetriesExhausted, RetryPolicy


class Flaky(ZsnapError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


async def test_call_retries_until_success_with_backoff(autojump_clock) -> None:
    policy = RetryPolicy(attempts=5, base_delay=1.0, max_delay=8.0, total_time=100)
    times: list[float] = []
    retried: list[float] = []

    async def attempt() -> str:
        times.append(trio.current_time())
        if len(times) < 4:
            raise Flaky(f"try {len(times)}", retry_after=0.25 if len(times) == 2 else None)
        return "done"

    result = await policy.call(
        attempt, what="x", retry_on=Flaky, on_retry=lambda error, delay: retried.append(delay)
    )
    assert result == "done" and len(retried) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.5 <= gaps[0] <= 1.0  # base, jittered
    assert gaps[1] == pytest.approx(0.25)  # Retry-After
    assert 2.0 <= gaps[2] <= 4.0  # 4x base, jittered


async def test_exhausted_keeps_the_last_reason(autojump_clock) -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.1, max_delay=1.0, total_time=100)
    count = 0

    async def attempt() -> None:
        nonlocal count
        count += 1
        raise Flaky(f"broken #{count}")

    with pytest.raises(
        RetriesExhausted, match=r"fetch y failed after 3 attempt\(s\).*last error: broken #3"
    ) as info:
        await policy.call(attempt, what="fetch y", retry_on=Flaky)
    assert isinstance(info.value.__cause__, Flaky)

    def give_up(message: str, last: BaseException) -> RegistryUnavailable:
        return RegistryUnavailable(f"registry r unavailable: {message}")

    with pytest.raises(RegistryUnavailable, match="registry r unavailable: fetch y failed"):
        await policy.call(attempt, what="fetch y", retry_on=Flaky, give_up=give_up)


async def test_total_time_bounds_attempts(autojump_clock) -> None:
    policy = RetryPolicy(attempts=1000, base_delay=1.0, max_delay=2.0, total_time=10)
    start = trio.current_time()

    async def attempt() -> None:
        raise Flaky("down")

    with pytest.raises(RetriesExhausted):
        await policy.call(attempt, what="z", retry_on=Flaky)
    assert trio.current_time() - start <= 10


async def test_other_errors_pass_through_and_disabled_is_one_try() -> None:
    policy = RetryPolicy()
    calls = 0

    async def wrong() -> None:
        nonlocal calls
        calls += 1
        raise VerificationError("bad bytes")

    with pytest.raises(VerificationError):
        await policy.call(wrong, what="w", retry_on=Flaky)
    assert calls == 1

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise Flaky("once")

    with pytest.raises(RetriesExhausted, match="after 1 attempt"):
        await policy.call(flaky, what="w", retry_on=Flaky, enabled=False)
    assert calls == 2


async def test_tries_loop_inside_an_async_generator(autojump_clock) -> None:
    """The loop form resumes a stream where it broke off (what blob streams do)."""
    data = list(range(10))
    breaks = {3, 7}

    async def stream():
        offset = 0
        async for attempt in RetryPolicy(attempts=5).tries(what="stream", retry_on=Flaky):
            with attempt:
                while offset < len(data):
                    if offset in breaks:
                        breaks.discard(offset)
                        raise Flaky(f"broke at {offset}")
                    yield data[offset]
                    offset += 1

    assert [x async for x in stream()] == data
