"""Life cycle of ``zsnap mount``: one image on a :class:`~fs.lazy.host.LazyHost`, stacked at MOUNTPOINT.

Layout on disk::

    <root>/{index,data,...}        the content-addressed store (chunks, whole blobs, uncompressed tars)
    <root>/mnt/<mount-id>/         the host's pyfuse3 session: one directory per layer, named by digest hex
    <root>/mounts/<mount-id>.json  the mount record (pid, mountpoint, ...) used by ``zsnap umount``
    <root>/scratch/<mount-id>/     download / decompression scratch files (removed at exit)

Sequence (:func:`run_mount`): refuse a mountpoint inside or above the root; open the store; open a host
(FUSE session at ``<root>/mnt/<id>``); ``attach_image``; stack an overlayfs at MOUNTPOINT (``lowerdir`` =
layer dirs, topmost first; a bind mount for one layer), read-only and ``nosuid,nodev`` unless
``allow_suid_dev``, with the ``mount`` command run as a subprocess (the kernel looks the lowerdirs up
through our own FUSE server, which must stay free to answer); call ``on_ready`` with the one-line summary;
then write stats every second (from a worker thread) and wait for SIGINT/SIGTERM or for the FUSE session
to go away. Shutdown unmounts the overlay (lazily if busy), closes the host (stops FUSE and unmounts it),
drops the mount's store refs, writes the final stats and removes the record. Paths are resolved once at
the start: the serving process never resolves a path that could lead through its own mount.

Store references (holder ``mount:<id>``, bound to this process so that a crash releases them at the next
store open): whole blobs/tars and the chunks this mount fetched are ref'd while it runs and released at
exit; they stay in the store as evictable cache for the next mount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from fs.errors import ZsnapError
from fs.lazy import system
from fs.lazy.host import AttachedLayer, LazyHost
from fs.lazy.hostsession import open_lazy_host
from fs.lazy.options import HostOptions
from fs.lazy.stats import MountStats
from fs.registry import ImageReference

__all__ = ["MountConfig", "run_mount"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MountConfig:
    """Everything ``zsnap mount`` was asked to do."""

    root: Path
    image: str
    mountpoint: Path
    prefetch: bool = True
    background_fetch: bool = True
    stats_file: Path | None = None
    plain_http: bool | None = None
    fetch_timeout: float = 30.0
    read_ahead_kb: int = 1024
    mount_id: str = ""
    allow_suid_dev: bool = False


class _Stop:
    """Set once by a signal or by FUSE going away; cancels startup if it is still running."""

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reason = ""
        self.startup = trio.CancelScope()

    def set(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()
            self.startup.cancel()


async def _watch_signals(stop: _Stop, receiver: Any) -> None:
    async for signum in receiver:
        stop.set(signal.Signals(signum).name)


async def _run_cmd(cmd: list[str], *, cwd: str | None = None) -> tuple[int, str]:
    proc = await trio.run_process(cmd, cwd=cwd, capture_stdout=True, capture_stderr=True, check=False)
    return proc.returncode, proc.stderr.decode(errors="replace").strip()


def _open_store(root: Path) -> Any:
    from fs.store import Store

    return Store.open(root)


class _Mount:
    """The state of one running mount, torn down in reverse order by :meth:`cleanup`."""

    def __init__(self, cfg: MountConfig) -> None:
        self.cfg = cfg
        self.mount_id = cfg.mount_id or system.new_mount_id()
        self.holder = f"mount:{self.mount_id}"
        self.root = Path(os.path.realpath(cfg.root))
        self.fuse_dir = self.root / "mnt" / self.mount_id
        self.scratch = self.root / "scratch" / self.mount_id
        self.links = self.root / "mnt" / f"{self.mount_id}.layers"
        self.mountpoint = system.check_mountpoint(cfg.mountpoint, self.root)  # mountinfo lists resolved paths
        self.stats_file = Path(os.path.realpath(cfg.stats_file)) if cfg.stats_file else None
        self.stats = MountStats()
        self.stop = _Stop()
        self.store: Any = None
        self.record: system.MountRecord | None = None
        self.overlay_mounted = False

    def _write_record(self) -> None:
        pid = os.getpid()
        self.record = system.MountRecord(
            mount_id=self.mount_id,
            pid=pid,
            start_time=system.process_start_time(pid),
            mountpoint=self.mountpoint,
            fuse_dir=str(self.fuse_dir),
            image=self.cfg.image,
            stats_file=str(self.stats_file) if self.stats_file else None,
        )
        self.record.write(self.root)

    async def serve(self, on_ready: Callable[[str], None]) -> None:
        cfg = self.cfg
        ref = ImageReference.parse(cfg.image)
        self.store = await trio.to_thread.run_sync(_open_store, self.root)
        await trio.to_thread.run_sync(self.store.bind_holder, self.holder)
        options = HostOptions(
            prefetch=cfg.prefetch,
            background_fetch=cfg.background_fetch,
            fetch_timeout=cfg.fetch_timeout,
            read_ahead_kb=cfg.read_ahead_kb,
            plain_http=cfg.plain_http,
            fuse_dir=self.fuse_dir,
            bound_holder=self.holder,
            scratch_dir=self.scratch,
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as receiver:
            async with trio.open_nursery() as outer:
                outer.start_soon(_watch_signals, self.stop, receiver)
                await trio.to_thread.run_sync(self._write_record)
                async with open_lazy_host(self.root, self.store, options=options) as host:
                    self.stats = host.stats
                    outer.start_soon(_watch_session, host, self.stop)
                    layers: list[AttachedLayer] = []
                    with self.stop.startup:
                        layers = await host.attach_image(ref, holder=self.holder, plain_http=cfg.plain_http)
                    if self.stop.event.is_set():
                        raise ZsnapError(f"interrupted by {self.stop.reason} before the mount was ready")
                    try:
                        await self._serve_layers(host, layers, on_ready)
                    finally:
                        with trio.CancelScope(shield=True):
                            if self.overlay_mounted:
                                self.overlay_mounted = not await _unmount(self.mountpoint)
                outer.cancel_scope.cancel()

    async def _serve_layers(
        self, host: LazyHost, layers: list[AttachedLayer], on_ready: Callable[[str], None]
    ) -> None:
        cfg = self.cfg
        cmd, cwd = await trio.to_thread.run_sync(
            self._overlay_plan, [la.path.name for la in reversed(layers)]
        )
        rc, err = await _run_cmd(cmd, cwd=cwd)
        if rc != 0:
            raise ZsnapError(f"mounting the image at {self.mountpoint} failed: {err}")
        self.overlay_mounted = True
        lazy = sum(1 for la in layers if la.lazy)
        on_ready(
            f"zsnap: mounted {cfg.image} at {self.mountpoint} ({len(layers)} layers, {lazy} lazy; "
            f"mount id {self.mount_id}, pid {os.getpid()})"
        )
        async with trio.open_nursery() as inner:
            if self.stats_file:
                inner.start_soon(_write_stats_forever, host.stats, self.stats_file)
            await self.stop.event.wait()
            log.info("unmounting %s (%s)", self.mountpoint, self.stop.reason)
            inner.cancel_scope.cancel()

    def _overlay_plan(self, top_down: list[str]) -> tuple[list[str], str]:
        """The overlay mount command and its cwd (worker thread). Layer dirs are named relative to the FUSE
        root; when that does not fit one page (about 60 layers), short symlinks ``0``, ``1``… name them."""
        suid = self.cfg.allow_suid_dev
        try:
            return system.overlay_mount_command(top_down, self.mountpoint, allow_suid_dev=suid), str(
                self.fuse_dir
            )
        except ValueError:
            if len(top_down) < 2:
                raise
        self.links.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(top_down):
            os.symlink(self.fuse_dir / name, self.links / str(i))
        short = [str(i) for i in range(len(top_down))]
        return system.overlay_mount_command(short, self.mountpoint, allow_suid_dev=suid), str(self.links)

    async def cleanup(self) -> None:
        """Undo whatever was set up (shielded; safe after any failure). The host is closed already."""
        with trio.CancelScope(shield=True):
            if self.overlay_mounted:
                await _unmount(self.mountpoint)
            await trio.to_thread.run_sync(self._cleanup_files)
            if self.store is not None:
                with contextlib.suppress(ZsnapError):  # whole layers' and fetched chunks' refs
                    await trio.to_thread.run_sync(self.store.drop_holder, self.holder)
                await trio.to_thread.run_sync(self.store.close)

    def _cleanup_files(self) -> None:
        if self.record is not None:
            self.record.remove(self.root)
        if self.stats_file:
            with contextlib.suppress(OSError):
                self.stats.write(self.stats_file, mount_id=self.mount_id, done=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        shutil.rmtree(self.links, ignore_errors=True)


async def _serve(cfg: MountConfig, on_ready: Callable[[str], None]) -> None:
    mount = _Mount(cfg)
    try:
        await mount.serve(on_ready)
    finally:
        await mount.cleanup()


async def _watch_session(host: LazyHost, stop: _Stop) -> None:
    await host.session_ended.wait()
    stop.set("FUSE session ended")


async def _unmount(mountpoint: str) -> bool:
    """Unmount the overlay/bind mount; lazily if it is busy. True when nothing is mounted there any more."""
    if not system.is_mounted(mountpoint, resolve=False):
        return True
    rc, err = await _run_cmd(system.unmount_command(mountpoint))
    if rc != 0 and system.is_mounted(mountpoint, resolve=False):
        log.info("umount %s failed (%s); detaching lazily", mountpoint, err)
        await _run_cmd(system.unmount_command(mountpoint, lazy=True))
    return not system.is_mounted(mountpoint, resolve=False)


async def _write_stats_forever(stats: MountStats, path: Path) -> None:
    while True:
        try:
            await trio.to_thread.run_sync(stats.write, path)  # a file write: never on the FUSE thread
        except OSError as exc:
            log.info("could not write stats to %s: %s", path, exc)
        await trio.sleep(1.0)


def run_mount(cfg: MountConfig, on_ready: Callable[[str], None]) -> None:
    """Mount ``cfg.image`` at ``cfg.mountpoint`` and serve until unmounted or signalled (blocking).

    ``on_ready(line)`` is called once, when the tree is ready to use.

    Raises:
        ZsnapError: the image could not be resolved/opened/mounted (nothing is left mounted).
    """
    if not cfg.mountpoint.is_dir():
        raise ZsnapError(f"mountpoint {cfg.mountpoint} is not a directory")
    system.check_mountpoint(cfg.mountpoint, cfg.root)
    for sub in ("mnt", "mounts", "scratch"):
        (cfg.root / sub).mkdir(parents=True, exist_ok=True)
    trio.run(_serve, cfg, on_ready)
