"""Resolve an image reference to its layers: REF -> manifest (via the host platform) -> config -> layers.

Only the manifest, (index,) and config are fetched here; every one is verified by digest (the registry
client checks manifests fetched by digest and blobs, and a tag-resolved manifest is then addressed by its
own digest). With a manifest digest (what containerd hands the snapshotter) the manifest is fetched by it:
one request. Documents are parsed by :mod:`fs.registry.manifests` (the model the converter uses too); layer
descriptors carry the annotations that vouch for each TOC, and the config's DiffIDs.

``oci:DIR[:TAG]`` references are served by :class:`LayoutClient`, a tiny stand-in with the registry client's
read methods over a local OCI image layout (so a layout can be mounted without a registry).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from fs.errors import FormatError, NotFoundError, VerificationError
from fs.lazy.layer import LayerDescriptor
from fs.registry import ImageReference, OciLayout, open_registry_client
from fs.registry.manifests import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    config_diff_ids,
    host_platform,
    parse_manifest_or_index,
    platform_matches,
)

__all__ = ["LayoutClient", "ResolvedImage", "open_image_client", "resolve_image"]


@dataclass(frozen=True)
class ResolvedImage:
    """An image ready to mount: its repository, manifest digest and layers bottom-first."""

    reference: str
    repository: str
    manifest_digest: str
    layers: tuple[LayerDescriptor, ...]
    config: dict[str, Any]


class LayoutClient:
    """Read side of the registry client over an OCI layout directory (for ``oci:`` references)."""

    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout

    async def get_manifest_by_descriptor(self, descriptor: dict[str, Any]) -> tuple[bytes, str, str]:
        digest = descriptor["digest"]
        data = await trio.to_thread.run_sync(self.layout.read_blob, digest)
        return data, descriptor.get("mediaType", ""), digest

    async def get_blob(self, repo: str, digest: str, **_: Any) -> bytes:
        return await trio.to_thread.run_sync(self.layout.read_blob, digest)

    async def get_ranges(self, repo: str, digest: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        def read() -> list[bytes]:
            out = []
            with self.layout.open_blob(digest) as f:
                for start, end in ranges:
                    f.seek(start)
                    out.append(f.read(end - start))
            return out

        return await trio.to_thread.run_sync(read)

    async def get_tail(self, repo: str, digest: str, n: int, size: int | None = None) -> bytes:
        size = size if size is not None else self.layout.blob_size(digest)
        return (await self.get_ranges(repo, digest, [(max(0, size - n), size)]))[0]

    @contextlib.asynccontextmanager
    async def stream_blob(self, repo: str, digest: str, **_: Any) -> AsyncIterator[AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            h = hashlib.sha256()
            f = self.layout.open_blob(digest)
            try:
                while piece := await trio.to_thread.run_sync(f.read, 1 << 20):
                    h.update(piece)
                    yield piece
            finally:
                f.close()
            if "sha256:" + h.hexdigest() != digest:
                raise VerificationError(f"blob {digest} in {self.layout.path} does not hash to its name")

        it = chunks()
        try:
            yield it
        finally:
            await it.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def open_image_client(
    ref: ImageReference, *, plain_http: bool | None = None, timeout: float = 30.0
) -> AsyncIterator[Any]:
    """The client serving ``ref``: a registry client (docker) or a :class:`LayoutClient` (oci)."""
    if ref.transport == "oci":
        assert ref.path is not None
        yield LayoutClient(OciLayout(ref.path))
        return
    async with open_registry_client(ref.registry, plain_http=plain_http, timeout=timeout) as client:
        yield client


def _pick_platform(index: ImageIndex, want: str | None) -> Descriptor:
    """The index entry for ``want`` (``os/arch[/variant]``; None = this host)."""
    for entry in index.manifests:
        if platform_matches(entry, want):
            return entry
    plat = want or "/".join(host_platform().values())
    raise NotFoundError(f"the image index has no manifest for {plat}")


async def _manifest(
    client: Any, ref: ImageReference, descriptor: Descriptor | None, digest: str | None = None
) -> tuple[ImageManifest | ImageIndex, str]:
    """(parsed manifest or index, digest) of what ``descriptor`` (or ``digest``) names, else of ``ref``."""
    if isinstance(client, LayoutClient):
        if descriptor is not None:
            desc_json = descriptor.to_json()
        elif digest is not None:
            desc_json = {"digest": digest}
        else:
            desc_json = await trio.to_thread.run_sync(client.layout.resolve, ref.tag)
        data, media_type, got = await client.get_manifest_by_descriptor(desc_json)
    else:
        reference = descriptor.digest if descriptor else (digest or ref.digest or ref.tag or "latest")
        m = await client.get_manifest(ref.repository, reference)
        data, media_type, got = m.data, m.media_type, m.digest
    if digest is not None and descriptor is None and got != digest:
        raise VerificationError(f"manifest is {got}, not the requested {digest}")
    try:
        return parse_manifest_or_index(data, media_type or None), got
    except FormatError as exc:
        raise FormatError(f"manifest {got}: {exc}") from None


async def resolve_image(
    client: Any, ref: ImageReference, *, want: str | None = None, manifest_digest: str | None = None
) -> ResolvedImage:
    """Fetch and verify the manifest (choosing this host's platform from an index) and config.

    With ``manifest_digest`` the manifest is fetched by that digest (one request, verified), whatever
    tag ``ref`` names.

    Raises:
        NotFoundError: no such image / no manifest for this platform.
        FormatError: malformed manifest or config, or DiffIDs not matching the layers.
        VerificationError, RegistryError: from the client.
    """
    doc, digest = await _manifest(client, ref, None, manifest_digest)
    if isinstance(doc, ImageIndex):
        doc, digest = await _manifest(client, ref, _pick_platform(doc, want))
    config_bytes = await client.get_blob(ref.repository, doc.config.digest)
    try:
        config = json.loads(config_bytes)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise FormatError(f"config {doc.config.digest} of manifest {digest} is malformed: {exc}") from None
    rootfs = config.get("rootfs")
    diff_ids = config_diff_ids(config_bytes) if isinstance(rootfs, dict) and rootfs.get("diff_ids") else []
    if diff_ids and len(diff_ids) != len(doc.layers):
        raise FormatError(f"config lists {len(diff_ids)} diff_ids for {len(doc.layers)} layers")
    layers = tuple(
        LayerDescriptor.from_descriptor(d, diff_id=diff_ids[i] if diff_ids else None)
        for i, d in enumerate(doc.layers)
    )
    return ResolvedImage(str(ref), ref.repository, digest, layers, config)
