"""Resolve an image reference to its layers: REF -> manifest (via the host platform) -> config -> layers.

Only the manifest, (index,) and config are fetched here; every one is verified by digest (the registry
client checks manifests fetched by digest and blobs, and a tag-resolved manifest is then addressed by its
own digest). Layer descriptors carry the annotations that vouch for each TOC, and the config's DiffIDs.

``oci:DIR[:TAG]`` references are served by :class:`LayoutClient` (:class:`fs.registry.endpoint.LayoutReader`),
the registry client's read methods over a local OCI image layout (so a layout can be mounted without a
registry).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fs.errors import FormatError, NotFoundError
from fs.lazy.layer import LayerDescriptor
from fs.registry import INDEX_TYPES, ImageReference
from fs.registry.endpoint import LayoutReader as LayoutClient
from fs.registry.endpoint import open_endpoint
from fs.registry.manifests import Descriptor, host_platform, platform_matches

__all__ = ["LayoutClient", "ResolvedImage", "open_image_client", "resolve_image"]


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
    """The blob source serving ``ref``: a registry client (docker) or a :class:`LayoutClient` (oci)."""
    async with open_endpoint(ref, plain_http=plain_http, timeout=timeout) as endpoint:
        yield endpoint.source


def _pick_platform(index: dict[str, Any], want: str | None) -> dict[str, Any]:
    """The index entry for ``want`` (``os/arch[/variant]``; None = this host)."""
    for i, m in enumerate(index.get("manifests") or []):
        if platform_matches(Descriptor.from_json(m, where=f"index entry {i}"), want):
            return m
    plat = want or "/".join(host_platform().values())
    raise NotFoundError(f"the image index has no manifest for {plat}")


async def _manifest(
    client: Any, ref: ImageReference, descriptor: dict[str, Any] | None
) -> tuple[dict, str, str]:
    """(json, media type, digest) of the manifest ``descriptor`` names, or of the reference itself."""
    reference = descriptor["digest"] if descriptor else ref.reference
    data, media_type, digest = await client.get_manifest(ref.repository, reference)
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise FormatError(f"manifest {digest} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"manifest {digest} is not a JSON object")
    return doc, doc.get("mediaType") or media_type, digest


async def resolve_image(client: Any, ref: ImageReference, *, want: str | None = None) -> ResolvedImage:
    """Fetch and verify the manifest (choosing this host's platform from an index) and config.

    Raises:
        NotFoundError: no such image / no manifest for this platform.
        FormatError: malformed manifest or config, or DiffIDs not matching the layers.
        VerificationError, RegistryError: from the client.
    """
    doc, media_type, digest = await _manifest(client, ref, None)
    if media_type in INDEX_TYPES or "manifests" in doc:
        doc, media_type, digest = await _manifest(client, ref, _pick_platform(doc, want))
    try:
        config_desc = doc["config"]
        layer_docs = doc["layers"]
        config = json.loads(await client.get_blob(ref.repository, config_desc["digest"]))
        diff_ids = list(config.get("rootfs", {}).get("diff_ids") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"manifest {digest} or its config is malformed: {exc!r}") from exc
    if diff_ids and len(diff_ids) != len(layer_docs):
        raise FormatError(f"config lists {len(diff_ids)} diff_ids for {len(layer_docs)} layers")
    layers = []
    for i, ld in enumerate(layer_docs):
        try:
            layers.append(
                LayerDescriptor(
                    media_type=str(ld["mediaType"]),
                    digest=str(ld["digest"]),
                    size=int(ld["size"]),
                    annotations={str(k): str(v) for k, v in (ld.get("annotations") or {}).items()},
                    diff_id=diff_ids[i] if diff_ids else None,
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"layer {i} of manifest {digest} is malformed: {exc!r}") from exc
    return ResolvedImage(str(ref), ref.repository, digest, tuple(layers), config)
