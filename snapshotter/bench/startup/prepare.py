"""Each image's copies in the benchmark's registry: gzip (as built), zstd:chunked, zstd:chunked with a
prefetch list, eStargz; made once and kept in the cache's registry storage.

The prefetch list is recorded by running the start workload once: the image's non-bulk layers are
extracted onto a tmpfs mounted ``strictatime`` with every access time reset, the workload runs there in
a chroot, and the files whose access time moved (read, executed or mapped) are the list.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from isal import igzip

from fs.errors import ZsnapError
from snapshotter.bench.startup.images import BuiltImage
from snapshotter.bench.startup.modes import TAGS
from snapshotter.services import LocalContainerd

__all__ = ["prepare", "record_prefetch", "repository"]


def repository(image: BuiltImage) -> str:
    return f"bench/{image.layout.parent.name}"


def _tag_digest(host: str, repo: str, tag: str) -> str | None:
    """The manifest digest ``repo:tag`` has in the registry, or ``None`` if it has no such tag."""
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.headers.get("Docker-Content-Digest") or ""
    except OSError:
        return None


def _sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ZsnapError(f"{' '.join(cmd[:5])} … failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")


def prepare(image: BuiltImage, host: str, modes: list[str], work: Path, say: Callable[[str], None]) -> None:
    """Push/convert what ``modes`` need of ``image`` into the registry at ``host`` (skip what is there)."""
    repo = repository(image)
    base = f"docker://{host}/{repo}"
    zsnap = [sys.executable, "-m", "snapshotter", "--root", str(work / "convert-root")]
    pushed = _tag_digest(host, repo, TAGS["full"])
    # a cached registry whose gzip image is not this build's (the cache was partly cleared): redo everything
    stale = pushed is not None and pushed != image.manifest_digest

    def missing(tag: str) -> bool:
        return stale or _tag_digest(host, repo, tag) is None

    if missing(TAGS["full"]):
        say(f"{image.name}: pushing the gzip image")
        _sh(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{image.layout}:bench",
             f"{base}:{TAGS['full']}"])  # fmt: skip
    if "lazy" in modes and missing(TAGS["lazy"]):
        say(f"{image.name}: zsnap convert")
        _sh([*zsnap, "convert", "--quiet", f"{base}:{TAGS['full']}", f"{base}:{TAGS['lazy']}"])
    if "lazy-prefetch" in modes and missing(TAGS["lazy-prefetch"]):
        say(f"{image.name}: recording the start workload's files, zsnap convert --prefetch-list")
        listing = image.layout.parent / "prefetch.txt"
        if stale or not listing.exists():
            paths = record_prefetch(image, work)
            listing.write_text("".join(f"{p}\n" for p in paths))
        _sh([*zsnap, "convert", "--quiet", "--prefetch-list", str(listing), f"{base}:{TAGS['full']}",
             f"{base}:{TAGS['lazy-prefetch']}"])  # fmt: skip
    if "stargz" in modes and missing(TAGS["stargz"]):
        say(f"{image.name}: ctr-remote images convert --estargz")
        ref = f"{host}/{repo}"
        _estargz_copy(image, f"{ref}:{TAGS['full']}", f"{ref}:{TAGS['stargz']}", work)


def _estargz_copy(image: BuiltImage, src: str, dst: str, work: Path) -> None:
    """``ctr-remote images convert --estargz --oci`` inside a private containerd, pushed to ``dst``."""
    containerd = LocalContainerd(work / "estargz-containerd")
    try:
        containerd.ctr("images", "pull", "--plain-http", src)
        containerd.ctr("images", "convert", "--estargz", "--oci", src, dst, tool="ctr-remote")
        containerd.ctr("images", "push", "--plain-http", dst)
    finally:
        containerd.stop()


@contextlib.contextmanager
def _mounted(*argv: str, target: Path) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    _sh(["mount", *argv, str(target)])
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def record_prefetch(image: BuiltImage, work: Path) -> list[str]:
    """Paths (no leading ``/``) the start workload reads, found by access times on a strictatime tmpfs."""
    manifest_path = image.layout / "blobs" / "sha256" / image.manifest_digest.split(":")[1]
    layers = json.loads(manifest_path.read_text())["layers"]
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="record-", dir=work))
    try:
        with _mounted("-t", "tmpfs", "-o", "strictatime,mode=755", "tmpfs", target=root):
            for i, layer in enumerate(layers):
                if i in image.bulk_layers:
                    continue
                blob = image.layout / "blobs" / "sha256" / layer["digest"].split(":")[1]
                with igzip.open(blob, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
                    tar.extractall(root, filter="fully_trusted")
            files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
            for path in files:
                st = path.stat()
                os.utime(path, ns=(0, st.st_mtime_ns))
            with _mounted("--rbind", "/dev", target=root / "dev"), \
                 _mounted("-t", "proc", "proc", target=root / "proc"):  # fmt: skip
                chroot = [shutil.which("chroot") or "/usr/sbin/chroot", str(root), *image.start_cmd]
                env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
                proc = subprocess.run(chroot, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise ZsnapError(f"recording {image.name}: the start workload failed: {proc.stderr[-800:]}")
            return sorted(str(p.relative_to(root)) for p in files if p.stat().st_atime_ns > 0)
    finally:
        os.rmdir(root)
