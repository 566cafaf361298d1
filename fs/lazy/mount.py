"""Life cycle of ``zsnap mount``: resolve, open layers, serve FUSE, stack overlayfs, wait, clean up.

Layout on disk::

    <root>/{index,data,...}        the content-addressed store (chunks, whole blobs, uncompressed tars)
    <root>/mnt/<mount-id>/         the pyfuse3 mount: one directory per layer, named by digest hex
    <root>/mounts/<mount-id>.json  the mount record (pid, mountpoint, ...) used by ``zsnap umount``
    <root>/scratch/<mount-id>/     download / decompression scratch files (removed at exit)

Sequence (:func:`run_mount`): open the store; resolve the image (manifest, config); open every layer
(TOC fetched and verified, or whole layer into the store); build the inode table (layers named by digest,
duplicates keep their topmost occurrence); ``pyfuse3.init`` at ``<root>/mnt/<id>``; serve; raise the mount's
``read_ahead_kb``; stack an overlayfs at MOUNTPOINT (``lowerdir`` = layer dirs, topmost first; a bind mount
for one layer), read-only, with the ``mount`` command run as a subprocess (the kernel looks the lowerdirs up
through our own FUSE server, which must stay free to answer); call ``on_ready`` with the one-line summary;
then prefetch / background-fetch, write stats every second, and wait for SIGINT/SIGTERM or for the FUSE
mount to go away. Shutdown unmounts the overlay (lazily if busy), stops FUSE and unmounts it, drops the
mount's store refs, writes the final stats and removes the record.

Store references (holder ``mount:<id>``, bound to this process so that a crash releases them at the next
store open): whole blobs/tars and the chunks this mount fetched are ref'd while it runs and released at
exit; they stay in the store as evictable cache for the next mount.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs.errors import ZsnapError
from fs.lazy import system
from fs.lazy.fetcher import open_fetcher
from fs.lazy.image import open_image_client, resolve_image
from fs.lazy.inodes import InodeTable
from fs.lazy.layer import OpenedLayer, open_layer
from fs.lazy.ops import LazyOperations
from fs.lazy.prefetch import run_prefetch
from fs.lazy.scheduler import FetchScheduler
from fs.lazy.stats import MountStats
from fs.registry import ImageReference

__all__ = ["MountConfig", "run_mount"]

log = logging.getLogger(__name__)

#: pyfuse3 mount options: read-only, visible to every user (containers), kernel permission checks.
FUSE_OPTIONS = frozenset({"fsname=zsnap", "subtype=zsnap", "ro", "allow_other", "default_permissions"})


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


async def _open_layers(
    client: Any, image: Any, store: Any, stats: MountStats, holder: str, scratch: Path
) -> list[OpenedLayer]:
    """Open every distinct layer concurrently (at most 4 at a time); result is bottom-first."""
    distinct = list(dict.fromkeys(d.digest for d in image.layers))
    opened: dict[str, OpenedLayer] = {}
    limiter = trio.CapacityLimiter(4)
    descs = {d.digest: d for d in image.layers}

    async def one(digest: str) -> None:
        async with limiter:
            opened[digest] = await open_layer(
                client,
                image.repository,
                descs[digest],
                store=store,
                stats=stats,
                holder=holder,
                scratch=scratch,
            )

    async with trio.open_nursery() as n:
        for digest in distinct:
            n.start_soon(one, digest)
    # topmost occurrence wins: walk top-down and keep the first time each digest is seen, then re-reverse
    seen: set[str] = set()
    top_down: list[OpenedLayer] = []
    for d in reversed(image.layers):
        if d.digest not in seen:
            seen.add(d.digest)
            top_down.append(opened[d.digest])
    return list(reversed(top_down))


def _open_store(root: Path) -> Any:
    from fs.store import Store

    return Store.open(root)


class _Mount:
    """The state of one running mount, torn down in reverse order by :meth:`cleanup`."""

    def __init__(self, cfg: MountConfig) -> None:
        self.cfg = cfg
        self.mount_id = cfg.mount_id or system.new_mount_id()
        self.holder = f"mount:{self.mount_id}"
        self.fuse_dir = cfg.root / "mnt" / self.mount_id
        self.scratch = cfg.root / "scratch" / self.mount_id
        self.links = cfg.root / "mnt" / f"{self.mount_id}.layers"
        self.mountpoint = os.path.realpath(cfg.mountpoint)  # mountinfo lists resolved paths
        self.stats = MountStats()
        self.stop = _Stop()
        self.store: Any = None
        self.record: system.MountRecord | None = None
        self.fuse_started = False
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
            stats_file=str(self.cfg.stats_file) if self.cfg.stats_file else None,
        )
        self.record.write(self.cfg.root)

    async def serve(self, on_ready: Callable[[str], None]) -> None:
        cfg = self.cfg
        ref = ImageReference.parse(cfg.image)
        self.store = await trio.to_thread.run_sync(_open_store, cfg.root)
        self.store.bind_holder(self.holder)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as receiver:
            async with trio.open_nursery() as outer:
                outer.start_soon(_watch_signals, self.stop, receiver)
                async with open_image_client(
                    ref, plain_http=cfg.plain_http, timeout=cfg.fetch_timeout
                ) as client:
                    layers: list[OpenedLayer] = []
                    with self.stop.startup:
                        image = await resolve_image(client, ref)
                        layers = await _open_layers(
                            client, image, self.store, self.stats, self.holder, self.scratch
                        )
                    if self.stop.event.is_set():
                        raise ZsnapError(f"interrupted by {self.stop.reason} before the mount was ready")
                    await self._serve_layers(layers, on_ready)
                outer.cancel_scope.cancel()

    async def _serve_layers(self, layers: list[OpenedLayer], on_ready: Callable[[str], None]) -> None:
        cfg = self.cfg
        if not layers:
            raise ZsnapError(f"{cfg.image} has no layers to mount")
        table = InodeTable(now_ns=time.time_ns())
        for layer in layers:
            table.add_layer(layer.desc.hex, layer.items, overlay=len(layers) > 1)
        scheduler = FetchScheduler()
        async with open_fetcher(
            self.store, scheduler, self.stats, holder=self.holder, fetch_timeout=cfg.fetch_timeout
        ) as fetcher:
            ops = LazyOperations(table, layers, fetcher, self.store, self.stats)
            self.fuse_dir.mkdir(parents=True, exist_ok=True)
            self._write_record()
            pyfuse3.init(ops, str(self.fuse_dir), set(FUSE_OPTIONS))
            self.fuse_started = True
            async with trio.open_nursery() as inner:
                inner.start_soon(_run_fuse, self.stop)
                cmd, cwd = self._overlay_plan([la.desc.hex for la in reversed(layers)])
                rc, err = await _run_cmd(cmd, cwd=cwd)
                if rc != 0:
                    raise ZsnapError(f"mounting the image at {self.mountpoint} failed: {err}")
                self.overlay_mounted = True
                # after the overlay mount, so FUSE INIT is done: its reply would cap read-ahead again
                dev = system.mount_source_dev(self.fuse_dir)
                if dev and cfg.read_ahead_kb:
                    system.set_read_ahead(dev, cfg.read_ahead_kb)
                lazy = sum(1 for la in layers if la.lazy)
                on_ready(
                    f"zsnap: mounted {cfg.image} at {self.mountpoint} ({len(layers)} layers, {lazy} lazy; "
                    f"mount id {self.mount_id}, pid {os.getpid()})"
                )
                if cfg.stats_file:
                    inner.start_soon(_write_stats_forever, self.stats, cfg.stats_file)
                inner.start_soon(
                    functools.partial(
                        run_prefetch, list(reversed(layers)), fetcher, scheduler, self.stats,
                        prefetch=cfg.prefetch, background=cfg.background_fetch,
                    )
                )  # fmt: skip
                await self.stop.event.wait()
                log.info("unmounting %s (%s)", self.mountpoint, self.stop.reason)
                self.overlay_mounted = not await _unmount(self.mountpoint)
                pyfuse3.terminate()
                inner.cancel_scope.cancel()

    def _overlay_plan(self, top_down: list[str]) -> tuple[list[str], str]:
        """The overlay mount command and its cwd. Layer dirs are named relative to the FUSE root; when
        that does not fit one page (about 60 layers), short symlinks ``0``, ``1``… name them instead."""
        try:
            return system.overlay_mount_command(top_down, self.mountpoint), str(self.fuse_dir)
        except ValueError:
            if len(top_down) < 2:
                raise
        self.links.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(top_down):
            os.symlink(self.fuse_dir / name, self.links / str(i))
        short = [str(i) for i in range(len(top_down))]
        return system.overlay_mount_command(short, self.mountpoint), str(self.links)

    async def cleanup(self) -> None:
        """Undo whatever was set up (shielded; safe after any failure)."""
        with trio.CancelScope(shield=True):
            if self.overlay_mounted:
                await _unmount(self.mountpoint)
            if self.fuse_started:
                pyfuse3.close(unmount=True)
            if not system.is_mounted(self.fuse_dir):
                with contextlib.suppress(OSError):
                    self.fuse_dir.rmdir()
            if self.record is not None:
                self.record.remove(self.cfg.root)
            if self.cfg.stats_file:
                with contextlib.suppress(OSError):
                    self.stats.write(self.cfg.stats_file, mount_id=self.mount_id, done=True)
            shutil.rmtree(self.scratch, ignore_errors=True)
            shutil.rmtree(self.links, ignore_errors=True)
            if self.store is not None:
                with contextlib.suppress(ZsnapError):
                    self.store.drop_holder(self.holder)  # whole layers' refs (the fetcher drops its own)
                await trio.to_thread.run_sync(self.store.close)


async def _serve(cfg: MountConfig, on_ready: Callable[[str], None]) -> None:
    mount = _Mount(cfg)
    try:
        await mount.serve(on_ready)
    finally:
        await mount.cleanup()


async def _run_fuse(stop: _Stop) -> None:
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        stop.set("FUSE session ended")


async def _unmount(mountpoint: str) -> bool:
    """Unmount the overlay/bind mount; lazily if it is busy. True when nothing is mounted there any more."""
    if not system.is_mounted(mountpoint):
        return True
    rc, err = await _run_cmd(system.unmount_command(mountpoint))
    if rc != 0 and system.is_mounted(mountpoint):
        log.info("umount %s failed (%s); detaching lazily", mountpoint, err)
        await _run_cmd(system.unmount_command(mountpoint, lazy=True))
    return not system.is_mounted(mountpoint)


async def _write_stats_forever(stats: MountStats, path: Path) -> None:
    while True:
        try:
            stats.write(path)
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
    for sub in ("mnt", "mounts", "scratch"):
        (cfg.root / sub).mkdir(parents=True, exist_ok=True)
    trio.run(_serve, cfg, on_ready)
