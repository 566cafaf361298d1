"""The distribution API client: manifests, blobs, byte ranges and uploads for one registry.

``open_registry_client(registry)`` opens one pooled ``httpx.AsyncClient`` (trio backend) behind a
:class:`~fs.registry.session.RegistrySession` (retries, status mapping; auth and redirects are httpx's, with
:class:`~fs.registry.auth.RegistryAuth` as the client's ``auth``) and yields a
:class:`RegistryClient`. Every byte that a digest vouches for is verified before it is returned
(manifests fetched by digest, :meth:`RegistryClient.get_blob`, the end of :meth:`RegistryClient.stream_blob`);
ranges cannot be verified here, the caller checks them against the TOC.

Blob reads (ranges, tails, streams) live in :mod:`fs.registry.blob_reads`, uploads in
:mod:`fs.registry.upload`; this module holds manifests, small blobs and the client's life cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, BinaryIO, Literal, NamedTuple

import httpx

from fs.digest import sha256_digest
from fs.errors import FormatError, NotFoundError, RegistryError, VerificationError

from . import media
from .auth import RegistryAuth, TokenCache
from .auth import repository_scope as _scope
from .blob_reads import BlobReads, RangeSupport, range_support
from .credentials import Credentials, credentials_from_docker_config, load_docker_config
from .http import IDENTITY, is_loopback, read_limited, shared_ssl_context, unexpected_status
from .session import MAX_REDIRECTS, RegistrySession, RetryPolicy, SessionStatistics
from .upload import push_blob as _push_blob

__all__ = ["Manifest", "RangeSupport", "RegistryClient", "open_registry_client", "range_support"]

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 << 20
MAX_SMALL_BLOB = 16 << 20
_DOCKER_HUB_API = "registry-1.docker.io"


class Manifest(NamedTuple):
    """A manifest or index exactly as stored; ``digest`` = sha256 of ``data``. Unpacks as
    ``data, media_type, digest``."""

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


def _media_type(response: httpx.Response, data: bytes) -> str:
    header: str = response.headers.get("content-type", "")  # httpx types Headers.get as Any
    content_type = header.split(";", 1)[0].strip()
    if content_type and content_type not in ("application/json", "text/plain", "application/octet-stream"):
        return content_type
    with contextlib.suppress(ValueError, AttributeError):
        declared = json.loads(data).get("mediaType")
        if isinstance(declared, str):
            return declared
    return content_type


class RegistryClient(BlobReads):
    """Distribution API operations against one registry (use :func:`open_registry_client`).

    All methods are safe to call concurrently from many trio tasks; they share one connection pool.
    """

    def __init__(self, registry: str, base_url: str, session: RegistrySession) -> None:
        self.registry = registry
        self.base_url = base_url
        self.session = session
        self._http = session.client

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
                raise unexpected_status(response, what)
            data = await read_limited(response, MAX_MANIFEST_SIZE, what)
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
                raise unexpected_status(response, what)
            digest: str | None = response.headers.get("docker-content-digest")
            return digest

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
                raise unexpected_status(response, what)
            return int(length)

        try:
            return await self.session.fetch(
                self._get(self._url(repo, "blobs", digest), IDENTITY, "HEAD"),
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
                raise unexpected_status(response, what)
            data = await read_limited(response, max_size, what)
            if sha256_digest(data) != digest:
                raise VerificationError(f"{what} at {self.registry} does not hash to its digest")
            return data

        return await self.session.fetch(
            self._get(self._url(repo, "blobs", digest), IDENTITY), read, what=what, scopes=(_scope(repo),)
        )

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
        auth=auth,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        transport=transport,
        headers={"User-Agent": "zsnap/0.1"},
        verify=shared_ssl_context(),
    ) as http:
        yield RegistryClient(registry, base_url, RegistrySession(registry, http, auth, policy))
