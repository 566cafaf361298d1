"""Where images live: a repository in a registry or an OCI layout directory, behind one interface.

Two layers:

- a *blob source* has the registry client's read methods, keyed by ``(repository, digest)``:
  :class:`~fs.registry.client.RegistryClient` is one, :class:`LayoutReader` is the same over a local OCI
  layout (the repository argument is ignored). The lazy mount reads through one of these.
- an :class:`Endpoint` is bound to one :class:`~fs.registry.reference.ImageReference`: the same reads without
  the repository argument, plus what the converter needs (fetch a blob into a file, push blobs and
  manifests). :func:`open_endpoint` opens either kind from a reference.

Every byte a digest vouches for is verified before it is returned (through :mod:`fs.digest`): manifests
and small blobs when read, streams at their end, fetched files before :meth:`Endpoint.fetch_blob` returns.
Byte ranges cannot be verified here; the caller checks them against the TOC.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import trio

from fs.digest import Hasher, sha256_digest
from fs.errors import NotFoundError, RegistryError, VerificationError

from . import media
from .client import MAX_SMALL_BLOB, Manifest, RegistryClient, open_registry_client
from .oci_layout import OciLayout
from .ranges import ByteRange, validate_ranges
from .reference import ImageReference
from .stream_upload import GrowingBlob, mount_blob, push_growing_blob

__all__ = ["Endpoint", "LayoutEndpoint", "LayoutReader", "ProgressFn", "RegistryEndpoint", "open_endpoint"]

ProgressFn = Callable[[int], None]
_PIECE = 1 << 20


def _layout_media_type(data: bytes, declared: str | None) -> str:
    """A layout has no Content-Type: the body's own ``mediaType``, else the descriptor's, else a guess."""
    with contextlib.suppress(ValueError, UnicodeDecodeError, AttributeError):
        doc = json.loads(data)
        media_type = doc.get("mediaType")
        if isinstance(media_type, str):
            return media_type
        if not declared:
            return media.OCI_INDEX if "manifests" in doc else media.OCI_MANIFEST
    return declared or media.OCI_MANIFEST


class LayoutReader:
    """The registry client's read methods over an OCI layout directory (for ``oci:`` references).

    Raises (from the methods): :class:`NotFoundError` for a missing blob or tag, :class:`VerificationError`
    when a blob does not hash to its name.
    """

    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout

    def __repr__(self) -> str:
        return f"LayoutReader({str(self.layout.path)!r})"

    async def get_manifest(self, repo: str, reference: str | None, **_: Any) -> Manifest:
        """A manifest or index by digest, by tag (``org.opencontainers.image.ref.name``), ``@N`` (the N-th
        entry of ``index.json``) or ``None`` (the only image in the layout)."""
        declared: str | None = None
        if reference is not None and reference.startswith("sha256:"):
            digest = reference
        else:
            descriptor = await trio.to_thread.run_sync(self.layout.resolve, reference)
            digest, declared = descriptor["digest"], descriptor.get("mediaType")
        data = await self.get_blob(repo, digest, max_size=MAX_SMALL_BLOB)
        return Manifest(data, _layout_media_type(data, declared), digest)

    async def get_blob(self, repo: str, digest: str, *, max_size: int = MAX_SMALL_BLOB) -> bytes:
        """A whole small blob, verified against ``digest``."""
        return await trio.to_thread.run_sync(self.layout.read_blob, digest)  # verified by fs.digest

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """The blob's size, or ``None`` when the layout does not have it."""
        try:
            return await trio.to_thread.run_sync(self.layout.blob_size, digest)
        except NotFoundError:
            return None

    async def get_ranges(self, repo: str, digest: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Byte ranges ``[(start, end_exclusive), …]`` of a blob, in the order given (not verified).

        Raises:
            ValueError: an empty or negative range.
            RegistryError: a range beyond the blob (status 416, as a registry answers).
        """
        validate_ranges(ranges)

        def read() -> list[bytes]:
            out = []
            with self.layout.open_blob(digest) as blob:
                size = os.fstat(blob.fileno()).st_size
                beyond = [rng for rng in ranges if rng[1] > size]
                if beyond:
                    raise RegistryError(
                        f"blob {digest} in {self.layout.path}: bytes {beyond[0]} are beyond its {size} bytes",
                        status=416,
                    )
                for start, end in ranges:
                    blob.seek(start)
                    out.append(blob.read(end - start))
            return out

        return await trio.to_thread.run_sync(read)

    async def get_tail(self, repo: str, digest: str, n: int, size: int | None = None) -> bytes:
        """The last ``n`` bytes of a blob (fewer if it is shorter)."""
        if size is None:
            size = await trio.to_thread.run_sync(self.layout.blob_size, digest)
        if not size:
            return b""
        return (await self.get_ranges(repo, digest, [(max(0, size - n), size)]))[0]

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, repo: str, digest: str, *, verify: bool = True, chunk_size: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a whole blob; with ``verify`` the iterator raises :class:`VerificationError` instead of
        finishing when the bytes do not hash to ``digest``."""
        piece = chunk_size or _PIECE

        async def chunks() -> AsyncIterator[bytes]:
            hasher = Hasher()
            blob = await trio.to_thread.run_sync(self.layout.open_blob, digest)
            try:
                while data := await trio.to_thread.run_sync(blob.read, piece):
                    hasher.update(data)
                    yield data
            finally:
                blob.close()
            if verify and hasher.digest() != digest:
                raise VerificationError(f"blob {digest} in {self.layout.path} hashes to {hasher.digest()}")

        iterator = chunks()
        try:
            yield iterator
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]


BlobSource = RegistryClient | LayoutReader


class Endpoint(abc.ABC):
    """One image location (a registry repository or an OCI layout directory).

    Attributes:
        ref: the reference it was opened for.
        source: the blob source behind it (what the lazy mount reads through).
    """

    ref: ImageReference
    source: BlobSource
    #: what ``get_manifest(None)`` asks for when the reference names neither tag nor digest
    default_reference: str | None = None

    @property
    def repository(self) -> str:
        return self.ref.repository

    # -- reads ------------------------------------------------------------------------------------
    async def get_manifest(self, reference: str | None = None) -> Manifest:
        """A manifest or index by tag or digest (verified); ``None`` = the reference's own (its digest or
        tag; for a layout without a tag, its only image)."""
        wanted = reference or self.ref.reference or self.default_reference
        return await self.source.get_manifest(self.repository, wanted)  # type: ignore[arg-type]

    async def get_blob(self, digest: str) -> bytes:
        """A small blob (a config, a TOC), verified against ``digest``."""
        return await self.source.get_blob(self.repository, digest)

    async def blob_size(self, digest: str) -> int | None:
        """The blob's size, or ``None`` when it is not here."""
        return await self.source.blob_size(self.repository, digest)

    async def has_blob(self, digest: str) -> bool:
        """True if the blob already exists here."""
        return await self.blob_size(digest) is not None

    async def get_ranges(self, digest: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Byte ranges of a blob, in the order given (not verified)."""
        return await self.source.get_ranges(self.repository, digest, ranges)

    def stream_blob(
        self, digest: str, *, verify: bool = True, chunk_size: int | None = None
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """``async with endpoint.stream_blob(d) as chunks: async for b in chunks`` (verified at the end)."""
        return self.source.stream_blob(self.repository, digest, verify=verify, chunk_size=chunk_size)

    async def fetch_blob(
        self, digest: str, size: int, dest: Path, progress: ProgressFn | None = None, *, sync: bool = True
    ) -> None:
        """Stream a blob into the file ``dest`` (fsynced unless ``sync`` is False); :class:`VerificationError`
        if it does not hash to ``digest`` or is not ``size`` bytes long. ``progress(n)`` is called once
        ``n`` more bytes are in the file (readable through another descriptor), in blocks of a few MiB."""
        hasher = Hasher()
        pending: list[bytes] = []
        pending_size = 0

        async def write_pending() -> None:
            block = b"".join(pending)
            pending.clear()
            await trio.to_thread.run_sync(_hash_and_write, hasher, out.wrapped, block)
            if progress and block:
                progress(len(block))

        async with await trio.open_file(dest, "wb") as out:
            async with self.stream_blob(digest, verify=False) as chunks:
                async for chunk in chunks:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_BLOCK:
                        await write_pending()
                        pending_size = 0
            await write_pending()
            await out.flush()
            if sync:
                await trio.to_thread.run_sync(os.fsync, out.fileno())
        _check(digest, size, hasher, f"blob from {self.ref}")

    def local_blob_path(self, digest: str) -> Path | None:
        """A readable local file holding the blob, if the endpoint is on this machine."""
        return None

    # -- writes -----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        """Store a blob from the file ``path`` (skipped if it already exists), verified on the way."""

    @abc.abstractmethod
    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        """Store a manifest/index under ``reference`` (a tag; ``None``: by digest only); its digest."""


#: A download is hashed and written in blocks this big, one worker-thread hop each: a hop per received
#: piece (~64 KiB) cost a 268 MB layer 5.8 s next to a running conversion, waiting for the GIL each time.
_WRITE_BLOCK = 4 << 20


def _hash_and_write(hasher: Hasher, out: BinaryIO, block: bytes) -> None:
    hasher.update(block)
    out.write(block)
    out.flush()  # in the file before progress reports it: a reader may follow the download


def _check(digest: str, size: int, hasher: Hasher, what: str) -> None:
    if hasher.digest() != digest:
        raise VerificationError(f"{what} hashes to {hasher.digest()}, expected {digest}")
    if hasher.size != size:
        raise VerificationError(f"{what} is {hasher.size} bytes, expected {size}")


class RegistryEndpoint(Endpoint):
    """A repository in a distribution registry."""

    source: RegistryClient
    default_reference = "latest"

    def __init__(self, ref: ImageReference, client: RegistryClient) -> None:
        self.ref = ref
        self.source = client
        #: blobs known to exist in this registry under another repository: pushes try a cheap
        #: cross-repository mount from there first
        self.mount_sources: dict[str, str] = {}

    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        await self.source.push_blob(
            self.repository,
            digest,
            size,
            lambda: open(path, "rb"),  # noqa: SIM115 - the client closes it
            mount_from=self.mount_sources.get(digest),
        )

    async def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Cross-repository mount from ``from_repository`` of this registry; False if it did not happen."""
        return await mount_blob(self.source, self.repository, digest, from_repository)

    async def push_growing(self, blob: GrowingBlob) -> tuple[str, int]:
        """Upload ``blob`` while its writer produces it (see :mod:`fs.registry.stream_upload`)."""
        return await push_growing_blob(self.source, self.repository, blob)

    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        target = reference or sha256_digest(data)
        return await self.source.put_manifest(self.repository, target, data, media_type)


class LayoutEndpoint(Endpoint):
    """An OCI image layout directory (``oci:DIR[:TAG]``)."""

    def __init__(self, ref: ImageReference, layout: OciLayout) -> None:
        self.ref = ref
        self.layout = layout
        self.source = LayoutReader(layout)

    async def fetch_blob(
        self, digest: str, size: int, dest: Path, progress: ProgressFn | None = None, *, sync: bool = True
    ) -> None:
        def copy() -> None:  # one worker thread for the whole copy, not one hop per piece
            hasher = Hasher()
            with self.layout.open_blob(digest) as src, open(dest, "wb") as out:
                while block := src.read(_PIECE):
                    _hash_and_write(hasher, out, block)
                    if progress:
                        progress(len(block))
                if sync:
                    os.fsync(out.fileno())
            _check(digest, size, hasher, f"blob in {self.ref}")

        await trio.to_thread.run_sync(copy)

    def local_blob_path(self, digest: str) -> Path | None:
        path = self.layout.blob_path(digest)
        return path if path.exists() else None

    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        if await self.has_blob(digest):
            return
        await trio.to_thread.run_sync(self.layout.write_blob_from_file, path, digest)

    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        digest = await trio.to_thread.run_sync(self.layout.write_blob, data)
        if reference and not reference.startswith("sha256:"):
            descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
            await trio.to_thread.run_sync(self.layout.set_tag, reference, descriptor)
        return digest


@contextlib.asynccontextmanager
async def open_endpoint(
    ref: ImageReference, *, plain_http: bool | None = None, timeout: float = 30.0, **client_options: Any
) -> AsyncIterator[Endpoint]:
    """Open the endpoint named by ``ref``; a registry's connections are closed on exit.

    ``client_options`` go to :func:`~fs.registry.client.open_registry_client` (credentials, retries, …).
    """
    if ref.transport == "oci":
        assert ref.path is not None
        yield LayoutEndpoint(ref, OciLayout(ref.path))
        return
    async with open_registry_client(
        ref.registry, plain_http=plain_http, timeout=timeout, **client_options
    ) as client:
        yield RegistryEndpoint(ref, client)
