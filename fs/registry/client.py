"""The distribution API client: manifests, blobs, byte ranges and uploads for one registry.

``open_registry_client(registry)`` opens one pooled ``httpx.AsyncClient`` (trio backend) behind a
:class:`~fs.registry.session.RegistrySession` (retries, auth, redirects, error translation) and yields a
:class:`RegistryClient`. Every byte that a digest vouches for is verified before it is returned
(manifests fetched by digest, :meth:`RegistryClient.get_blob`, the end of :meth:`RegistryClient.stream_blob`);
ranges cannot be verified here, the caller checks them against the TOC.

Range quirks are learned per registry host and remembered for the life of the process
(:func:`range_support`): a registry that answers a multi-range request with 400/416/501 or a whole 200 body
gets one request per range from then on, and one that ignores ``Range`` altogether gets a single whole-body
GET per call, from which only the wanted bytes are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO, Literal

import httpx
import trio

from fs.errors import FormatError, NotFoundError, RegistryError, RegistryUnavailable, VerificationError

from . import media
from .auth import Credentials, RegistryAuth, TokenCache, credentials_from_docker_config, load_docker_config
from .auth import repository_scope as _scope
from .ranges import (
    ByteRange,
    RangePart,
    SliceCollector,
    batch_ranges,
    coalesce,
    extract,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    suffix_range_header,
    validate_ranges,
)
from .session import (
    RegistrySession,
    RetryPolicy,
    SessionStatistics,
    TransientError,
    is_loopback,
    map_httpx_errors,
)
from .upload import push_blob as _push_blob

__all__ = ["Manifest", "RangeSupport", "RegistryClient", "open_registry_client", "range_support"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 << 20
MAX_SMALL_BLOB = 16 << 20
RANGE_CONCURRENCY = 8
_IDENTITY = {"Accept-Encoding": "identity"}
_DOCKER_HUB_API = "registry-1.docker.io"


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as the registry sent it; ``digest`` = sha256 of ``data``."""

    data: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        """The parsed JSON object.

        Raises:
            FormatError: not a JSON object.
        """
        try:
            value = json.loads(self.data)
        except ValueError as exc:
            raise FormatError(f"manifest {self.digest} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise FormatError(f"manifest {self.digest} is not a JSON object")
        return value


@dataclasses.dataclass
class RangeSupport:
    """What a registry was seen to do with ``Range`` (starts optimistic, only ever downgraded)."""

    multi_range: bool = True
    ranges: bool = True


_RANGE_SUPPORT: dict[str, RangeSupport] = {}


def range_support(registry: str) -> RangeSupport:
    """The process-wide, learned range behaviour of ``registry`` (``host[:port]``)."""
    return _RANGE_SUPPORT.setdefault(registry, RangeSupport())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _media_type(response: httpx.Response, data: bytes) -> str:
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
    if content_type and content_type not in ("application/json", "text/plain", "application/octet-stream"):
        return content_type
    with contextlib.suppress(ValueError, AttributeError):
        declared = json.loads(data).get("mediaType")
        if isinstance(declared, str):
            return declared
    return content_type


@contextlib.asynccontextmanager
async def _body(
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


async def _read_limited(response: httpx.Response, limit: int, what: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RegistryError(f"{what} is {declared} bytes, more than the {limit}-byte limit")
    chunks, total = [], 0
    async with _body(response) as body:
        async for chunk in body:
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{what} is more than the {limit}-byte limit")
            chunks.append(chunk)
    return b"".join(chunks)


def _unexpected(response: httpx.Response, what: str) -> RegistryError:
    return RegistryError(f"unexpected HTTP {response.status_code} for {what}", status=response.status_code)


class RegistryClient:
    """Distribution API operations against one registry (use :func:`open_registry_client`).

    All methods are safe to call concurrently from many trio tasks; they share one connection pool.
    """

    def __init__(self, registry: str, base_url: str, session: RegistrySession) -> None:
        self.registry = registry
        self.base_url = base_url
        self.session = session
        self._http = session.client

    # -- helpers ------------------------------------------------------------------------------------
    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    def _what(self, repo: str, kind: str, ref: str) -> str:
        return f"{kind} {ref} in {repo}"

    def _get(
        self, url: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Callable[[], httpx.Request]:
        return lambda: self._http.build_request(method, url, headers=headers)

    @property
    def ranges(self) -> RangeSupport:
        return range_support(self.registry)

    def statistics(self) -> SessionStatistics:
        """Counters of requests, retries, redirects, re-resolutions and token fetches so far."""
        return self.session.statistics()

    # -- manifests ----------------------------------------------------------------------------------
    async def get_manifest(
        self, repo: str, reference: str, *, accept: Sequence[str] | str = media.ALL_MANIFEST_TYPES
    ) -> Manifest:
        """Fetch a manifest or index by tag or digest.

        Raises:
            NotFoundError: no such manifest.
            VerificationError: the body does not hash to the requested digest (or to the digest the
                registry announced in ``Docker-Content-Digest``).
        """
        what = self._what(repo, "manifest", reference)
        headers = {"Accept": media.accept_header(tuple(accept) if not isinstance(accept, str) else accept)}

        async def read(response: httpx.Response) -> Manifest:
            if response.status_code != 200:
                raise _unexpected(response, what)
            data = await _read_limited(response, MAX_MANIFEST_SIZE, what)
            digest = sha256_digest(data)
            announced = response.headers.get("docker-content-digest", "")
            if reference.startswith("sha256:") and digest != reference:
                raise VerificationError(f"{what} at {self.registry}: body hashes to {digest}")
            if announced.startswith("sha256:") and announced != digest:
                raise VerificationError(f"{what} at {self.registry}: announced {announced}, body is {digest}")
            return Manifest(data, _media_type(response, data), digest)

        return await self.session.fetch(
            self._get(self._url(repo, "manifests", reference), headers),
            read,
            what=what,
            scopes=(_scope(repo),),
        )

    async def manifest_digest(
        self, repo: str, reference: str, *, accept: Sequence[str] | str = media.ALL_MANIFEST_TYPES
    ) -> str | None:
        """``HEAD`` a manifest: its ``Docker-Content-Digest``, or ``None`` when it does not exist."""
        what = self._what(repo, "manifest", reference)
        headers = {"Accept": media.accept_header(tuple(accept) if not isinstance(accept, str) else accept)}

        async def read(response: httpx.Response) -> str | None:
            if response.status_code != 200:
                raise _unexpected(response, what)
            return response.headers.get("docker-content-digest")

        try:
            return await self.session.fetch(
                self._get(self._url(repo, "manifests", reference), headers, "HEAD"),
                read,
                what=what,
                scopes=(_scope(repo),),
            )
        except NotFoundError:
            return None

    async def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under a tag (or its digest); returns its digest.

        Raises:
            RegistryError: refused (e.g. 400 MANIFEST_BLOB_UNKNOWN when a blob is missing).
        """
        digest = sha256_digest(data)
        what = self._what(repo, "manifest", reference)
        url = self._url(repo, "manifests", reference)

        async def read(response: httpx.Response) -> str:
            if response.status_code not in (200, 201, 202):
                body = (await response.aread())[:500].decode("utf-8", "replace")
                raise RegistryError(
                    f"{self.registry} refused {what}: HTTP {response.status_code} {body}",
                    status=response.status_code,
                )
            announced = response.headers.get("docker-content-digest", digest)
            if announced != digest:
                raise VerificationError(f"{self.registry} stored {what} as {announced}, expected {digest}")
            return digest

        return await self.session.fetch(
            lambda: self._http.build_request("PUT", url, content=data, headers={"Content-Type": media_type}),
            read,
            what=what,
            scopes=(_scope(repo, push=True),),
        )

    # -- blobs --------------------------------------------------------------------------------------
    async def blob_size(self, repo: str, digest: str) -> int | None:
        """``HEAD`` a blob: its size, or ``None`` when the repository does not have it."""
        what = self._what(repo, "blob", digest)

        async def read(response: httpx.Response) -> int:
            length = response.headers.get("content-length", "")
            if response.status_code != 200 or not length.isdigit():
                raise _unexpected(response, what)
            return int(length)

        try:
            return await self.session.fetch(
                self._get(self._url(repo, "blobs", digest), _IDENTITY, "HEAD"),
                read,
                what=what,
                scopes=(_scope(repo),),
            )
        except NotFoundError:
            return None

    async def get_blob(self, repo: str, digest: str, *, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """A whole small blob (a config, a TOC), verified against ``digest``.

        Raises:
            NotFoundError, VerificationError, RegistryError (larger than ``max_size``).
        """
        what = self._what(repo, "blob", digest)

        async def read(response: httpx.Response) -> bytes:
            if response.status_code != 200:
                raise _unexpected(response, what)
            data = await _read_limited(response, max_size, what)
            if sha256_digest(data) != digest:
                raise VerificationError(f"{what} at {self.registry} does not hash to its digest")
            return data

        return await self.session.fetch(
            self._get(self._url(repo, "blobs", digest), _IDENTITY), read, what=what, scopes=(_scope(repo),)
        )

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, repo: str, digest: str, *, verify: bool = True, chunk_size: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a whole blob: ``async with client.stream_blob(r, d) as chunks: async for b in chunks``.

        A connection that breaks mid-body is resumed with ``Range: bytes=<offset>-`` (bounded by the retry
        policy). With ``verify`` the digest is checked after the last byte: the iterator raises
        :class:`VerificationError` instead of finishing, so publish nothing before it has finished.
        The response is closed when the ``async with`` block exits. ``chunk_size`` = None yields pieces
        as they arrive from the network.
        """
        what = self._what(repo, "blob", digest)
        url = self._url(repo, "blobs", digest)
        policy = self.session.retry

        async def chunks() -> AsyncIterator[bytes]:
            hasher = hashlib.sha256()
            offset = skip = resumes = 0
            response = await self.session.open(self._get(url, _IDENTITY), what=what, scopes=(_scope(repo),))
            try:
                if response.status_code != 200:
                    raise _unexpected(response, what)
                while True:
                    try:
                        with map_httpx_errors(f"{self.registry}: {what}"):
                            async with _body(response, chunk_size) as body:
                                async for data in body:
                                    if skip:  # a resume answered 200: drop what we already have
                                        cut = min(skip, len(data))
                                        data, skip = data[cut:], skip - cut
                                        if not data:
                                            continue
                                    hasher.update(data)
                                    offset += len(data)
                                    yield data
                        break
                    except TransientError as exc:
                        await response.aclose()
                        resumes += 1
                        if resumes >= policy.attempts:
                            raise RegistryUnavailable(
                                f"registry {self.registry} unavailable: {what} broke off at byte {offset} "
                                f"{resumes} time(s); last error: {exc.message}"
                            ) from exc
                        log.info("resuming %s at byte %d: %s", what, offset, exc.message)
                        await trio.sleep(policy.delay(resumes))
                        headers = {**_IDENTITY, "Range": f"bytes={offset}-"}
                        response = await self.session.open(
                            self._get(url, headers), what=what, scopes=(_scope(repo),)
                        )
                        skip = offset if response.status_code == 200 else 0
                        if response.status_code not in (200, 206) or (
                            response.status_code == 206
                            and parse_content_range(response.headers.get("content-range", "")).start != offset
                        ):
                            raise _unexpected(response, what) from exc
            finally:
                await response.aclose()
            if verify and "sha256:" + hasher.hexdigest() != digest:
                raise VerificationError(
                    f"{what} at {self.registry} does not hash to its digest ({offset} bytes)"
                )

        iterator = chunks()
        try:
            yield iterator
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]

    # -- ranges -------------------------------------------------------------------------------------
    async def get_ranges(self, repo: str, digest: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Fetch byte ranges ``[(start, end_exclusive), …]`` of a blob, in the order given.

        Overlapping and adjacent ranges are merged; several ranges go out as one multi-range request
        (batched to keep the header short) unless this registry was seen to refuse that (see
        :func:`range_support`), in which case single-range requests run concurrently. A 200 answer that
        ignores ``Range`` is sliced while it streams. The bytes are NOT verified here.

        Raises:
            ValueError: an empty or negative range.
            NotFoundError, RegistryUnavailable, RegistryError (e.g. 416: a range beyond the blob).
        """
        validate_ranges(ranges)
        if not ranges:
            return []
        merged = coalesce(ranges)
        what = self._what(repo, "blob", digest)
        url = self._url(repo, "blobs", digest)
        support = self.ranges
        if not support.ranges:
            parts = await self._fetch_whole(url, merged, what, repo)
        elif len(merged) == 1 or not support.multi_range:
            parts = await self._fetch_singles(url, merged, what, repo)
        else:
            parts = []
            for batch in batch_ranges(merged):
                parts.extend(await self._fetch_multi(url, batch, what, repo))
        return extract(parts, ranges)

    async def get_tail(self, repo: str, digest: str, n: int, size: int | None = None) -> bytes:
        """The last ``n`` bytes of a blob (fewer if it is shorter): an explicit range when ``size`` is
        known, else a suffix range ``bytes=-n``."""
        if size is not None:
            return (await self.get_ranges(repo, digest, [(max(0, size - n), size)]))[0] if size else b""
        what = self._what(repo, "blob", digest)
        headers = {**_IDENTITY, "Range": suffix_range_header(n)}

        async def read(response: httpx.Response) -> bytes:
            if response.status_code == 206:
                return await response.aread()
            if response.status_code == 200:
                self._learn_ignores_ranges(what)
                tail = b""
                async with _body(response) as body:
                    async for chunk in body:
                        tail = (tail + chunk)[-n:]
                return tail
            raise _unexpected(response, what)

        return await self.session.fetch(
            self._get(self._url(repo, "blobs", digest), headers), read, what=what, scopes=(_scope(repo),)
        )

    def _learn_ignores_ranges(self, what: str) -> None:
        if self.ranges.ranges:
            log.info("%s ignores Range (200 for %s): whole-body reads from now on", self.registry, what)
        self.ranges.ranges = self.ranges.multi_range = False

    async def _collect_200(self, response: httpx.Response, wanted: Sequence[ByteRange]) -> list[RangePart]:
        collector = SliceCollector(wanted)
        async with _body(response) as body:
            async for chunk in body:
                collector.feed(chunk)
                if collector.done:
                    break
        return [RangePart(start, data) for (start, _), data in zip(wanted, collector.results(), strict=True)]

    async def _fetch_whole(
        self, url: str, wanted: Sequence[ByteRange], what: str, repo: str
    ) -> list[RangePart]:
        async def read(response: httpx.Response) -> list[RangePart]:
            if response.status_code != 200:
                raise _unexpected(response, what)
            return await self._collect_200(response, wanted)

        return await self.session.fetch(self._get(url, _IDENTITY), read, what=what, scopes=(_scope(repo),))

    async def _fetch_single(self, url: str, rng: ByteRange, what: str, repo: str) -> RangePart:
        headers = {**_IDENTITY, "Range": range_header([rng])}

        async def read(response: httpx.Response) -> RangePart:
            if response.status_code == 206:
                data = await response.aread()
                got = parse_content_range(response.headers.get("content-range", ""))
                if got.start is None or got.start > rng[0] or got.start + len(data) < rng[1]:
                    raise RegistryError(
                        f"{what}: asked bytes {rng}, got {response.headers.get('content-range')}"
                    )
                return RangePart(got.start, data, got.total)
            if response.status_code == 200:
                self._learn_ignores_ranges(what)
                return (await self._collect_200(response, [rng]))[0]
            if response.status_code == 416:
                raise RegistryError(
                    f"{what}: bytes {rng} are beyond the blob ({response.headers.get('content-range')})",
                    status=416,
                )
            raise _unexpected(response, what)

        return await self.session.fetch(self._get(url, headers), read, what=what, scopes=(_scope(repo),))

    async def _fetch_singles(
        self, url: str, wanted: Sequence[ByteRange], what: str, repo: str
    ) -> list[RangePart]:
        if len(wanted) == 1:
            return [await self._fetch_single(url, wanted[0], what, repo)]
        results: list[RangePart | None] = [None] * len(wanted)
        limiter = trio.CapacityLimiter(RANGE_CONCURRENCY)

        async def one(i: int, rng: ByteRange) -> None:
            async with limiter:
                results[i] = await self._fetch_single(url, rng, what, repo)

        async with trio.open_nursery() as nursery:
            for i, rng in enumerate(wanted):
                nursery.start_soon(one, i, rng)
        return [part for part in results if part is not None]

    async def _fetch_multi(self, url: str, batch: list[ByteRange], what: str, repo: str) -> list[RangePart]:
        headers = {**_IDENTITY, "Range": range_header(batch)}

        async def read(response: httpx.Response) -> list[RangePart] | None:
            status = response.status_code
            if status == 206:
                body = await response.aread()
                content_type = response.headers.get("content-type", "")
                if content_type.lower().startswith("multipart/byteranges"):
                    return parse_multipart_byteranges(body, content_type)
                got = parse_content_range(response.headers.get("content-range", ""))
                if got.start is None:
                    raise RegistryError(f"{what}: 206 without a usable Content-Range")
                return [RangePart(got.start, body, got.total)]  # the server merged our ranges into one
            if status == 200:
                self.ranges.multi_range = False
                log.info(
                    "%s answered a multi-range request with 200: single ranges from now on", self.registry
                )
                return await self._collect_200(response, batch)
            if status in (400, 416, 501):
                self.ranges.multi_range = False
                log.info(
                    "%s refused a multi-range request (%d): single ranges from now on", self.registry, status
                )
                return None
            raise _unexpected(response, what)

        parts = await self.session.fetch(self._get(url, headers), read, what=what, scopes=(_scope(repo),))
        if parts is None:
            return await self._fetch_singles(url, batch, what, repo)
        return parts

    # -- uploads ------------------------------------------------------------------------------------
    async def push_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        open_file: Callable[[], BinaryIO],
        *,
        mount_from: str | None = None,
        chunk_size: int = 32 << 20,
    ) -> Literal["exists", "mounted", "uploaded"]:
        """Make ``digest`` exist in ``repo``: skip if present, else cross-repo mount from ``mount_from``,
        else upload it from ``open_file()`` in ``chunk_size`` PATCHes (streamed, never read whole).

        Returns what happened. ``open_file`` is called once per upload attempt; the file is closed after.

        Raises:
            VerificationError: the file's bytes do not hash to ``digest`` or are not ``size`` long (nothing
                is committed).
            AuthError, RegistryUnavailable, RegistryError.
        """
        return await _push_blob(
            self, repo, digest, size, open_file, mount_from=mount_from, chunk_size=chunk_size
        )


@contextlib.asynccontextmanager
async def open_registry_client(
    registry: str,
    *,
    plain_http: bool | None = None,
    timeout: float = 30.0,
    connect_timeout: float = 5.0,
    retries: int | RetryPolicy = 3,
    docker_config: str | os.PathLike[str] | None = None,
    credentials: Credentials | None = None,
    token_cache: TokenCache | None = None,
    max_connections: int = 16,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[RegistryClient]:
    """Open a client for ``registry`` (``host[:port]``; ``docker.io`` means Docker Hub).

    Args:
        plain_http: ``None`` = plain HTTP for loopback hosts (127.0.0.0/8, ::1, localhost), HTTPS
            otherwise; ``True``/``False`` force it.
        timeout: read/write/pool timeout of one request, seconds.
        connect_timeout: TCP (and TLS) connect timeout, seconds.
        retries: retries after the first attempt (``int``), or a full :class:`RetryPolicy`.
        docker_config: directory (or file) of docker's ``config.json`` for credentials; default
            ``$DOCKER_CONFIG`` or ``~/.docker``. ``credentials`` overrides it.
        token_cache: share Bearer tokens between clients (default: one per client).
        transport: an httpx transport (tests use ``httpx.MockTransport``).

    The pool and every connection are closed when the block exits (also on cancellation).
    """
    if plain_http is None:
        plain_http = is_loopback(registry)
    api_host = _DOCKER_HUB_API if registry == "docker.io" else registry
    base_url = f"{'http' if plain_http else 'https'}://{api_host}"
    policy = retries if isinstance(retries, RetryPolicy) else RetryPolicy(attempts=retries + 1)
    if credentials is None:
        credentials = credentials_from_docker_config(load_docker_config(docker_config), registry)
    auth = RegistryAuth(registry, credentials, cache=token_cache)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        limits=limits,
        follow_redirects=False,
        transport=transport,
        headers={"User-Agent": "zsnap/0.1"},
    ) as http:
        yield RegistryClient(registry, base_url, RegistrySession(registry, http, auth, policy))
