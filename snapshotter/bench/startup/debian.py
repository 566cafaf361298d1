"""A Debian root file system (bookworm, minbase + python3) made with debootstrap, cached as a tar.

debootstrap fetches from the Debian mirror apt already uses (``/etc/apt/sources.list*``), so it works
wherever ``apt-get`` does. The tar is written once (``--numeric-owner --sort=name``, device nodes and the
.deb cache left out) and reused by every later run, so images built on it are reproducible on this machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from fs.errors import ZsnapError
from fs.lazy.system import mounts_under

__all__ = ["SUITE", "debian_rootfs_tar", "mirror"]

SUITE = "bookworm"
PACKAGES = ["python3"]
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def mirror() -> str:
    """The first Debian archive URI apt is configured with (deb822 or one-line format)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        uri: str
        for uri in re.findall(r"^\s*(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def debian_rootfs_tar(cache: Path, *, say: Callable[[str], object] = print) -> Path:
    """The cached root file system tar, made by debootstrap on first use (a few minutes, ~120 MB fetched)."""
    out = cache / f"debian-{SUITE}-minbase-{'-'.join(PACKAGES)}.tar"
    if out.exists():
        return out
    if shutil.which("debootstrap") is None:
        raise ZsnapError("debootstrap is not installed (apt-get install debootstrap)")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / "debootstrap.tmp"
    _remove_root(target)
    source = mirror()
    say(f"debootstrap {SUITE} (minbase + {', '.join(PACKAGES)}) from {source}: once, then cached in {out}")
    cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(target), source]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        log = target / "debootstrap/debootstrap.log"
        detail = log.read_text(errors="replace")[-1500:] if log.exists() else proc.stderr[-1500:]
        raise ZsnapError(f"debootstrap failed ({proc.returncode}): {detail}")
    tmp = out.with_suffix(".tar.tmp")
    excludes = ["./dev/*", "./proc/*", "./sys/*", "./run/*", "./tmp/*", "./var/cache/apt/archives/*.deb",
                "./var/log/*", "./debootstrap"]  # fmt: skip
    tar = ["tar", "--numeric-owner", "--sort=name", "--xattrs", "-C", str(target), "-cf", str(tmp)]
    tar += [f"--exclude={e}" for e in excludes]
    subprocess.run([*tar, "."], check=True, capture_output=True)
    tmp.rename(out)
    _remove_root(target)
    return out


def _remove_root(target: Path) -> None:
    """Delete a debootstrap target, first unmounting what an interrupted debootstrap left mounted in it
    (its /proc and /sys): deleting through a mount would at best fail and at worst reach the host's files."""
    for point in mounts_under(target):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    if mounts_under(target):
        raise ZsnapError(f"cannot unmount what is mounted under {target}: remove it by hand")
    shutil.rmtree(target, ignore_errors=True)
