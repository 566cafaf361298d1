"""Sample images for the demo and the benchmarks, written as OCI layouts.

Layers are real tars (PAX, ending exactly in two zero blocks like Go's archive/tar, which is what skopeo
and containerd expect) with realistic content: a busybox base that runs, many small text files, and
big files that are part incompressible, part text. Synthetic content comes from a seeded RNG; the busybox
base and :func:`system_layers` take this machine's files, so their digests follow the installed packages.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from isal import igzip

__all__ = ["bench_layers", "build_image", "demo_layers", "system_layers"]

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "cat", "ls", "echo", "sha256sum", "head", "wc", "find", "stat", "true"]
MTIME = 1_700_000_000
LayerBuilder = Callable[[tarfile.TarFile], None]


def build_image(layout: Path, layers: list[LayerBuilder], *, tag: str = "latest", gzip_level: int = 1) -> str:
    """Write an image with one gzip layer per builder into the OCI layout ``layout``; return its digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    descriptors, diff_ids = [], []
    for build in layers:
        tar_path = layout / "layer.tar.tmp"
        with open(tar_path, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                build(tar)
            end = tar.offset  # drop tarfile's 10 KiB record padding: end at the two zero blocks
            raw.truncate(end)
        diff_ids.append(_file_digest(tar_path))
        gz_path = layout / "layer.gz.tmp"
        with open(tar_path, "rb") as src, igzip.open(gz_path, "wb", compresslevel=gzip_level) as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        tar_path.unlink()
        digest = _file_digest(gz_path)
        size = gz_path.stat().st_size
        gz_path.rename(blobs / digest.split(":")[1])
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
        )
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _write_blob(blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": config_desc, "layers": descriptors}
    manifest_desc = _write_blob(blobs, json.dumps(manifest).encode(), manifest_type)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}  # JSON
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [
        m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ] + [manifest_desc]
    index_path.write_text(json.dumps(index))
    return str(manifest_desc["digest"])


def demo_layers(data_mb: int) -> list[LayerBuilder]:
    """busybox base, an app layer of 2,000 small files, a data layer with one ``data_mb`` MB file."""
    return [_base_layer, lambda tar: _small_files(tar, "app/lib", 2000, seed=1),
            lambda tar: _big_file(tar, "data/model.bin", data_mb << 20, seed=2)]


def bench_layers(total_mb: int, layers: int = 5) -> list[LayerBuilder]:
    """A ``layers``-layer image of about ``total_mb`` MB uncompressed: base, then mixed layers."""
    per_layer = max(1, (total_mb << 20) // max(1, layers - 1))
    builders: list[LayerBuilder] = [_base_layer]
    for i in range(1, layers):
        def build(tar: tarfile.TarFile, i: int = i) -> None:
            small_bytes = per_layer // 4
            _small_files(tar, f"layer{i}/lib", max(1, small_bytes // 12_000), seed=100 + i)
            _big_file(tar, f"layer{i}/blob.bin", per_layer - small_bytes, seed=200 + i)
        builders.append(build)
    return builders


def system_layers(total_mb: int, layers: int = 5, roots: tuple[str, ...] = ("/usr",)) -> list[LayerBuilder]:
    """Layers of real files from this machine (binaries, libraries, text), about ``total_mb`` MB in all.

    Real content is what conversion speed should be measured on: synthetic data is either trivially
    compressible or incompressible, and zstd is much faster on both than on real binaries. The files are
    taken in sorted path order, so the image is the same on machines with the same packages.
    """
    budget = total_mb << 20
    per_layer = max(1, budget // max(1, layers - 1))
    groups: list[list[Path]] = [[]]
    used = 0
    for path in walk_files(*roots):
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if used + size > budget:
            break
        if sum(p.stat().st_size for p in groups[-1]) + size > per_layer and len(groups) < layers - 1:
            groups.append([])
        groups[-1].append(path)
        used += size

    return [_base_layer, *(functools.partial(add_files, paths=paths) for paths in groups)]


def add_files(tar: tarfile.TarFile, paths: list[Path]) -> None:
    """Add host files ``paths`` (absolute) to ``tar`` under their paths, owned by root, dated ``MTIME``."""
    for path in paths:
        info = tar.gettarinfo(str(path), arcname=str(path).lstrip("/"))
        info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
        with open(path, "rb") as f:
            tar.addfile(info, f)


def walk_files(*roots: str) -> Iterator[Path]:
    """Regular files (no symlinks) under ``roots``, in a stable sorted walk."""
    import os

    for root in roots:
        for directory, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                path = Path(directory) / name
                if path.is_file() and not path.is_symlink():
                    yield path


def _write_blob(blobs: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, MTIME
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _base_layer(tar: tarfile.TarFile) -> None:
    for d in ("bin", "etc", "tmp", "app", "app/bin", "data"):
        _add(tar, d, mode=0o755, type=tarfile.DIRTYPE)
    _add(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in APPLETS:
        _add(tar, f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
    _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _add(tar, "etc/motd", b"hello from a lazily mounted zstd:chunked image\n")
    _add(tar, "app/bin/hello", b"#!/bin/sh\necho hello\n", 0o755)


_WORDS = [b"alpha", b"beta", b"gamma", b"delta", b"zsnap", b"chunk", b"layer", b"frame", b"lazy", b"toc"]


def _small_files(tar: tarfile.TarFile, prefix: str, count: int, *, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        n = rng.randrange(100, 4000)
        data = b" ".join(rng.choices(_WORDS, k=n // 5))
        _add(tar, f"{prefix}/m{i // 100:03d}/file{i:05d}.txt", data)


def _big_file(tar: tarfile.TarFile, name: str, size: int, *, seed: int) -> None:
    """A file streamed in 64 KiB pieces: half incompressible, half text (never held whole).

    The incompressible halves are fresh random bytes each time (a repeating noise buffer would let a
    compressor with a long window shrink them, which real weights or binaries do not allow).
    """
    rng = random.Random(seed)
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, MTIME

    class _Pieces(io.RawIOBase):
        def __init__(self) -> None:
            self.produced = 0
            self.pending = bytearray()

        def readable(self) -> bool:
            return True

        def readinto(self, buf: memoryview) -> int:  # type: ignore[override]  # io passes a memoryview
            while len(self.pending) < len(buf) and self.produced < size:
                text = (b"weights %07d\n" % (self.produced >> 16))[:16] * 2048
                piece = (rng.randbytes(1 << 15) + text)[: size - self.produced]
                self.produced += len(piece)
                self.pending += piece
            n = min(len(buf), len(self.pending))
            buf[:n] = self.pending[:n]
            del self.pending[:n]
            return n

    tar.addfile(info, io.BufferedReader(_Pieces(), 1 << 20))
