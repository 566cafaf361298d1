"""Kernel-facing helpers of a mount: overlay options, mount table lookups, read-ahead, mount records.

Nothing here touches the FUSE mount's *contents* (the serving process must never read its own mount):
the mount table is read from ``/proc/self/mountinfo`` and mounts/unmounts run as subprocesses, so the
trio thread stays free to answer the kernel's requests they cause.

Mount records: every running ``zsnap mount`` writes ``<root>/mounts/<mount-id>.json`` (pid, process start
time, mountpoint, FUSE directory, image) so that ``zsnap umount MOUNTPOINT`` can find and signal it, and a
later mount can clean up after one that died (its record names a pid that no longer runs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from fs.store.holders import process_start_time

__all__ = [
    "MountRecord",
    "find_record",
    "iter_records",
    "mount_source_dev",
    "new_mount_id",
    "overlay_mount_command",
    "pid_alive",
    "process_start_time",
    "set_read_ahead",
    "unmount_command",
]

log = logging.getLogger(__name__)


def new_mount_id() -> str:
    """A short random id naming one mount (``<root>/mnt/<id>``, holder ``mount:<id>``)."""
    return secrets.token_hex(6)


def overlay_mount_command(
    layer_dirs: Sequence[str], mountpoint: str, *, allow_suid_dev: bool = False
) -> list[str]:
    """The ``mount`` command stacking ``layer_dirs`` (topmost first) read-only at ``mountpoint``.

    One layer is a read-only bind mount (overlayfs needs two lowerdirs without an upperdir). Layer dirs are
    given relative to the FUSE mount root and the command is meant to run with that root as its cwd, so the
    ``lowerdir=`` option stays short (it must fit one page) even for many layers.

    The mount is ``nosuid,nodev`` (an image's setuid binaries, file capabilities and device nodes have no
    effect there) unless ``allow_suid_dev``. The overlay gets no other option: no ``redirect_dir``,
    ``metacopy`` or ``index`` (the layers carry no ``trusted.*`` xattr but the whiteouts' opaque flag).

    Raises:
        ValueError: no layers, or a layer name containing ``:`` or ``,`` (which the option syntax cannot
            carry).
    """
    if not layer_dirs:
        raise ValueError("an image needs at least one layer to mount")
    for d in layer_dirs:
        if not d or any(ch in d for ch in ":,\\\n"):
            raise ValueError(f"layer directory name {d!r} cannot be used in an overlay lowerdir")
    flags = "suid,dev" if allow_suid_dev else "nosuid,nodev"
    if len(layer_dirs) == 1:  # util-linux applies the flags with a second (remount) call
        return ["mount", "--bind", "-o", f"ro,{flags}", layer_dirs[0], mountpoint]
    opts = f"ro,{flags},lowerdir={':'.join(layer_dirs)}"
    if len(opts) > 4000:
        raise ValueError(f"overlay options too long for {len(layer_dirs)} layers ({len(opts)} bytes)")
    return ["mount", "-t", "overlay", "overlay", "-o", opts, mountpoint]


def unmount_command(mountpoint: str, *, lazy: bool = False) -> list[str]:
    """``umount [-l] MOUNTPOINT``."""
    return ["umount", "-l", mountpoint] if lazy else ["umount", mountpoint]


def _unescape_mountinfo(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_source_dev(
    mountpoint: str | Path, *, mountinfo: str | None = None, resolve: bool = True
) -> str | None:
    """``major:minor`` of the (last) mount at ``mountpoint`` per ``/proc/self/mountinfo``, else None.

    ``resolve=False`` takes ``mountpoint`` as an already resolved absolute path: a process serving a FUSE
    mount must not resolve paths that may lead through that mount (the lookup would wait for itself).
    """
    target = os.path.realpath(mountpoint) if resolve else os.fspath(mountpoint)
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    found = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and _unescape_mountinfo(fields[4]) == target:
            found = fields[2]
    return found


def mounts_under(directory: str | Path, *, mountinfo: str | None = None) -> list[str]:
    """Mountpoints at or below ``directory`` (resolved), deepest first: the order to unmount them in."""
    top = os.path.realpath(directory).rstrip("/")
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = _unescape_mountinfo(fields[4])
            if point == top or point.startswith(top + "/"):
                found.add(point)
    return sorted(found, key=lambda p: (-p.count("/"), p))


def is_mounted(mountpoint: str | Path, *, resolve: bool = True) -> bool:
    """True if something is mounted exactly at ``mountpoint`` (reads the mount table; ``resolve`` as for
    :func:`mount_source_dev`)."""
    return mount_source_dev(mountpoint, resolve=resolve) is not None


def check_mountpoint(mountpoint: str | Path, root: str | Path) -> str:
    """Resolve ``mountpoint`` and refuse places that would route the serving process through its own
    mount: the store root itself, anything inside it (``<root>/mnt`` holds the FUSE session), and any
    directory above it (an overlay there would hide the root from the process that serves it).

    Returns:
        The resolved mountpoint.

    Raises:
        ZsnapError: the mountpoint is unusable.
    """
    from fs.errors import ZsnapError

    mp = os.path.realpath(mountpoint)
    rt = os.path.realpath(root)
    if mp == rt or mp.startswith(rt.rstrip("/") + "/"):
        raise ZsnapError(
            f"mountpoint {mountpoint} is inside the zsnap root {rt}: choose a directory outside it"
        )
    if rt.startswith(mp.rstrip("/") + "/"):
        raise ZsnapError(
            f"mountpoint {mountpoint} contains the zsnap root {rt}: mounting over it would hide the store "
            "from the process serving the mount; choose a directory outside it"
        )
    return mp


def set_read_ahead(dev: str, kib: int = 1024) -> bool:
    """Raise ``/sys/class/bdi/<dev>/read_ahead_kb`` to ``kib`` (the biggest sequential knob, docs/DESIGN.md).

    Returns False (and logs at INFO) when the knob is missing or not writable; never raises.
    """
    path = Path("/sys/class/bdi") / dev / "read_ahead_kb"
    try:
        current = int(path.read_text().strip() or 0)
        if current < kib:
            path.write_text(f"{kib}\n")
        return True
    except (OSError, ValueError) as exc:
        log.info("could not raise read-ahead at %s: %s", path, exc)
        return False


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` runs (and, when given, started at ``start_time``: guards against pid reuse)."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


@dataclass(frozen=True)
class MountRecord:
    """What ``<root>/mounts/<id>.json`` says about one running mount."""

    mount_id: str
    pid: int
    start_time: int | None
    mountpoint: str
    fuse_dir: str
    image: str
    stats_file: str | None = None

    def path(self, root: Path) -> Path:
        return root / "mounts" / f"{self.mount_id}.json"

    def write(self, root: Path) -> Path:
        """Atomically write the record; returns its path."""
        path = self.path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    def remove(self, root: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(root).unlink()

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)


def iter_records(root: Path) -> Iterator[MountRecord]:
    """Every readable mount record under ``<root>/mounts`` (malformed ones are skipped)."""
    d = root / "mounts"
    if not d.is_dir():
        return
    for p in sorted(d.glob("*.json")):
        try:
            yield MountRecord(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError):
            continue


def find_record(root: Path, mountpoint: str | Path) -> MountRecord | None:
    """The record whose mountpoint is ``mountpoint`` (compared as absolute real paths), else None."""
    want = os.path.realpath(mountpoint)
    for rec in iter_records(root):
        if os.path.realpath(rec.mountpoint) == want:
            return rec
    return None


def run_quiet(cmd: Sequence[str], *, cwd: str | None = None, timeout: float = 30.0) -> tuple[int, str]:
    """Run a short system command (blocking); returns ``(returncode, stderr text)``."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, proc.stderr.strip()
