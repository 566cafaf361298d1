"""The request path to one registry, one concern per layer (httpx's ``_send_handling_*`` chain)::

    fetch / open                  retries with back-off + jitter around the whole exchange
      _send_checked               status -> error: 401/403 AuthError, 404 NotFoundError, 429/5xx transient
        _send_handling_auth       drives :meth:`RegistryAuth.auth_flow` (Basic, Bearer, refresh once)
          _send_handling_redirects  follows 30x, keeps Range, drops Authorization across origins,
                                    re-resolves once when a redirected URL answers 403
            _send_single          httpx ``AsyncClient.send(stream=True)``

httpx exceptions are translated in exactly one place, :func:`map_httpx_errors`, used around sending and
around reading bodies. Transient failures (connect errors, timeouts, broken connections, 429, 5xx except
501/505) are retried up to ``RetryPolicy.attempts`` times and within ``RetryPolicy.total_time`` seconds;
then :class:`RegistryUnavailable` names the registry and what was being fetched.

Resource handling: every response handed to a ``read`` callback is closed by :meth:`RegistrySession.fetch`;
:meth:`RegistrySession.open` hands the open response to the caller, who must close it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

import httpx
import trio

from fs.errors import AuthError, NotFoundError, RegistryError, RegistryUnavailable

from .auth import TOKEN_REQUEST, RegistryAuth

__all__ = [
    "IDENTITY",
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

_REDIRECTS = (301, 302, 303, 307, 308)
#: blob requests ask for the bytes as stored (no transparent compression on top)
IDENTITY = {"Accept-Encoding": "identity"}
_MAX_REDIRECTS = 5


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: at most ``attempts`` tries and ``total_time`` seconds (sleeps included).

    The n-th retry sleeps ``min(max_delay, base_delay * 2**(n-1))`` scaled by a random factor in
    [0.5, 1] (jitter), or the server's ``Retry-After`` when that is shorter than ``max_delay``.
    """

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 2.0
    total_time: float = 30.0

    def delay(self, retry: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        if retry_after is not None and 0 <= retry_after <= self.max_delay:
            return retry_after
        backoff = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return backoff * (0.5 + 0.5 * (rng or random).random())


@dataclasses.dataclass(frozen=True)
class SessionStatistics:
    requests: int
    retries: int
    redirects: int
    reresolves: int
    token_requests: int


class TransientError(RegistryUnavailable):
    """One attempt failed in a way worth retrying; becomes a plain RegistryUnavailable after the last."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


@contextlib.contextmanager
def map_httpx_errors(where: str) -> Iterator[None]:
    """Translate httpx's exceptions into zsnap's tree: the one place that knows httpx's exceptions.

    Timeouts and network/protocol failures become :class:`TransientError` (retryable); anything else
    httpx raises becomes :class:`RegistryError`.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransientError(f"{where}: timed out ({type(exc).__name__})") from exc
    except httpx.UnsupportedProtocol as exc:
        raise RegistryError(f"{where}: {exc}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"{where}: {type(exc).__name__}: {exc or 'connection failed'}") from exc
    except httpx.HTTPError as exc:
        raise RegistryError(f"{where}: {type(exc).__name__}: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise RegistryError(f"{where}: invalid URL: {exc}") from exc


@contextlib.asynccontextmanager
async def response_body(
    response: httpx.Response, chunk_size: int | None = None
) -> AsyncIterator[AsyncIterator[bytes]]:
    """Iterate a response body; when left before the end, close the connection and then run httpx's
    chain of async generators to its (failing) end, so none is abandoned half-way (trio warns about
    those, and finalizes them later in a system task)."""
    body = response.aiter_bytes(chunk_size)
    try:
        yield body
    finally:
        if getattr(body, "ag_frame", None) is not None:  # not run to its end
            await response.aclose()
            with contextlib.suppress(httpx.HTTPError, httpx.StreamError):
                async for _ in body:
                    pass


async def read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    """The whole body, refusing (RegistryError) more than ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what} is {declared} bytes, more than the {limit}-byte limit")
    chunks, total = [], 0
    async with response_body(response) as body:
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{what} is more than the {limit}-byte limit")
            chunks.append(chunk)
    return b"".join(chunks)


def unexpected_status(response: httpx.Response, what: str) -> RegistryError:
    """The error for a status an operation has no use for."""
    return RegistryError(f"unexpected HTTP {response.status_code} for {what}", status=response.status_code)


def is_loopback(registry: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without a port)."""
    host = registry
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


class RegistrySession:
    """Sends requests to one registry through the layers above; shared by every operation of a client.

    Args:
        registry: ``host[:port]`` (used in messages and as the auth namespace).
        client: the pooled ``httpx.AsyncClient`` (owned by the caller).
        auth: authentication state for this registry.
        retry: the retry policy.
    """

    def __init__(
        self, registry: str, client: httpx.AsyncClient, auth: RegistryAuth, retry: RetryPolicy
    ) -> None:
        self.registry = registry
        self.client = client
        self.auth = auth
        self.retry = retry
        self._rng = random.Random()
        self._requests = self._retries = self._redirects = self._reresolves = self._token_fetches = 0
        self._token_lock = trio.Lock()

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            self._requests, self._retries, self._redirects, self._reresolves, self._token_fetches
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
        """

        async def attempt() -> T:
            response = await self._send_checked(build(), what=what, scopes=scopes)
            try:
                with map_httpx_errors(f"{self.registry}: {what}"):
                    return await read(response)
            finally:
                await response.aclose()

        return await self._retrying(attempt, what=what, retry=retry)

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
        return await self._retrying(
            lambda: self._send_checked(build(), what=what, scopes=scopes), what=what, retry=retry
        )

    # -- layers -----------------------------------------------------------------------------------
    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, what: str, retry: bool) -> T:
        start = trio.current_time()
        tries = 0
        while True:
            tries += 1
            try:
                return await attempt()
            except TransientError as exc:
                elapsed = trio.current_time() - start
                delay = self.retry.delay(tries, exc.retry_after, self._rng)
                if not retry or tries >= self.retry.attempts or elapsed + delay > self.retry.total_time:
                    raise RegistryUnavailable(
                        f"registry {self.registry} unavailable: {what} failed after {tries} attempt(s) "
                        f"in {elapsed:.1f}s; last error: {exc.message}",
                        status=exc.status,
                    ) from exc
                self._retries += 1
                log.info("retrying %s at %s in %.2fs: %s", what, self.registry, delay, exc.message)
                await trio.sleep(delay)

    async def _send_checked(
        self, request: httpx.Request, *, what: str, scopes: tuple[str, ...]
    ) -> httpx.Response:
        response = await self._send_handling_auth(request, scopes=scopes, what=what)
        status = response.status_code
        if (
            status < 400
            or status in (501, 505)
            or (400 <= status < 500 and status not in (401, 403, 404, 429))
        ):
            return response
        await response.aclose()
        where = f"{what} at {self.registry}"
        if status in (401, 403):
            raise AuthError(f"access denied ({status}) to {where}", status=status)
        if status == 404:
            raise NotFoundError(f"not found: {where}", status=status)
        raise TransientError(f"HTTP {status} for {where}", status=status, retry_after=_retry_after(response))

    async def _send_handling_auth(
        self, request: httpx.Request, *, scopes: tuple[str, ...], what: str
    ) -> httpx.Response:
        flow = self.auth.auth_flow(request, scopes)
        request = next(flow)
        while True:
            if request.extensions.get(TOKEN_REQUEST):
                # one token fetch at a time, and none when another task has just cached the token;
                # the flow stores the new token before the lock is released
                async with self._token_lock:
                    response = self.auth.cached_token_response(request)
                    if response is None:
                        response = await self._fetch_token(request, what=what)
                    try:
                        next_request = flow.send(response)
                    except StopIteration:  # pragma: no cover - a flow always retries after a token
                        return response
                request = next_request
                continue
            response = await self._send_handling_redirects(request, what=what)
            try:
                next_request = flow.send(response)
            except StopIteration:
                return response
            except BaseException:
                await response.aclose()
                raise
            await response.aclose()
            request = next_request

    async def _fetch_token(self, request: httpx.Request, *, what: str) -> httpx.Response:
        self._token_fetches += 1
        response = await self._send_handling_redirects(request, what=what)
        try:
            with map_httpx_errors(f"token service for {self.registry}"):
                await response.aread()
        finally:
            await response.aclose()
        status = response.status_code
        if status == 429 or (status >= 500 and status not in (501, 505)):
            raise TransientError(
                f"token service {request.url.host} answered {status} for {what}",
                status=status,
                retry_after=_retry_after(response),
            )
        return response

    async def _send_handling_redirects(self, request: httpx.Request, *, what: str) -> httpx.Response:
        original = request
        reresolved = False
        hops = 0
        while True:
            response = await self._send_single(request, what=what)
            if hops and response.status_code == 403 and not reresolved:
                # an expired pre-signed storage URL: ask the registry for a fresh one, once
                await response.aclose()
                self._reresolves += 1
                reresolved, hops, request = True, 0, original
                continue
            if response.status_code not in _REDIRECTS or "location" not in response.headers:
                return response
            await response.aclose()
            hops += 1
            if hops > _MAX_REDIRECTS:
                raise RegistryError(f"too many redirects for {what} at {self.registry}")
            self._redirects += 1
            request = self._redirect_request(request, response)

    @staticmethod
    def _redirect_request(request: httpx.Request, response: httpx.Response) -> httpx.Request:
        url = request.url.join(response.headers["location"])
        headers = httpx.Headers(request.headers)
        del headers["host"]
        if (url.scheme, url.host, url.port) != (request.url.scheme, request.url.host, request.url.port):
            headers.pop("authorization", None)
        method = request.method
        content: bytes | None = None
        if response.status_code == 303 and method != "HEAD":
            method = "GET"
        elif response.status_code in (307, 308):
            try:
                content = request.content or None
            except httpx.RequestNotRead as exc:  # a streamed upload cannot be replayed
                raise RegistryError(f"cannot follow a redirect of a streamed {method} to {url}") from exc
        if content is None:
            headers.pop("content-length", None)
        redirected = httpx.Request(method, url, headers=headers, content=content)
        redirected.extensions.update(request.extensions)
        return redirected

    async def _send_single(self, request: httpx.Request, *, what: str) -> httpx.Response:
        self._requests += 1
        with map_httpx_errors(f"{self.registry}: {what} ({request.method} {request.url.host})"):
            return await self.client.send(request, stream=True)
