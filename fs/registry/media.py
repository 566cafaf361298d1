"""Media type constants and the Accept headers built from them (pure data, no I/O)."""

from __future__ import annotations

__all__ = [
    "ALL_MANIFEST_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V2",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "accept_header",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: single-image manifests zsnap reads
MANIFEST_TYPES: tuple[str, ...] = (OCI_MANIFEST, DOCKER_MANIFEST_V2)
#: multi-platform indexes zsnap reads
INDEX_TYPES: tuple[str, ...] = (OCI_INDEX, DOCKER_MANIFEST_LIST)
#: everything ``get_manifest`` accepts by default (schema1 is deliberately absent)
ALL_MANIFEST_TYPES: tuple[str, ...] = MANIFEST_TYPES + INDEX_TYPES


def accept_header(media_types: str | tuple[str, ...] | list[str]) -> str:
    """Return an ``Accept`` header value listing ``media_types`` in order of preference."""
    if isinstance(media_types, str):
        return media_types
    return ", ".join(media_types)
