"""The small pieces of HTTP that httpx leaves to its users: translating httpx's exceptions into zsnap's,
reading bodies within a limit or leaving them half-way cleanly, telling a replayable request from a
streamed one.

httpx exceptions are translated in exactly one place, :func:`map_httpx_errors`, used around sending and
around reading bodies.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator, Iterator

import httpx

from fs.errors import RegistryError, RegistryUnavailable

__all__ = [
    "IDENTITY",
    "TransientError",
    "is_loopback",
    "is_replayable",
    "map_httpx_errors",
    "read_limited",
    "response_body",
    "retry_after",
    "shared_ssl_context",
    "unexpected_status",
    "warm_up",
]

#: blob requests ask for the bytes as stored (no transparent compression on top)
IDENTITY = {"Accept-Encoding": "identity"}


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context (certifi's bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made
    once per process and shared by every client (thread-safe).

    httpx builds one per client, reading the whole CA bundle each time (~25 ms, ~125 ms the first time in
    a process): a daemon opening a client per registry paid it inside a container's first pull.
    """
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


def warm_up() -> None:
    """Do now, on the calling (worker) thread, what a process's first client would do inside its first
    request, on the event loop: build the TLS context and import httpx's transport (httpcore, h11;
    ~25 ms, more on a cold page cache). ``zsnap serve`` calls it at start."""
    httpx.AsyncHTTPTransport(verify=shared_ssl_context())


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
    except httpx.StreamError as exc:
        raise RegistryError(f"{where}: {type(exc).__name__}: {exc}") from exc


def is_replayable(request: httpx.Request) -> bool:
    """True when the request can be sent again as it is (no body, or a body held in memory); False for a
    streamed body, which is consumed by sending it once."""
    try:
        request.content  # noqa: B018 - raises for a stream that was never read into memory
    except httpx.RequestNotRead:
        return False
    return True


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


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` seconds of an answer (the HTTP-date form is ignored)."""
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


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
