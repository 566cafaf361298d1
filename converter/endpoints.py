"""Where images come from and go to: a registry repository or an OCI layout, behind one interface.

The converter talks to an :class:`Endpoint` and never cares which transport is behind it. Blobs are always
moved as files (streamed, digest-verified): a layer is never held in memory.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from fs.errors import VerificationError
from fs.registry import ImageReference, OciLayout, RegistryClient, open_registry_client
from fs.registry.manifests import parse_manifest_or_index
from fs.registry.stream_upload import GrowingBlob, mount_blob, push_growing_blob

__all__ = ["Endpoint", "LayoutEndpoint", "RegistryEndpoint", "open_endpoint"]

ProgressFn = Callable[[int], None]


class Endpoint(abc.ABC):
    """One image location (registry repository or OCI layout directory)."""

    ref: ImageReference

    @abc.abstractmethod
    async def get_manifest(self, reference: str | None) -> tuple[bytes, str, str]:
        """Return ``(bytes, media_type, digest)`` of a manifest or index by tag or digest.

        ``None`` means the default: tag ``latest`` in a registry, the only image of an OCI layout.
        """

    @abc.abstractmethod
    async def get_blob(self, digest: str) -> bytes:
        """Return a small blob (a config), verified against ``digest``."""

    @abc.abstractmethod
    async def fetch_blob(self, digest: str, size: int, dest: Path, progress: ProgressFn | None) -> None:
        """Stream a blob into ``dest``; raise :class:`VerificationError` if it does not hash to ``digest``."""

    def local_blob_path(self, digest: str) -> Path | None:
        """A readable local file holding the blob, if the endpoint is on this machine."""
        return None

    @abc.abstractmethod
    async def has_blob(self, digest: str) -> bool:
        """True if the blob already exists at this endpoint."""

    @abc.abstractmethod
    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        """Upload a blob from ``path`` (skipped if it already exists)."""

    @abc.abstractmethod
    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        """Store a manifest/index under ``reference`` (tag; None = by digest only); return its digest."""


class RegistryEndpoint(Endpoint):
    """A repository in a distribution registry."""

    def __init__(self, ref: ImageReference, client: RegistryClient) -> None:
        self.ref = ref
        self._client = client
        # Blobs known to exist in this registry under another repository: pushes try a cheap
        # cross-repository mount from there first.
        self.mount_sources: dict[str, str] = {}

    async def get_manifest(self, reference: str | None) -> tuple[bytes, str, str]:
        manifest = await self._client.get_manifest(self.ref.repository, reference or "latest")
        return manifest.data, manifest.media_type, manifest.digest

    async def get_blob(self, digest: str) -> bytes:
        return await self._client.get_blob(self.ref.repository, digest)

    async def fetch_blob(self, digest: str, size: int, dest: Path, progress: ProgressFn | None) -> None:
        hasher = hashlib.sha256()
        async with await trio.open_file(dest, "wb") as out:
            async with self._client.stream_blob(self.ref.repository, digest) as chunks:
                async for chunk in chunks:
                    hasher.update(chunk)
                    await out.write(chunk)
                    if progress:
                        progress(len(chunk))
            await out.flush()
            await trio.to_thread.run_sync(os.fsync, out.fileno())
        _check(digest, "sha256:" + hasher.hexdigest(), f"blob from {self.ref}")

    async def has_blob(self, digest: str) -> bool:
        return await self._client.blob_size(self.ref.repository, digest) is not None

    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        await self._client.push_blob(
            self.ref.repository,
            digest,
            size,
            lambda: open(path, "rb"),  # noqa: SIM115 - the client closes it
            mount_from=self.mount_sources.get(digest),
        )

    async def mount_blob(self, digest: str, from_repository: str) -> bool:
        """Cross-repository mount from ``from_repository`` of this registry; False if it did not happen."""
        return await mount_blob(self._client, self.ref.repository, digest, from_repository)

    async def push_growing(self, blob: GrowingBlob) -> tuple[str, int]:
        """Upload ``blob`` while its writer produces it (see :mod:`fs.registry.stream_upload`)."""
        return await push_growing_blob(self._client, self.ref.repository, blob)

    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        target = reference or "sha256:" + hashlib.sha256(data).hexdigest()
        return await self._client.put_manifest(self.ref.repository, target, data, media_type)


class LayoutEndpoint(Endpoint):
    """An OCI image layout directory (``oci:DIR[:TAG]``)."""

    def __init__(self, ref: ImageReference, layout: OciLayout) -> None:
        self.ref = ref
        self._layout = layout

    async def get_manifest(self, reference: str | None) -> tuple[bytes, str, str]:
        if reference is not None and reference.startswith("sha256:"):
            data = await trio.to_thread.run_sync(self._layout.read_blob, reference)
            media_type = None
            digest = reference
        else:
            desc = await trio.to_thread.run_sync(self._layout.resolve, reference)
            data = await trio.to_thread.run_sync(self._layout.read_blob, desc["digest"])
            media_type, digest = desc.get("mediaType"), desc["digest"]
        parsed = parse_manifest_or_index(data, media_type)
        return data, parsed.media_type, digest

    async def get_blob(self, digest: str) -> bytes:
        return await trio.to_thread.run_sync(self._layout.read_blob, digest)

    async def fetch_blob(self, digest: str, size: int, dest: Path, progress: ProgressFn | None) -> None:
        def copy() -> None:
            hasher = hashlib.sha256()
            with self._layout.open_blob(digest) as src, open(dest, "wb") as out:
                while block := src.read(1 << 20):
                    hasher.update(block)
                    out.write(block)
                    if progress:
                        progress(len(block))
                out.flush()
                os.fsync(out.fileno())
            _check(digest, "sha256:" + hasher.hexdigest(), f"blob in {self.ref}")

        await trio.to_thread.run_sync(copy)

    def local_blob_path(self, digest: str) -> Path | None:
        path = self._layout.blob_path(digest)
        return path if path.exists() else None

    async def has_blob(self, digest: str) -> bool:
        return await trio.to_thread.run_sync(self._layout.has_blob, digest)

    async def push_blob(self, digest: str, size: int, path: Path) -> None:
        if await self.has_blob(digest):
            return
        await trio.to_thread.run_sync(self._layout.write_blob_from_file, path, digest)

    async def push_manifest(self, reference: str | None, data: bytes, media_type: str) -> str:
        digest = await trio.to_thread.run_sync(self._layout.write_blob, data)
        if reference and not reference.startswith("sha256:"):
            descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
            await trio.to_thread.run_sync(self._layout.set_tag, reference, descriptor)
        return digest


def _check(expected: str, actual: str, what: str) -> None:
    if expected != actual:
        raise VerificationError(f"{what} hashes to {actual}, expected {expected}")


@contextlib.asynccontextmanager
async def open_endpoint(ref: ImageReference, *, plain_http: bool | None = None) -> AsyncIterator[Endpoint]:
    """Open the endpoint named by ``ref``; closes its connections on exit."""
    if ref.transport == "oci":
        layout = OciLayout(Path(ref.path))
        yield LayoutEndpoint(ref, layout)
        return
    async with open_registry_client(ref.registry, plain_http=plain_http) as client:
        yield RegistryEndpoint(ref, client)
