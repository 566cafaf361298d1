"""One retry policy for everything that talks to a remote: bounded attempts and time, exponential back-off
with jitter, ``Retry-After`` honoured, and the reason of the last failure kept in the final error.

Two ways to use it, same budget and back-off::

    result = await policy.call(fetch_once, what="manifest x in repo", retry_on=TransientError)

    async for attempt in policy.tries(what="stream of blob y", retry_on=TransientError):
        with attempt:          # a retry_on exception here is swallowed and the loop sleeps, then goes on
            ...                # may ``yield`` (async generators), ``return`` or ``break``
                               # leaving the block normally ends the loop

When the budget is spent, :class:`RetriesExhausted` (a :class:`~fs.errors.ZsnapError`) is raised from the last
failure, or whatever ``give_up(message, last_error)`` returns (the registry turns it into
:class:`~fs.errors.RegistryUnavailable` naming the registry).

Why not ``stamina``/``tenacity``: their deadlines run on the wall clock, not trio's (so trio's autojump clock
cannot test back-off without waiting), they log retries at WARNING by default (a process-wide setting to turn
off), and they do not cap a server's ``Retry-After``. What zsnap needs is these ~100 lines.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import trio

from fs.errors import ZsnapError

__all__ = ["Attempt", "RetriesExhausted", "RetryPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]
GiveUp = Callable[[str, BaseException], BaseException]


class RetriesExhausted(ZsnapError):
    """Every attempt failed; the message ends with the last failure's reason."""


def _reason(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``attempts`` tries and ``total_time`` seconds (sleeps included, trio clock).

    The n-th retry sleeps ``min(max_delay, base_delay * 2**(n-1))`` scaled by a random factor in
    [0.5, 1] (jitter), or the failure's ``retry_after`` attribute (a server's ``Retry-After``) when that is
    at most ``max_delay``.
    """

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    total_time: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to sleep before the ``retry``-th retry (1-based)."""
        if retry_after is not None and 0 <= retry_after <= self.max_delay:
            return retry_after
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        jitter = rng.random() if rng is not None else random.random()
        return backoff * (0.5 + 0.5 * jitter)

    def tries(
        self,
        *,
        what: str,
        retry_on: ExceptionTypes,
        give_up: GiveUp | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
        enabled: bool = True,
    ) -> _Attempts:
        """The attempts loop (see the module docstring); ``enabled=False`` = one attempt only.

        ``on_retry(error, delay)`` is called before each sleep (counters, logging).
        """
        return _Attempts(self, what, retry_on, give_up, on_retry, enabled)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        what: str,
        retry_on: ExceptionTypes,
        give_up: GiveUp | None = None,
        on_retry: Callable[[BaseException, float], None] | None = None,
        enabled: bool = True,
    ) -> T:
        """``await attempt()`` until it returns, retrying ``retry_on`` failures within the budget."""
        async for one in self.tries(
            what=what, retry_on=retry_on, give_up=give_up, on_retry=on_retry, enabled=enabled
        ):
            with one:
                return await attempt()
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


class Attempt:
    """One try: a context manager that records (and swallows) a retryable failure."""

    __slots__ = ("_retry_on", "error", "number")

    def __init__(self, number: int, retry_on: ExceptionTypes) -> None:
        self.number = number
        self._retry_on = retry_on
        #: the retryable failure of this attempt, if any
        self.error: BaseException | None = None

    def __enter__(self) -> Attempt:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is not None and isinstance(exc, self._retry_on):
            self.error = exc
            return True
        return False


class _Attempts:
    def __init__(
        self,
        policy: RetryPolicy,
        what: str,
        retry_on: ExceptionTypes,
        give_up: GiveUp | None,
        on_retry: Callable[[BaseException, float], None] | None,
        enabled: bool,
    ) -> None:
        self.policy, self.what, self.retry_on = policy, what, retry_on
        self.give_up, self.on_retry, self.enabled = give_up, on_retry, enabled
        self.current: Attempt | None = None
        self.start = 0.0

    def __aiter__(self) -> _Attempts:
        return self

    async def __anext__(self) -> Attempt:
        previous = self.current
        if previous is None:
            self.start = trio.current_time()
            self.current = Attempt(1, self.retry_on)
            return self.current
        error = previous.error
        if error is None:  # the block finished without a retryable failure
            raise StopAsyncIteration
        tries = previous.number
        elapsed = trio.current_time() - self.start
        delay = self.policy.delay(tries, getattr(error, "retry_after", None))
        if not self.enabled or tries >= self.policy.attempts or elapsed + delay > self.policy.total_time:
            message = (
                f"{self.what} failed after {tries} attempt(s) in {elapsed:.1f}s; last error: {_reason(error)}"
            )
            final = self.give_up(message, error) if self.give_up else RetriesExhausted(message)
            raise final from error
        if self.on_retry is not None:
            self.on_retry(error, delay)
        log.info("retrying %s in %.2fs: %s", self.what, delay, _reason(error))
        await trio.sleep(delay)
        self.current = Attempt(tries + 1, self.retry_on)
        return self.current
