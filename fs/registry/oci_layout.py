"""Read and write an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/sha256/…``).

Local files, so synchronous. Writes are atomic (temp file in the same directory, fsync, rename) and
blobs are verified against their digest before they become visible, so a crash leaves either the old
state or the new one, plus at most a ``.tmp-*`` file that the next write of the same name replaces.
Tags are ``org.opencontainers.image.ref.name`` annotations on ``index.json`` entries.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from fs.digest import Hasher, parse_digest, sha256_digest, verify_digest
from fs.errors import FormatError, NotFoundError, VerificationError

from . import media
from .manifests import Descriptor, load_json

__all__ = ["REF_NAME", "OciLayout"]

REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def _check_digest(digest: Any) -> str:
    """The hex part of a valid digest (FormatError otherwise, non-strings included: no path outside
    ``blobs/sha256``)."""
    return parse_digest(digest)[1]


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class OciLayout:
    """An OCI image layout at ``path`` (need not exist until the first write).

    Raises (from the methods): :class:`NotFoundError` for a missing blob or tag, :class:`FormatError`
    for a malformed ``index.json`` or digest, :class:`VerificationError` when written bytes do not hash
    to the digest given.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OciLayout({str(self.path)!r})"

    # -- reading ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def read_index(self) -> dict[str, Any]:
        """``index.json`` parsed (an empty index if the layout has none yet)."""
        where = f"{self.path}/index.json"
        try:
            raw = (self.path / "index.json").read_bytes()
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": []}
        data = load_json(raw, where)
        if not isinstance(data, dict) or not isinstance(data.get("manifests", []), list):
            raise FormatError(f"{where} is not an image index")
        data.setdefault("manifests", [])
        for i, entry in enumerate(data["manifests"]):
            # The same checks as for a registry's index (digest, size, media type, annotations).
            Descriptor.from_json(entry, where=f"{where} entry {i}")
        return data

    def tags(self) -> list[str]:
        """Every ref name in ``index.json``, in order."""
        return [
            m["annotations"][REF_NAME]
            for m in self.read_index()["manifests"]
            if REF_NAME in (m.get("annotations") or {})
        ]

    def resolve(self, tag: str | None = None) -> dict[str, Any]:
        """The ``index.json`` descriptor named ``tag``; ``@N`` = the N-th entry; ``None`` = the only one.

        Raises:
            NotFoundError: no such tag, or ``None`` with zero or several entries.
        """
        manifests = self.read_index()["manifests"]
        if tag is None:
            if len(manifests) != 1:
                raise NotFoundError(
                    f"{self.path} holds {len(manifests)} images; name one", path=str(self.path)
                )
            return dict(manifests[0])
        if re.fullmatch(r"@[0-9]+", tag):
            index = int(tag[1:])
            if index >= len(manifests):
                raise NotFoundError(f"{self.path} has no image @{index}", path=str(self.path))
            return dict(manifests[index])
        for descriptor in manifests:
            if (descriptor.get("annotations") or {}).get(REF_NAME) == tag:
                return dict(descriptor)
        raise NotFoundError(f"{self.path} has no image tagged {tag!r}", path=str(self.path))

    def blob_path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        return self.path / "blobs" / "sha256" / _check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} not in {self.path}", path=str(self.path)) from None

    def open_blob(self, digest: str) -> BinaryIO:
        """Open a blob for reading (the caller closes it). Not verified: see :meth:`read_blob`."""
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {digest} not in {self.path}", path=str(self.path)) from None

    def read_blob(self, digest: str, *, verify: bool = True) -> bytes:
        """A whole blob (for manifests and configs), verified against ``digest`` unless told not to."""
        with self.open_blob(digest) as blob:
            data = blob.read()
        if verify:
            verify_digest(data, digest, what=f"blob {digest} in {self.path}")
        return data

    def iter_blob(self, digest: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open_blob(digest) as blob:
            while chunk := blob.read(chunk_size):
                yield chunk

    # -- writing ------------------------------------------------------------------------------------
    def init(self) -> None:
        """Create the directory, ``blobs/sha256`` and ``oci-layout`` (idempotent)."""
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        if not (self.path / "oci-layout").exists():
            _atomic_write(self.path / "oci-layout", json.dumps(_LAYOUT_VERSION).encode())

    def write_blob(self, data: bytes, digest: str | None = None) -> str:
        """Store bytes as a blob; returns its digest. ``digest``, when given, must match."""
        actual = sha256_digest(data)
        if digest is not None and digest != actual:
            raise VerificationError(f"bytes for {digest} hash to {actual}")
        self.init()
        target = self.blob_path(actual)
        if not target.exists():
            _atomic_write(target, data)
        return actual

    def write_blob_from_file(self, source: str | os.PathLike[str], digest: str | None = None) -> str:
        """Copy a file in as a blob (streamed and hashed on the way); returns its digest."""
        self.init()
        directory = self.path / "blobs" / "sha256"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        try:
            hasher = Hasher()
            with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = hasher.digest()
            if digest is not None and digest != actual:
                raise VerificationError(f"{source} was declared {digest} but hashes to {actual}")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(actual))
            return actual
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_index(self, index: dict[str, Any]) -> None:
        self.init()
        _atomic_write(self.path / "index.json", json.dumps(index, separators=(",", ":")).encode())

    def set_tag(self, tag: str, descriptor: dict[str, Any]) -> None:
        """Point ``tag`` at ``descriptor`` (mediaType, digest, size…), replacing any entry with that tag."""
        for key in ("mediaType", "digest", "size"):
            if key not in descriptor:
                raise FormatError(f"descriptor for tag {tag!r} lacks {key!r}")
        _check_digest(descriptor["digest"])
        entry = dict(descriptor)
        entry["annotations"] = {**(descriptor.get("annotations") or {}), REF_NAME: tag}
        index = self.read_index()
        index["manifests"] = [
            m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != tag
        ] + [entry]
        self.write_index(index)

    def copy_blob_to(self, digest: str, destination: str | os.PathLike[str]) -> None:
        """Copy a blob out to a file (not verified)."""
        shutil.copyfile(self.blob_path(digest), destination)
