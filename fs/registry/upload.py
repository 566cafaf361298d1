"""Blob uploads (distribution "chunked upload"): exists check, cross-repo mount, POST + PATCH… + PUT.

The file is streamed in pieces of at most 1 MiB, read and hashed in a worker thread, so memory stays small
whatever the blob size. A failed PATCH/PUT cannot be replayed inside an upload session, so a transient
failure, or credentials refused in the middle of a streamed PATCH (an expired token: the body is gone, so
the auth flow cannot resend it), restarts the whole upload with a fresh session (bounded by the client's
retry policy).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, BinaryIO, Literal

import httpx
import trio

from fs.digest import Hasher
from fs.errors import RegistryError, RegistryUnavailable, VerificationError

from .auth import repository_scope

if TYPE_CHECKING:
    from .client import RegistryClient

__all__ = ["push_blob"]

log = logging.getLogger(__name__)

PIECE = 1 << 20


def upload_location(response: httpx.Response, what: str) -> httpx.URL:
    """Where an upload session goes on: the ``Location`` of ``response``, resolved against its URL."""
    location = response.headers.get("location")
    if not location:
        raise RegistryError(f"{what}: upload answer {response.status_code} without a Location")
    return response.url.join(location)


def expect_status(
    statuses: tuple[int, ...], what: str
) -> Callable[[httpx.Response], Awaitable[httpx.Response]]:
    """A ``read`` for :meth:`RegistrySession.fetch` that passes ``statuses`` and names ``what`` otherwise."""

    async def read(response: httpx.Response) -> httpx.Response:
        if response.status_code not in statuses:
            body = (await response.aread())[:300].decode("utf-8", "replace")
            raise RegistryError(f"{what} answered {response.status_code} {body}", status=response.status_code)
        return response

    return read


def patch_headers(offset: int, length: int) -> dict[str, str]:
    """Headers of the chunked-upload PATCH carrying bytes ``[offset, offset + length)``."""
    return {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(length),
        "Content-Range": f"{offset}-{offset + length - 1}",
    }


async def patch_chunk(
    client: RegistryClient,
    location: httpx.URL,
    offset: int,
    body: AsyncIterator[bytes],
    length: int,
    what: str,
    scopes: tuple[str, ...],
) -> httpx.URL:
    """PATCH the ``length`` bytes of ``body`` at ``offset`` into the upload session at ``location``; the
    session's next location. One attempt: the body iterator is made once, by the caller."""
    build = client.session.client.build_request
    response = await client.session.fetch(
        functools.partial(build, "PATCH", location, headers=patch_headers(offset, length), content=body),
        expect_status((202, 204), f"{what}: PATCH at byte {offset}"),
        what=what,
        scopes=scopes,
        retry=False,
    )
    return upload_location(response, what)


async def commit_upload(
    client: RegistryClient, location: httpx.URL, digest: str, what: str, scopes: tuple[str, ...], step: str
) -> None:
    """The final PUT that commits the upload session at ``location`` as blob ``digest``; ``step`` names
    it in an error."""
    build = client.session.client.build_request
    url = location.copy_merge_params({"digest": digest})
    await client.session.fetch(
        lambda: build("PUT", url, headers={"Content-Length": "0"}),
        expect_status((201, 204), f"{what}: {step}"),
        what=what,
        scopes=scopes,
        retry=False,
    )


async def _pieces(file: BinaryIO, length: int, hasher: Hasher) -> AsyncIterator[bytes]:
    def read(n: int) -> bytes:
        data = file.read(n)
        hasher.update(data)
        return data

    left = length
    while left:
        data = await trio.to_thread.run_sync(read, min(PIECE, left))
        if not data:
            raise VerificationError(f"the file ended {left} bytes before the declared size")
        left -= len(data)
        yield data


async def push_blob(
    client: RegistryClient,
    repo: str,
    digest: str,
    size: int,
    open_file: Callable[[], BinaryIO],
    *,
    mount_from: str | None = None,
    chunk_size: int = 32 << 20,
) -> Literal["exists", "mounted", "uploaded"]:
    """See :meth:`RegistryClient.push_blob`."""
    if await client.blob_size(repo, digest) is not None:
        return "exists"
    session = client.session
    what = f"upload of blob {digest} to {repo}"
    scopes = (repository_scope(repo, push=True),)
    uploads = f"{client.base_url}/v2/{repo}/blobs/uploads/"

    async def start(params: dict[str, str], scopes: tuple[str, ...]) -> httpx.Response:
        async def read(response: httpx.Response) -> httpx.Response:
            if response.status_code not in (201, 202):
                raise RegistryError(
                    f"{what}: POST answered {response.status_code}", status=response.status_code
                )
            return response

        return await session.fetch(
            lambda: client.session.client.build_request(
                "POST", uploads, params=params, headers={"Content-Length": "0"}
            ),
            read,
            what=what,
            scopes=scopes,
        )

    if mount_from and mount_from != repo:
        response = await start({"mount": digest, "from": mount_from}, (*scopes, repository_scope(mount_from)))
        if response.status_code == 201:
            return "mounted"
        location = upload_location(response, what)  # the registry opened an ordinary upload instead
    else:
        location = upload_location(await start({}, scopes), what)

    # a failed PATCH/PUT cannot be replayed inside an upload session: a transient failure (or credentials
    # refused mid-stream, see fs.registry.auth) restarts the whole upload with a fresh session
    async for attempt in session.retry.tries(
        what=f"{what} at {client.registry}",
        retry_on=RegistryUnavailable,
        give_up=session.give_up,
        on_retry=session.count_retry,
    ):
        if attempt.number > 1:  # a fresh upload session (POST has its own retries; its failure is final)
            location = upload_location(await start({}, scopes), what)
        with attempt:
            await _upload(client, location, digest, size, open_file, chunk_size, what, scopes)
            return "uploaded"
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


async def _upload(
    client: RegistryClient,
    location: httpx.URL,
    digest: str,
    size: int,
    open_file: Callable[[], BinaryIO],
    chunk_size: int,
    what: str,
    scopes: tuple[str, ...],
) -> None:
    hasher = Hasher()

    file = await trio.to_thread.run_sync(open_file)
    try:
        offset = 0
        while offset < size:
            length = min(chunk_size, size - offset)
            body = _pieces(file, length, hasher)
            location = await patch_chunk(client, location, offset, body, length, what, scopes)
            offset += length
        extra = await trio.to_thread.run_sync(file.read, 1)
    finally:
        await trio.to_thread.run_sync(file.close)
    if extra or hasher.digest() != digest:
        raise VerificationError(
            f"{what}: the file is not {size} bytes hashing to {digest}; nothing was committed"
        )
    await commit_upload(client, location, digest, what, scopes, "final PUT")
