"""What the converter does with manifests: classify layers, write converted manifests (no I/O).

A conversion never edits a manifest in place: it parses the source with :mod:`fs.registry.manifests`,
decides per layer what to do (:func:`layer_action`), and serialises a new OCI manifest from the converted
descriptors (:func:`converted_manifest`). Docker schema2 manifests become OCI manifests because
zstd:chunked needs layer annotations, which Docker's schema has no place for.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from fs.registry.manifests import Descriptor, ImageIndex, ImageManifest
from fs.registry.media import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

__all__ = [
    "Compression",
    "LayerAction",
    "converted_index",
    "converted_manifest",
    "is_foreign",
    "layer_action",
]

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
_NONDISTRIBUTABLE_PREFIX = "application/vnd.oci.image.layer.nondistributable."


class Compression(enum.Enum):
    """How a source layer blob is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class LayerAction(enum.Enum):
    """What the converter does with one layer descriptor."""

    CONVERT = "convert"  # decompress and write zstd:chunked
    COPY = "copy"  # foreign / non-distributable / unknown: carry over untouched


_LAYER_COMPRESSION = {
    OCI_LAYER: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_GZIP: Compression.GZIP,
    DOCKER_LAYER_ZSTD: Compression.ZSTD,
}


def is_foreign(layer: Descriptor) -> bool:
    """True for non-distributable / foreign layers: registries need not hold their blobs."""
    return (
        layer.media_type.startswith(_NONDISTRIBUTABLE_PREFIX)
        or layer.media_type == DOCKER_FOREIGN_LAYER
        or bool(layer.extra.get("urls"))
    )


def layer_action(layer: Descriptor) -> tuple[LayerAction, Compression | None]:
    """Decide what to do with a layer: convert (with its source compression) or copy untouched."""
    if is_foreign(layer):
        return LayerAction.COPY, None
    compression = _LAYER_COMPRESSION.get(layer.media_type)
    if compression is None:
        return LayerAction.COPY, None
    return LayerAction.CONVERT, compression


def converted_manifest(
    source: ImageManifest, config: Descriptor, layers: list[Descriptor]
) -> tuple[bytes, str]:
    """Serialise the OCI manifest of a converted image.

    Returns:
        (JSON bytes, media type). Docker media types of config and copied layers become their OCI
        equivalents; the config *bytes* are unchanged unless the caller passes a rewritten descriptor.
    """
    config_type = OCI_CONFIG if config.media_type == DOCKER_CONFIG else config.media_type
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": Descriptor(config_type, config.digest, config.size, config.annotations).to_json(),
        "layers": [_oci_layer(x).to_json() for x in layers],
    }
    if source.annotations:
        obj["annotations"] = source.annotations
    return json.dumps(obj, separators=(",", ":")).encode(), OCI_MANIFEST


def converted_index(source: ImageIndex, manifests: list[Descriptor]) -> tuple[bytes, str]:
    """Serialise the OCI index listing the converted per-platform manifests."""
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    if source.annotations:
        obj["annotations"] = source.annotations
    return json.dumps(obj, separators=(",", ":")).encode(), OCI_INDEX


_DOCKER_TO_OCI_LAYER = {
    DOCKER_LAYER_TAR: OCI_LAYER,
    DOCKER_LAYER_GZIP: OCI_LAYER_GZIP,
    DOCKER_LAYER_ZSTD: OCI_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
}


def _oci_layer(layer: Descriptor) -> Descriptor:
    media_type = _DOCKER_TO_OCI_LAYER.get(layer.media_type, layer.media_type)
    if media_type == layer.media_type:
        return layer
    return Descriptor(media_type, layer.digest, layer.size, layer.annotations, None, layer.extra)
