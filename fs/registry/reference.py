"""Image references in skopeo's transport syntax (pure, no I/O).

Two transports are understood::

    docker://HOST[:PORT]/REPO[:TAG][@sha256:HEX]     a registry image (HOST may be ``[::1]``)
    oci:DIR[:IMAGE]                                   an OCI image layout directory

``docker://`` follows the Docker reference grammar (distribution/reference): a first path component
without ``.`` or ``:`` that is not ``localhost`` is not a host, so ``docker://busybox`` is
``docker.io/library/busybox:latest``; the tag defaults to ``latest`` unless a digest is given. A reference
without a transport prefix is read as ``docker://``.

``oci:`` follows containers/image on Linux: the path ends at the *first* colon (a path cannot contain
``:``), the rest is the image name (usually a tag, ``org.opencontainers.image.ref.name``), which may itself
contain ``:``, ``/`` or ``@``; ``@N`` selects the N-th manifest of ``index.json``.

``str(ref)`` gives the canonical form and ``ImageReference.parse(str(ref)) == ref``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from fs.errors import FormatError

__all__ = ["DEFAULT_REGISTRY", "ImageReference", "InvalidReference"]

DEFAULT_REGISTRY = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_HOST_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# containers/image oci/internal: annotation-spec image names
_OCI_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_OCI_IMAGE_RE = re.compile(rf"^{_OCI_COMPONENT}(?:/{_OCI_COMPONENT})*$")
_OCI_INDEX_RE = re.compile(r"^@[0-9]+$")
_OTHER_TRANSPORTS = {
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
}


class InvalidReference(FormatError, ValueError):
    """The string is not a valid image reference."""


@dataclasses.dataclass(frozen=True)
class ImageReference:
    """A parsed image reference.

    Attributes:
        transport: ``"docker"`` or ``"oci"``.
        registry: ``host[:port]`` (docker; ``docker.io`` for Docker Hub), ``""`` for oci.
        repository: ``library/busybox`` (docker), ``""`` for oci.
        tag: the tag (docker: ``latest`` by default unless a digest is given); for oci the image name or
            ``None`` when the layout is expected to hold exactly one image.
        digest: ``sha256:…`` or ``None``.
        path: the layout directory (oci only).
    """

    transport: str
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: Path | None = None

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Parse ``docker://…``, ``oci:…`` or a bare ``host/repo:tag``.

        Raises:
            InvalidReference: unknown transport or a malformed reference.
        """
        if text.startswith("oci:"):
            return cls._parse_oci(text[len("oci:") :], text)
        if text.startswith("docker://"):
            return cls._parse_docker(text[len("docker://") :], text)
        transport, sep, _ = text.partition(":")
        if sep and transport in _OTHER_TRANSPORTS:
            raise InvalidReference(f"unsupported transport {transport!r} in {text!r} (docker:// or oci:)")
        return cls._parse_docker(text, text)

    @classmethod
    def docker(
        cls, registry: str, repository: str, *, tag: str | None = None, digest: str | None = None
    ) -> ImageReference:
        """Build (and validate) a ``docker://`` reference from its parts."""
        text = f"{registry}/{repository}"
        if tag:
            text += f":{tag}"
        if digest:
            text += f"@{digest}"
        return cls._parse_docker(text, text)

    @classmethod
    def _parse_docker(cls, rest: str, original: str) -> ImageReference:
        if not rest:
            raise InvalidReference(f"empty image reference {original!r}")
        digest = None
        if "@" in rest:
            rest, digest = rest.rsplit("@", 1)
            if not _DIGEST_RE.fullmatch(digest):
                raise InvalidReference(f"invalid digest {digest!r} in {original!r} (sha256:<64 hex>)")
        name, tag = rest, None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG_RE.fullmatch(tag):
                raise InvalidReference(f"invalid tag {tag!r} in {original!r}")
        first, sep, remainder = name.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
            registry, repository = first, remainder
            if not _DOMAIN_RE.fullmatch(registry):
                raise InvalidReference(f"invalid registry host {registry!r} in {original!r}")
        else:
            registry, repository = DEFAULT_REGISTRY, name
        if registry in _DOCKER_HUB_ALIASES:
            registry = DEFAULT_REGISTRY
            if "/" not in repository:
                repository = f"library/{repository}"
        if len(repository) > 255 or not all(_PATH_COMPONENT_RE.fullmatch(c) for c in repository.split("/")):
            raise InvalidReference(
                f"invalid repository {repository!r} in {original!r} (lower-case components only)"
            )
        if tag is None and digest is None:
            tag = "latest"
        return cls(transport="docker", registry=registry, repository=repository, tag=tag, digest=digest)

    @classmethod
    def _parse_oci(cls, rest: str, original: str) -> ImageReference:
        directory, _, image = rest.partition(":")
        if not directory:
            raise InvalidReference(f"missing directory in {original!r}")
        if image and not (_OCI_IMAGE_RE.fullmatch(image) or _OCI_INDEX_RE.fullmatch(image)):
            raise InvalidReference(f"invalid image name {image!r} in {original!r}")
        return cls(transport="oci", tag=image or None, path=Path(directory))

    # -- views ------------------------------------------------------------------------------------
    @property
    def reference(self) -> str | None:
        """What to ask the registry (or layout) for: the digest if set, else the tag."""
        return self.digest or self.tag

    @property
    def name(self) -> str:
        """``registry/repository`` (docker) or the directory (oci), without tag or digest."""
        if self.transport == "oci":
            return str(self.path)
        return f"{self.registry}/{self.repository}"

    def with_digest(self, digest: str) -> ImageReference:
        """The same image pinned to ``digest`` (the tag is kept for display)."""
        if not _DIGEST_RE.fullmatch(digest):
            raise InvalidReference(f"invalid digest {digest!r}")
        return dataclasses.replace(self, digest=digest)

    def with_tag(self, tag: str) -> ImageReference:
        """The same repository (or layout) with ``tag`` and no digest."""
        if self.transport == "docker" and not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return dataclasses.replace(self, tag=tag, digest=None)

    def __str__(self) -> str:
        if self.transport == "oci":
            return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
        text = f"docker://{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
