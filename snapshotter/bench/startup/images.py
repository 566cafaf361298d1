"""The startup benchmark's images: a real base, a workload, and bulk data the workload never touches.

Layers, in order:

* **base**: a Debian bookworm root (debootstrap, :mod:`.debian`) or, for quick runs, busybox from this
  machine;
* **workload**: ``/bench/start.sh`` (real programs: ``python3 -c 'import json, sqlite3'`` and
  ``bash -c 'ls /usr/bin | wc -l'``; busybox base: ``sh`` and ``ls``) and ``/bench/readall.sh`` (hash every
  file of the root file system);
* **bulk** layers up to the requested size: thousands of library-like files (part random, part text; 20%
  of the bulk) and model-weight-like random files (80%), at most 1 GiB of data per layer.

Everything except the Debian tar comes from seeded generators (numpy PCG64; fixed names, modes and
times), layers are gzip with a zero mtime, so the same size and seed give the same manifest digest. Built
images are cached as OCI layouts under ``CACHE/images/<key>/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from isal import igzip

from snapshotter.bench.startup.debian import debian_rootfs_tar

__all__ = ["BuiltImage", "ImageSpec", "build", "image_key"]

GENERATOR_VERSION = 1
MTIME = 1_700_000_000
MiB = 1 << 20
LAYER_DATA = 1 << 30  # bulk bytes per layer
MODEL_FILE = 512 * MiB
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ["sh", "ls", "wc", "echo", "find", "xargs", "sha256sum", "cat", "true"]

START = {
    "debian": "#!/bin/sh\npython3 -c 'import json, sqlite3; print(\"started\", flush=True)'\n"
    "bash -c 'ls /usr/bin | wc -l'\n",
    "busybox": "#!/bin/sh\necho started\nls /bin | wc -l\n",
}
READALL = (
    "#!/bin/sh\nfind / -xdev -type f -print0 | xargs -0 sha256sum > /dev/null\necho read-everything done\n"
)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What to build: ``size_gb`` (10^9 bytes uncompressed, base included) on ``base``, bulk from ``seed``."""

    size_gb: float
    base: str = "debian"
    seed: int = 1


@dataclasses.dataclass
class BuiltImage:
    """An image in the cache: ``layout`` (OCI layout, tag ``bench``) and what the benchmark needs to know."""

    name: str
    layout: Path
    manifest_digest: str
    size_bytes: int  # uncompressed file bytes
    compressed_bytes: int
    bulk_layers: list[int]  # indices of the layers the start workload never reads
    start_cmd: list[str]
    readall_cmd: list[str]

    @classmethod
    def load(cls, directory: Path) -> BuiltImage:
        data = json.loads((directory / "image.json").read_text())
        data["layout"] = directory / "layout"
        return cls(**data)


def image_key(spec: ImageSpec) -> str:
    return f"{spec.base}-{spec.size_gb:g}g-s{spec.seed}-v{GENERATOR_VERSION}"


def build(spec: ImageSpec, cache: Path, *, say: Callable[[str], None] = print) -> BuiltImage:
    """The image for ``spec`` from the cache, built first if missing."""
    directory = cache / "images" / image_key(spec)
    if (directory / "image.json").exists():
        return BuiltImage.load(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    layers: list[LayerWriter] = []
    if spec.base == "debian":
        layers.append(_debian_layer(debian_rootfs_tar(cache, say=say)))
    elif spec.base == "busybox":
        layers.append(_busybox_layer)
    else:
        raise ValueError(f"unknown base {spec.base!r}")
    layers.append(_workload_layer(spec.base))
    layout = directory / "layout"
    say(f"building image {image_key(spec)} (cached in {directory})")
    descriptors: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    sizes: list[int] = []
    for write in layers:
        descriptors.append(_write_layer(layout, write, diff_ids, sizes))
    target = int(spec.size_gb * 1e9)
    bulk_layers = []
    for write in _bulk_layers(max(0, target - sum(sizes)), spec.seed):
        bulk_layers.append(len(descriptors))
        descriptors.append(_write_layer(layout, write, diff_ids, sizes))
    cmd = ["/bench/start.sh"]
    digest = _write_manifest(layout, descriptors, diff_ids, cmd)
    image = BuiltImage(
        name=f"{spec.base}-{spec.size_gb:g}g", layout=layout, manifest_digest=digest, size_bytes=sum(sizes),
        compressed_bytes=sum(d["size"] for d in descriptors), bulk_layers=bulk_layers, start_cmd=cmd,
        readall_cmd=["/bench/readall.sh"],
    )  # fmt: skip
    record = dataclasses.asdict(image)
    del record["layout"]
    (directory / "image.json").write_text(json.dumps(record, indent=1))
    return image


# -- layer content ---------------------------------------------------------------------------------------

LayerWriter = Callable[[tarfile.TarFile], int]  # writes entries, returns the file bytes written


def _info(name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type, info.mtime = size, mode, kind, MTIME
    return info


def _dirs(tar: tarfile.TarFile, *names: str) -> None:
    for name in names:
        tar.addfile(_info(name, mode=0o755, kind=tarfile.DIRTYPE))


def _debian_layer(rootfs: Path) -> LayerWriter:
    def write(tar: tarfile.TarFile) -> int:
        total = 0
        with tarfile.open(rootfs) as src:
            for member in src:
                member.name = member.name.removeprefix("./")
                if not member.name or member.name == ".":
                    continue
                if member.islnk():
                    member.linkname = member.linkname.removeprefix("./")
                if member.isreg():
                    tar.addfile(member, src.extractfile(member))
                    total += member.size
                else:
                    tar.addfile(member)
        return total

    return write


def _busybox_layer(tar: tarfile.TarFile) -> int:
    _dirs(tar, "bin", "etc", "tmp", "proc", "dev", "sys")
    data = BUSYBOX.read_bytes()
    tar.addfile(_info("bin/busybox", size=len(data), mode=0o755), io.BytesIO(data))
    for applet in BUSYBOX_APPLETS:
        link = _info(f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777)
        link.linkname = "busybox"
        tar.addfile(link)
    return len(data)


def _workload_layer(base: str) -> LayerWriter:
    def write(tar: tarfile.TarFile) -> int:
        _dirs(tar, "bench")
        total = 0
        for name, text in (("start.sh", START[base]), ("readall.sh", READALL)):
            data = text.encode()
            tar.addfile(_info(f"bench/{name}", size=len(data), mode=0o755), io.BytesIO(data))
            total += len(data)
        return total

    return write


class _Seeded(io.RawIOBase):
    """``size`` bytes from PCG64(seed): ``kind`` "random" (weights) or "mixed" (half random, half text)."""

    WORDS: ClassVar[list[bytes]] = [b"the", b"of", b"lib", b"symbol", b"version", b"init", b"data", b"const"]

    def __init__(self, size: int, seed: int, kind: str) -> None:
        self.left = size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.kind = kind
        self.pending = b""

    def readable(self) -> bool:
        return True

    def _more(self, n: int) -> bytes:
        if self.kind == "random":
            return self.rng.bytes(n)
        half = n // 2
        picks = self.rng.integers(0, len(self.WORDS), size=max(1, half // 5))
        text = b" ".join(self.WORDS[i] for i in picks)[:half].ljust(half, b"\n")
        return self.rng.bytes(n - half) + text

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        while len(self.pending) < n:
            self.pending += self._more(max(n - len(self.pending), 64 * 1024))
        out, self.pending = self.pending[:n], self.pending[n:]
        self.left -= n
        return out


def _bulk_files(total: int, seed: int) -> Iterator[tuple[str, int, str, int]]:
    """``(name, size, kind, seed)`` of every bulk file: 20% library-like, 80% model-weight-like."""
    rng = np.random.Generator(np.random.PCG64(seed))
    libs = total // 5
    i = 0
    while libs > 0:
        size = min(libs, int(rng.integers(8 * 1024, 512 * 1024)))
        yield f"opt/app/lib/d{i // 500:03d}/lib{i:05d}.so", size, "mixed", seed * 1_000_003 + i
        libs -= size
        i += 1
    models = total - total // 5
    j = 0
    while models > 0:
        size = min(models, MODEL_FILE)
        yield f"opt/models/shard-{j:04d}.bin", size, "random", seed * 7_000_003 + j
        models -= size
        j += 1


def _bulk_layers(total: int, seed: int) -> list[LayerWriter]:
    groups: list[list[tuple[str, int, str, int]]] = [[]]
    used = 0
    for entry in _bulk_files(total, seed):
        if used and used + entry[1] > LAYER_DATA:
            groups.append([])
            used = 0
        groups[-1].append(entry)
        used += entry[1]

    def writer(files: list[tuple[str, int, str, int]]) -> LayerWriter:
        def write(tar: tarfile.TarFile) -> int:
            made: set[str] = set()
            for name, size, kind, file_seed in files:
                parts = name.split("/")[:-1]
                for k in range(1, len(parts) + 1):
                    d = "/".join(parts[:k])
                    if d not in made:
                        _dirs(tar, d)
                        made.add(d)
                tar.addfile(_info(name, size=size), _Seeded(size, file_seed, kind))
            return sum(f[1] for f in files)

        return write

    return [writer(g) for g in groups if g]


# -- OCI layout -----------------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    def __init__(self, target: io.RawIOBase | io.BufferedIOBase) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.count += len(data)
        self.target.write(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def _write_layer(layout: Path, write: LayerWriter, diff_ids: list[str], sizes: list[int]) -> dict[str, Any]:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / "layer.tmp"
    with open(tmp, "wb") as raw:
        compressed = _HashingWriter(raw)
        with igzip.IGzipFile(fileobj=compressed, mode="wb", compresslevel=1, mtime=0) as gz:
            plain = _HashingWriter(gz)
            tar = tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - see below
            tar.copybufsize = 4 * MiB  # type: ignore[attr-defined]  # real, but not in typeshed
            sizes.append(write(tar))
            plain.write(b"\0" * 1024)  # end at the two zero blocks, without tarfile's record padding
            tar.closed = True  # type: ignore[attr-defined]  # real attribute, missing from typeshed
    diff_ids.append("sha256:" + plain.sha.hexdigest())
    digest = "sha256:" + compressed.sha.hexdigest()
    tmp.rename(blobs / digest.split(":")[1])
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
            "size": compressed.count}  # fmt: skip


def _blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _write_manifest(layout: Path, layers: list[dict[str, Any]], diff_ids: list[str], cmd: list[str]) -> str:
    config = {
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": cmd, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }  # fmt: skip
    config_desc = _blob(layout, json.dumps(config, sort_keys=True).encode(),
                        "application/vnd.oci.image.config.v1+json")  # fmt: skip
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": manifest_type, "config": config_desc, "layers": layers}
    desc = _blob(layout, json.dumps(manifest, sort_keys=True).encode(), manifest_type)
    desc["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return str(desc["digest"])
