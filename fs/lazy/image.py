"""Resolve an image reference to its layers: REF -> manifest (via the host platform) -> config -> layers.

Only the manifest, (index,) and config are fetched here; every one is verified by digest (the registry
client checks manifests fetched by digest and blobs, and a tag-resolved manifest is then addressed by its
own digest). With a manifest digest (what containerd hands the snapshotter) the manifest is fetched by it:
one request. Documents are parsed by :mod:`fs.registry.manifests` (the model the converter uses too); layer
descriptors carry the annotations that vouch for each TOC, and the config's DiffIDs. :func:`resolve_image`
is :func:`resolve_manifest` then :func:`with_config`; a host runs the second beside its TOC fetches.

``oci:DIR[:TAG]`` references are served by :class:`fs.registry.endpoint.LayoutReader`,
the registry client's read methods over a local OCI image layout (so a layout can be mounted without a
registry).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fs.errors import FormatError, NotFoundError, VerificationError
from fs.lazy.layer import LayerDescriptor
from fs.registry import ImageReference
from fs.registry.endpoint import open_endpoint
from fs.registry.manifests import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    config_diff_ids,
    host_platform,
    parse_manifest_or_index,
    platform_matches,
)

__all__ = ["ResolvedImage", "open_image_client", "resolve_image", "resolve_manifest", "with_config"]


@dataclass(frozen=True)
class ResolvedImage:
    """An image ready to mount: its repository, manifest digest and layers bottom-first."""

    reference: str
    repository: str
    manifest_digest: str
    layers: tuple[LayerDescriptor, ...]
    config: dict[str, Any]


@contextlib.asynccontextmanager
async def open_image_client(
    ref: ImageReference, *, plain_http: bool | None = None, timeout: float = 30.0
) -> AsyncIterator[Any]:
    """The blob source serving ``ref``: a registry client (docker) or a :class:`LayoutReader` (oci)."""
    async with open_endpoint(ref, plain_http=plain_http, timeout=timeout) as endpoint:
        yield endpoint.source


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
    reference = descriptor.digest if descriptor else (digest or ref.reference)
    data, media_type, got = await client.get_manifest(ref.repository, reference)
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
    manifest, digest = await resolve_manifest(client, ref, want=want, manifest_digest=manifest_digest)
    return await with_config(client, ref, manifest, digest)


async def resolve_manifest(
    client: Any, ref: ImageReference, *, want: str | None = None, manifest_digest: str | None = None
) -> tuple[ImageManifest, str]:
    """The first half of :func:`resolve_image`: the verified manifest for this platform and its digest.
    Its layer descriptors are enough to open lazy layers (their TOCs are vouched for by its annotations),
    so the config can be fetched meanwhile."""
    doc, digest = await _manifest(client, ref, None, manifest_digest)
    if isinstance(doc, ImageIndex):
        doc, digest = await _manifest(client, ref, _pick_platform(doc, want))
        if isinstance(doc, ImageIndex):
            raise FormatError(f"the manifest {digest} chosen for this platform is an index again")
    return doc, digest


async def with_config(client: Any, ref: ImageReference, doc: ImageManifest, digest: str) -> ResolvedImage:
    """The second half of :func:`resolve_image`: fetch and verify the config of manifest ``doc``."""
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
