"""The request path to one registry::

    fetch / open          retries (fs.retry.RetryPolicy) around the whole exchange
      _send_checked       status -> error: 401/403 AuthError, 404 NotFoundError, 429/5xx transient
        _send             httpx ``AsyncClient.send(stream=True)``: auth (:class:`RegistryAuth`, an httpx.Auth)
                          and redirects are httpx's; a redirected answer that says 403/404 (an expired
                          pre-signed storage URL) is re-resolved once by asking the registry again

Transient failures (connect errors, timeouts, broken connections, 429, 5xx except 501/505) are retried
within the client's :class:`~fs.retry.RetryPolicy`; then :class:`RegistryUnavailable` names the registry,
what was being fetched and the last failure.

Resource handling: every response handed to a ``read`` callback is closed by :meth:`RegistrySession.fetch`;
:meth:`RegistrySession.open` hands the open response to the caller, who must close it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx

from fs.errors import AuthError, NotFoundError, RegistryUnavailable
from fs.retry import RetryPolicy

from .auth import TOKEN_SCOPES, RegistryAuth
from .http import (
    IDENTITY,
    TransientError,
    is_loopback,
    is_replayable,
    map_httpx_errors,
    read_limited,
    response_body,
    retry_after,
    unexpected_status,
)

__all__ = [
    "IDENTITY",
    "MAX_REDIRECTS",
    "RegistrySession",
    "RetryPolicy",
    "SessionStatistics",
    "TransientError",
    "is_loopback",
    "map_httpx_errors",
    "read_limited",
    "response_body",
    "unexpected_status",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class SessionStatistics:
    requests: int
    retries: int
    redirects: int
    reresolves: int
    token_requests: int


def _redirected(response: httpx.Response) -> bool:
    """True when the answer came at the end of a redirect (httpx keeps the hops in ``history``)."""
    return bool(response.history) and response.history[-1].has_redirect_location


class RegistrySession:
    """Sends requests to one registry; shared by every operation of a client.

    Args:
        registry: ``host[:port]`` (used in messages).
        client: the pooled ``httpx.AsyncClient`` (owned by the caller), with ``auth`` and redirects set up
            (see :func:`~fs.registry.client.open_registry_client`).
        auth: the client's authentication (its token counter feeds :meth:`statistics`).
        retry: the retry policy.
    """

    def __init__(
        self, registry: str, client: httpx.AsyncClient, auth: RegistryAuth, retry: RetryPolicy
    ) -> None:
        self.registry = registry
        self.client = client
        self.auth = auth
        self.retry = retry
        self._requests = self._retries = self._redirects = self._reresolves = 0
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], self._count]}

    async def _count(self, request: httpx.Request) -> None:
        self._requests += 1

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            self._requests, self._retries, self._redirects, self._reresolves, self.auth.token_requests
        )

    # -- public entry points ----------------------------------------------------------------------
    async def fetch(
        self,
        build: Callable[[], httpx.Request],
        read: Callable[[httpx.Response], Awaitable[T]],
        *,
        what: str,
        scopes: tuple[str, ...] = (),
        retry: bool = True,
    ) -> T:
        """Send ``build()`` and return ``await read(response)``, retrying both on transient failures.

        ``read`` sees every status except the ones turned into errors (401/403/404/429/5xx but 501/505).
        ``retry=False``: one attempt (a transient failure still ends as :class:`RegistryUnavailable`).
        """

        async def attempt() -> T:
            response = await self._send_checked(build, what=what, scopes=scopes)
            try:
                with map_httpx_errors(f"{self.registry}: {what}"):
                    return await read(response)
            finally:
                await response.aclose()

        return await self.retrying(attempt, what=what, enabled=retry)

    async def open(
        self,
        build: Callable[[], httpx.Request],
        *,
        what: str,
        scopes: tuple[str, ...] = (),
        retry: bool = True,
    ) -> httpx.Response:
        """Send with retries and return the open (streaming) response; the caller must ``aclose`` it.

        Body reads are NOT retried here; wrap them in :func:`map_httpx_errors`.
        """
        return await self.retrying(
            lambda: self._send_checked(build, what=what, scopes=scopes), what=what, enabled=retry
        )

    def give_up(self, message: str, last: BaseException) -> RegistryUnavailable:
        """The final error once the retries are spent (for :meth:`fs.retry.RetryPolicy.tries`)."""
        return RegistryUnavailable(
            f"registry {self.registry} unavailable: {message}", status=getattr(last, "status", None)
        )

    def count_retry(self, error: BaseException, delay: float) -> None:
        """``on_retry`` hook: counts retries for :meth:`statistics`."""
        self._retries += 1

    async def retrying(self, attempt: Callable[[], Awaitable[T]], *, what: str, enabled: bool = True) -> T:
        """``await attempt()`` with this registry's retry policy (transient failures only)."""
        return await self.retry.call(
            attempt,
            what=what,
            retry_on=TransientError,
            give_up=self.give_up,
            on_retry=self.count_retry,
            enabled=enabled,
        )

    # -- one exchange -----------------------------------------------------------------------------
    async def _send_checked(
        self, build: Callable[[], httpx.Request], *, what: str, scopes: tuple[str, ...]
    ) -> httpx.Response:
        request = build()
        response = await self._send(request, what=what, scopes=scopes)
        if _redirected(response) and response.status_code in (403, 404) and is_replayable(request):
            # an expired pre-signed storage URL: ask the registry for a fresh one, once
            await response.aclose()
            self._reresolves += 1
            request = build()
            response = await self._send(request, what=what, scopes=scopes)
        status = response.status_code
        if (
            status < 400
            or status in (501, 505)
            or (400 <= status < 500 and status not in (401, 403, 404, 429))
        ):
            return response
        await response.aclose()
        where = f"{what} at {self.registry}"
        if status in (401, 403) and not is_replayable(request):
            # the auth flow could not resend the consumed body; it dropped the refused token
            raise TransientError(
                f"credentials refused ({status}) during a streamed {request.method} to {where}"
            )
        if status in (401, 403):
            raise AuthError(f"access denied ({status}) to {where}", status=status)
        if status == 404:
            raise NotFoundError(f"not found: {where}", status=status)
        raise TransientError(f"HTTP {status} for {where}", status=status, retry_after=retry_after(response))

    async def _send(self, request: httpx.Request, *, what: str, scopes: tuple[str, ...]) -> httpx.Response:
        request.extensions[TOKEN_SCOPES] = scopes
        with map_httpx_errors(f"{self.registry}: {what} ({request.method} {request.url.host})"):
            response = await self.client.send(request, stream=True)
        self._redirects += sum(1 for hop in response.history if hop.has_redirect_location)
        return response
