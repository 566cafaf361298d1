"""Image manifests and indexes as the converter sees them: parse, classify layers, rewrite (no I/O).

A conversion never edits a manifest in place: it parses the source JSON into :class:`ImageManifest` /
:class:`ImageIndex`, decides per layer what to do (:func:`layer_action`), and serialises a new OCI
manifest from the converted descriptors (:func:`converted_manifest`). Docker schema2 manifests become OCI
manifests because zstd:chunked needs layer annotations, which Docker's schema has no place for.
"""

from __future__ import annotations

import enum
import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from fs.digest import parse_digest
from fs.errors import FormatError
from fs.registry.media import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
)

__all__ = [
    "Compression",
    "Descriptor",
    "ImageIndex",
    "ImageManifest",
    "LayerAction",
    "converted_index",
    "converted_manifest",
    "host_platform",
    "layer_action",
    "parse_manifest_or_index",
    "platform_matches",
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


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (the subset zsnap uses; unknown fields are kept in ``extra``)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise FormatError(f"{where}: descriptor is not an object")
        try:
            media_type, digest, size = obj["mediaType"], obj["digest"], obj["size"]
        except KeyError as exc:
            raise FormatError(f"{where}: descriptor lacks {exc.args[0]!r}") from None
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise FormatError(f"{where}: descriptor has a bad mediaType or size")
        parse_digest(digest)
        known = {"mediaType", "digest", "size", "annotations", "platform"}
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=dict(obj.get("annotations") or {}),
            platform=obj.get("platform"),
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        out.update(self.extra)
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.platform:
            out["platform"] = self.platform
        return out


@dataclass(frozen=True)
class ImageManifest:
    """A single-platform image manifest (OCI or Docker schema2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index (OCI index or Docker manifest list)."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)


def parse_manifest_or_index(data: bytes, media_type: str | None = None) -> ImageManifest | ImageIndex:
    """Parse manifest or index JSON; ``media_type`` (from Content-Type) wins over the body's own field.

    Raises:
        FormatError: not JSON, not an object, schema1, or missing required fields.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FormatError("manifest is not a JSON object")
    kind = obj.get("mediaType") or media_type
    if kind is None:
        kind = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if obj.get("schemaVersion") == 1:
        raise FormatError("Docker schema1 manifests are not supported")
    annotations = dict(obj.get("annotations") or {})
    if kind in (OCI_INDEX, DOCKER_MANIFEST_LIST):
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise FormatError("index has no 'manifests' list")
        return ImageIndex(
            media_type=kind,
            manifests=tuple(Descriptor.from_json(m, where=f"index entry {i}") for i, m in enumerate(entries)),
            annotations=annotations,
        )
    if kind not in (OCI_MANIFEST, DOCKER_MANIFEST_V2):
        raise FormatError(f"unsupported manifest media type {kind!r}")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise FormatError("manifest has no 'layers' list")
    return ImageManifest(
        media_type=kind,
        config=Descriptor.from_json(obj.get("config"), where="config"),
        layers=tuple(Descriptor.from_json(x, where=f"layer {i}") for i, x in enumerate(layers)),
        annotations=annotations,
    )


def layer_action(layer: Descriptor) -> tuple[LayerAction, Compression | None]:
    """Decide what to do with a layer: convert (with its source compression) or copy untouched."""
    if layer.media_type.startswith(_NONDISTRIBUTABLE_PREFIX) or layer.media_type == DOCKER_FOREIGN_LAYER:
        return LayerAction.COPY, None
    if layer.extra.get("urls"):
        return LayerAction.COPY, None  # foreign layer served from elsewhere
    compression = _LAYER_COMPRESSION.get(layer.media_type)
    if compression is None:
        return LayerAction.COPY, None
    return LayerAction.CONVERT, compression


def host_platform() -> dict[str, str]:
    """The platform of this machine in OCI terms (``{"os": "linux", "architecture": "amd64"}``)."""
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return {"os": "linux", "architecture": arch}


def platform_matches(entry: Descriptor, wanted: str | None) -> bool:
    """True if an index entry is for ``wanted`` (``os/arch[/variant]``; None = this host)."""
    plat = entry.platform or {}
    if wanted is None:
        host = host_platform()
        return plat.get("os") == host["os"] and plat.get("architecture") == host["architecture"]
    parts = wanted.split("/")
    if len(parts) < 2:
        raise FormatError(f"platform {wanted!r} is not os/arch[/variant]")
    if plat.get("os") != parts[0] or plat.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or plat.get("variant") == parts[2]


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
