"""Upload a blob while it is being written, and mount-only cross-repository copies.

:func:`push_growing_blob` sends a blob whose digest is known only once its writer finishes (a layer being
converted): POST opens an upload session, each PATCH sends the next ``chunk_size`` bytes as soon as the
writer has produced them (``Content-Range``, in order, as the distribution spec's chunked upload), and the
final PUT ``?digest=`` commits once the writer reports the digest; the registry checks it. The bytes are
read back from the writer's file (page cache), so the writer never waits for the network.

There is no retry inside: a PATCH cannot be replayed within a session, and the bytes already sent cannot
be regenerated. A failed streamed upload is aborted (best-effort DELETE of the session) and the caller
falls back to an ordinary :meth:`RegistryClient.push_blob` of the finished file, which has the retry loop.
A writer that gives up makes :meth:`GrowingBlob.wait_for` raise: the upload then ends between PATCHes and
its DELETE names the session's current state. Cancelled in the middle of a PATCH, the registry may refuse
that DELETE (its state is one PATCH behind); it expires abandoned sessions itself.

:func:`mount_blob` asks for a cross-repository mount and never uploads: a registry that answers with an
upload session instead (the source repository lost the blob) gets the session cancelled and ``False``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, BinaryIO, Protocol

import httpx
import trio

from fs.errors import RegistryError

from .auth import repository_scope
from .upload import commit_upload, expect_status, patch_chunk, upload_location

if TYPE_CHECKING:
    from .client import RegistryClient

__all__ = ["GrowingBlob", "mount_blob", "push_growing_blob"]

log = logging.getLogger(__name__)

_PIECE = 1 << 20


class GrowingBlob(Protocol):
    """A blob file that a writer is still appending to."""

    async def wait_for(self, size: int) -> int:
        """Wait until at least ``size`` bytes are written or the writer finished; return bytes written.

        Raises (any exception) when the writer failed or gave the blob up.
        """

    def open(self) -> BinaryIO:
        """A new reader of the file from its start (called in a worker thread)."""

    @property
    def digest(self) -> str | None:
        """``sha256:…`` once the writer finished, else None."""


async def _start(
    client: RegistryClient, repo: str, params: dict[str, str], scopes: tuple[str, ...], what: str
) -> httpx.Response:
    url = f"{client.base_url}/v2/{repo}/blobs/uploads/"
    return await client.session.fetch(
        lambda: client.session.client.build_request(
            "POST", url, params=params, headers={"Content-Length": "0"}
        ),
        expect_status((201, 202), f"{what}: POST"),
        what=what,
        scopes=scopes,
    )


async def _cancel(client: RegistryClient, location: httpx.URL, scopes: tuple[str, ...], what: str) -> None:
    """Best-effort DELETE of an upload session (bounded, immune to the caller's cancellation)."""
    with trio.move_on_after(10) as scope:
        scope.shield = True
        try:
            await client.session.fetch(
                lambda: client.session.client.build_request("DELETE", location),
                expect_status((200, 202, 204, 404), f"{what}: DELETE"),
                what=what,
                scopes=scopes,
                retry=False,
            )
        except RegistryError as exc:  # the registry expires abandoned sessions itself
            log.info("%s: could not cancel the upload session: %s", what, exc)


async def mount_blob(client: RegistryClient, repo: str, digest: str, from_repo: str) -> bool:
    """Mount ``digest`` from ``from_repo`` into ``repo`` of the same registry; True if the registry did.

    Never uploads: when the registry opens an upload session instead (the blob is gone from
    ``from_repo``, or mounting is not supported), the session is cancelled and False returned.
    """
    what = f"mount of blob {digest} from {from_repo} to {repo}"
    scopes = (repository_scope(repo, push=True), repository_scope(from_repo))
    response = await _start(client, repo, {"mount": digest, "from": from_repo}, scopes, what)
    if response.status_code == 201:
        return True
    await _cancel(client, upload_location(response, what), scopes, what)
    return False


async def push_growing_blob(
    client: RegistryClient, repo: str, blob: GrowingBlob, *, chunk_size: int = 16 << 20
) -> tuple[str, int]:
    """Upload ``blob`` into ``repo`` while its writer produces it; return ``(digest, size)`` committed.

    Raises:
        RegistryError / RegistryUnavailable: an answer or the connection failed; the session is cancelled
            and nothing is committed. Whatever ``blob.wait_for`` raises (the writer failed), likewise.
    """
    what = f"streamed upload to {repo}"
    scopes = (repository_scope(repo, push=True),)
    await blob.wait_for(0)  # the writer started (it may also give up before: then no session at all)
    location = upload_location(await _start(client, repo, {}, scopes, what), what)
    reader: BinaryIO | None = None
    try:
        offset = 0
        while True:
            written = await blob.wait_for(offset + chunk_size)
            finished = blob.digest is not None
            if written > offset and (finished or written - offset >= chunk_size):
                if reader is None:
                    reader = await trio.to_thread.run_sync(blob.open)
                length = written - offset if finished else chunk_size
                body = _pieces(reader, length)
                location = await patch_chunk(client, location, offset, body, length, what, scopes)
                offset += length
                continue
            if finished:
                break
        digest = blob.digest
        assert digest is not None
        await commit_upload(client, location, digest, what, scopes, f"final PUT of {digest} ({offset} bytes)")
    except BaseException:
        await _cancel(client, location, scopes, what)
        raise
    finally:
        if reader is not None:
            await trio.to_thread.run_sync(reader.close)
    return digest, offset


async def _pieces(file: BinaryIO, length: int) -> AsyncIterator[bytes]:
    left = length
    while left:
        data = await trio.to_thread.run_sync(file.read, min(_PIECE, left))
        if not data:
            raise RegistryError(f"the growing blob ended {left} bytes before the bytes its writer reported")
        left -= len(data)
        yield data
