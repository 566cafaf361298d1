"""Image manifests and indexes as data: parse, choose a platform (no I/O).

The converter (which rewrites manifests) and the lazy mount (which reads them) share this model, so both
accept and reject exactly the same documents. Unknown descriptor fields are kept in ``extra`` and written
back unchanged.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any

from fs.digest import parse_digest
from fs.errors import FormatError

from .media import DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST

__all__ = [
    "Descriptor",
    "ImageIndex",
    "ImageManifest",
    "config_diff_ids",
    "host_platform",
    "load_json",
    "parse_manifest_or_index",
    "platform_matches",
    "string_map",
]


_MAX_SIZE = (1 << 63) - 1


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


def string_map(value: Any, where: str) -> dict[str, str]:
    """An annotations-like object (absent/null = empty) as a dict of strings.

    Raises:
        FormatError: not an object, or a value that is not a string.
    """
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{where} is not an object of strings")
    return dict(value)


def load_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` with every failure (bad JSON, bad UTF-8, nesting too deep) as one FormatError."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise FormatError(f"{what} JSON nests too deeply") from None


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
        if not isinstance(media_type, str) or not _is_size(size):
            raise FormatError(f"{where}: descriptor has a bad mediaType or size")
        try:
            parse_digest(digest)
        except FormatError as exc:
            raise FormatError(f"{where}: {exc.message}") from None
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise FormatError(f"{where}: descriptor platform is not an object")
        known = {"mediaType", "digest", "size", "annotations", "platform"}
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            annotations=string_map(obj.get("annotations"), f"{where}: annotations"),
            platform=platform,
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
    """Parse manifest or index JSON; the body's own ``mediaType`` (covered by the digest) wins over
    ``media_type`` (the Content-Type, or the descriptor that pointed here), which is used when the body has
    none.

    Raises:
        FormatError: not JSON, not an object, schema1, or missing required fields.
    """
    obj = load_json(data, "manifest")
    if not isinstance(obj, dict):
        raise FormatError("manifest is not a JSON object")
    kind = obj.get("mediaType") or media_type
    if kind is not None and not isinstance(kind, str):
        raise FormatError(f"manifest mediaType is not a string: {kind!r}")
    if kind is None:
        kind = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if obj.get("schemaVersion") == 1:
        raise FormatError("Docker schema1 manifests are not supported")
    annotations = string_map(obj.get("annotations"), "manifest annotations")
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


def config_diff_ids(config: bytes) -> list[str]:
    """The ``rootfs.diff_ids`` of an image config.

    Raises:
        FormatError: not JSON, or no list of digest strings there.
    """
    try:
        diff_ids = load_json(config, "image config")["rootfs"]["diff_ids"]
    except (KeyError, TypeError) as exc:
        raise FormatError(f"image config has no rootfs.diff_ids: {exc!r}") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise FormatError("image config rootfs.diff_ids is not a list of digests")
    return diff_ids
