"""``zsnap serve`` with a stand-in for the lazy host: the ALREADY_EXISTS handshake with real containerd.

The real host (``fs.lazy.host``, another branch) serves layers over FUSE. This stand-in keeps the same API
(``attach_image`` / ``layer_path`` / ``detach`` / ``stats``) but "attaches" an image by downloading its
layers from the real registry and unpacking them the way containerd's overlay unpacker would (whiteouts as
0/0 character devices, opaque directories as ``trusted.overlay.opaque=y``) into ``<root>/test-host/``.
Layers whose media type is not zstd are reported as not lazily readable, as the real host does for gzip.
So everything the daemon and containerd do around the host is real: labels, Prepare, the committed
snapshot, ALREADY_EXISTS, containerd's List/Stat re-check, mounts mixing host layer dirs, removal, detach.

Run as ``python -m tests.snapshotter.unpacking_host [zsnap args]``. Each detach appends the holder to
``<root>/test-host/detached``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import zstandard

from fs.registry import ImageReference, open_registry_client
from fs.registry.manifests import ImageIndex, config_diff_ids, parse_manifest_or_index


@dataclass(frozen=True)
class AttachedLayer:
    digest: str
    diff_id: str
    path: Path
    lazy: bool


def _unpack(blob: bytes, media_type: str, target: Path) -> None:
    if media_type.endswith("+zstd"):
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        for member in tar.getmembers():
            parent, _, name = member.name.rstrip("/").rpartition("/")
            if name == ".wh..wh..opq":
                (tmp / parent).mkdir(parents=True, exist_ok=True)
                os.setxattr(tmp / parent, "trusted.overlay.opaque", b"y")
            elif name.startswith(".wh."):
                (tmp / parent).mkdir(parents=True, exist_ok=True)
                os.mknod(tmp / parent / name.removeprefix(".wh."), stat.S_IFCHR | 0o000, os.makedev(0, 0))
            else:
                tar.extract(member, tmp, numeric_owner=True, filter="fully_trusted")
        for member in reversed(tar.getmembers()):  # contents before their directories
            path = tmp / member.name.rstrip("/")
            if not path.name.startswith(".wh.") and os.path.lexists(path):
                ns = _mtime_ns(member)
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
    os.replace(tmp, target)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime to the nanosecond (a PAX ``mtime`` keeps digits a float would lose)."""
    sec, _, frac = member.pax_headers.get("mtime", str(int(member.mtime))).partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


class UnpackingHost:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats = None
        self._paths: dict[str, Path] = {}

    async def attach_image(
        self, ref: str, *, holder: str, manifest_digest: str | None = None, plain_http: bool | None = None,
        lazy_only: bool = False,
    ) -> list[AttachedLayer]:  # fmt: skip
        image = ImageReference.parse(ref)
        async with open_registry_client(image.registry, plain_http=plain_http) as client:
            manifest = await client.get_manifest(image.repository, manifest_digest or image.reference)
            doc = parse_manifest_or_index(manifest.data, manifest.media_type)
            if isinstance(doc, ImageIndex):
                amd64 = next(m for m in doc.manifests if (m.platform or {}).get("architecture") == "amd64")
                manifest = await client.get_manifest(image.repository, amd64.digest)
                doc = parse_manifest_or_index(manifest.data, manifest.media_type)
            if lazy_only and not any("zstd" in desc.media_type for desc in doc.layers):
                return []  # as the real host: nothing attached
            config = await client.get_blob(image.repository, doc.config.digest)
            layers = []
            for desc, diff_id in zip(doc.layers, config_diff_ids(config), strict=True):
                target = self.root / desc.digest.removeprefix("sha256:")
                lazy = "zstd" in desc.media_type
                if lazy and not target.exists():
                    blob = await client.get_blob(image.repository, desc.digest, max_size=1 << 30)
                    await trio.to_thread.run_sync(_unpack, blob, desc.media_type, target)
                self._paths[desc.digest] = target
                layers.append(AttachedLayer(desc.digest, diff_id, target, lazy))
        return layers

    def layer_path(self, digest: str) -> Path:
        return self._paths[digest]

    async def mark_lost(self, digests: list[str]) -> None:
        return None

    async def detach(self, holder: str) -> None:
        with (self.root / "detached").open("a") as log:
            log.write(holder + "\n")


@contextlib.asynccontextmanager
async def open_unpacking_host(
    config: Any, store: Any, *, restore: Any = None, keep_mounted: Any = None
) -> AsyncIterator[UnpackingHost]:
    host = UnpackingHost(config.root / "test-host")
    if restore is not None:  # as the real host: before serving (the stand-in has no FUSE session)
        await restore(host)
    yield host


def main(argv: list[str]) -> int:
    import snapshotter.daemon
    import snapshotter.remote
    from snapshotter.cli import main as zsnap_main

    snapshotter.remote.open_host = open_unpacking_host  # type: ignore[assignment]
    snapshotter.daemon.open_host = open_unpacking_host  # type: ignore[assignment]
    return zsnap_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
