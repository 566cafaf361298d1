"""Which layers of an image can be served lazily, decided from its manifest alone (one or two small GETs).

The lazy host opens every layer of an image it attaches, and a layer it cannot read lazily (plain gzip or
zstd) is downloaded whole into the store first. When a Prepare then falls back to the normal path for such
a layer, containerd downloads it a second time. So before attaching, :func:`lazy_layers` reads the
manifest and keeps only the layers whose descriptors mark a zstd:chunked or eStargz TOC
(``fs.format.toc_location_from_annotations``, the host's own test); an image with none is never attached.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fs.errors import FormatError
from fs.format import toc_location_from_annotations
from fs.registry import ImageReference, open_registry_client
from fs.registry.auth import Credentials
from fs.registry.manifests import ImageIndex, parse_manifest_or_index, platform_matches

__all__ = ["lazy_layers"]


async def lazy_layers(
    image: str,
    manifest_digest: str | None,
    *,
    plain_http: bool | None = None,
    docker_config: Path | None = None,
    auth: Mapping[str, tuple[str, str]] | None = None,
    timeout: float = 30.0,
) -> set[str]:
    """The digests of ``image``'s layers (this host's platform) that carry a TOC the host can read lazily.

    Args:
        image: ``docker://HOST/REPO:TAG`` (or ``@DIGEST``).
        manifest_digest: fetch this manifest instead of resolving the reference (CRI labels carry it).

    Raises:
        RegistryError, FormatError: the manifest cannot be fetched or parsed.
    """
    ref = ImageReference.parse(image)
    login = (auth or {}).get(ref.registry)
    credentials = Credentials(*login) if login else None
    async with open_registry_client(
        ref.registry, plain_http=plain_http, timeout=timeout, docker_config=docker_config,
        credentials=credentials,
    ) as client:  # fmt: skip
        reference = manifest_digest or ref.reference
        if reference is None:  # an oci: layout reference may name neither; a registry needs one
            raise FormatError("the reference names no tag or digest", image=image)
        manifest = await client.get_manifest(ref.repository, reference)
        doc = parse_manifest_or_index(manifest.data, manifest.media_type)
        if isinstance(doc, ImageIndex):
            entry = next((m for m in doc.manifests if platform_matches(m, None)), None)
            if entry is None:
                raise FormatError("no manifest for this platform in the index", image=image)
            manifest = await client.get_manifest(ref.repository, entry.digest)
            doc = parse_manifest_or_index(manifest.data, manifest.media_type)
    if isinstance(doc, ImageIndex):
        raise FormatError("an index points at another index", image=image)
    lazy = set()
    for layer in doc.layers:
        try:
            location = toc_location_from_annotations(
                layer.annotations, layer.media_type, blob_size=layer.size
            )
        except FormatError:
            continue  # the host would refuse it too; the normal path can still unpack it
        if location is not None:
            lazy.add(layer.digest)
    return lazy
