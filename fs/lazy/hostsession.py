"""The life of the lazy host's FUSE session: :func:`open_lazy_host` mounts it, serves a
:class:`~fs.lazy.host.LazyHost` on it and ends it; the helpers say where the session is mounted, how it
starts (pyfuse3 alone, or adopted from / stored in the service manager's fd store through
:mod:`fs.lazy.restart`) and how it ends (unmounted, or kept mounted for the next process)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs.errors import ZsnapError
from fs.lazy import restart, sdnotify, session, system
from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.host import LazyHost
from fs.lazy.invalidate import DRAIN_GRACE
from fs.lazy.options import FUSE_OPTIONS, HostOptions
from fs.lazy.scheduler import FetchScheduler
from fs.lazy.stats import MountStats
from fs.lazy.storeio import StoreIO

__all__ = ["STOP_GRACE", "close_session", "open_lazy_host", "prepare_mountpoint", "resolve_mountpoint",
           "start_session"]  # fmt: skip

log = logging.getLogger(__name__)


def resolve_mountpoint(where: Path) -> Path:
    """``where``, absolute, resolved without touching the mountpoint itself: a FUSE mount kept by the fd
    store and not served yet would make a ``stat`` of it wait for this process."""
    return Path(os.path.realpath(where.parent)) / where.name


async def prepare_mountpoint(fuse_dir: Path, adopting: bool) -> None:
    """Make the mountpoint; refuse one another process serves; detach a dead one (its server died
    without a stored fd)."""
    if adopting:
        return  # the stored connection is mounted there
    if not system.is_mounted(fuse_dir, resolve=False):
        await trio.to_thread.run_sync(lambda: fuse_dir.mkdir(parents=True, exist_ok=True))
        return
    try:
        with trio.fail_after(5):
            await trio.to_thread.run_sync(os.stat, fuse_dir, abandon_on_cancel=True)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.info("detaching the dead FUSE mount at %s (its server died)", fuse_dir)
            session.detach_mount(str(fuse_dir))
            return
        raise ZsnapError(f"cannot use {fuse_dir}: {exc}") from exc
    except trio.TooSlowError:
        pass  # mounted and nobody answers: still another server's (or a kept one that was not passed)
    raise ZsnapError(f"{fuse_dir} is already a mount point: is another zsnap serving this root?")


def start_session(
    ops: Any, fuse_dir: Path, options: frozenset[str], name: str | None, passed: list[tuple[str, int]]
) -> session.FuseSession | None:
    """Mount the session (``name`` None: pyfuse3 alone, returns None), or adopt the one stored under
    ``name`` in ``passed`` / mount afresh and store it (:func:`fs.lazy.restart.start_fuse_session`).

    Raises:
        ZsnapError: it could not be mounted.
    """
    try:
        if name is None:
            pyfuse3.init(ops, str(fuse_dir), set(options))
            return None
        fuse = restart.start_fuse_session(ops, str(fuse_dir), options, name=name, passed=passed)
    except (RuntimeError, OSError, session.FuseSessionError) as exc:
        raise ZsnapError(f"cannot mount the FUSE session at {fuse_dir}: {exc}") from exc
    if fuse.adopted:
        log.info("adopted the FUSE session at %s from the previous process (lost requests resent: %s)",
                 fuse_dir, fuse.resent)  # fmt: skip
    return fuse


def close_session(fuse: session.FuseSession | None, fuse_dir: Path, name: str | None, keep: bool) -> None:
    """Release the session after ``pyfuse3.main`` returned: unmount it, or with ``keep`` leave a stored
    one mounted for the next process."""
    try:
        if fuse is None:
            pyfuse3.close(unmount=True)
            return
        session.close_fuse_session(fuse, unmount=not keep)
        if not keep and name is not None:
            restart.forget_stored_fuse_session(name)
    except Exception as exc:  # already unmounted under us
        log.info("closing the FUSE session at %s: %r", fuse_dir, exc)


async def _run_session(host: LazyHost) -> None:
    try:
        await pyfuse3.main(min_tasks=4, max_tasks=64)
    finally:
        host.session_ended.set()


#: Seconds requests in flight at exit may take to be answered before they are cancelled (a kept
#: session's next process gets the cancelled ones resent).
STOP_GRACE = 5.0


@contextlib.asynccontextmanager
async def open_lazy_host(
    root: Path,
    store: Any,
    *,
    options: HostOptions | None = None,
    restore: Callable[[LazyHost], Awaitable[None]] | None = None,
    keep_mounted: Callable[[], bool] = lambda: True,
) -> AsyncIterator[LazyHost]:
    """Mount the host's FUSE session and serve it until the block exits (see the module docstring).

    ``store`` is an open :class:`~fs.store.Store` (the caller closes it after the block).

    ``restore`` runs before the session answers its first request: a restarted daemon attaches there
    what the previous process served, so that an adopted connection (``options.fd_store_name``) finds
    every inode number the kernel still holds. At exit, requests in flight are answered first (up to
    :data:`STOP_GRACE` seconds); a session kept in the fd store stays mounted for the next process
    unless ``keep_mounted()`` says False, any other is unmounted.

    Raises:
        ZsnapError: the FUSE session could not be mounted (e.g. something is mounted there already).
        ValueError: a bad option.
    """
    options = options or HostOptions()
    if options.fetch_timeout <= 0:
        raise ValueError("fetch_timeout must be a positive number of seconds")
    root = Path(root)
    # resolved once, before mounting: afterwards this process must not resolve paths through its mount
    fuse_dir = resolve_mountpoint(Path(options.fuse_dir or root / "mnt"))
    options = dataclasses.replace(options, fuse_dir=fuse_dir)
    passed = sdnotify.listen_fds() if options.fd_store_name is not None else []
    adopting = any(name == options.fd_store_name for name, _ in passed)
    await prepare_mountpoint(fuse_dir, adopting)
    stats = MountStats()
    scheduler = FetchScheduler(max_in_flight=options.limits.max_concurrent_fetches)
    sio = StoreIO(store)
    started = False
    host: LazyHost | None = None
    try:
        async with contextlib.AsyncExitStack() as exits, trio.open_nursery() as nursery:
            fetcher = ChunkFetcher(
                store, scheduler, stats, nursery, holder=options.bound_holder,
                fetch_timeout=options.fetch_timeout, store_limiter=sio.limiter,
                max_materialize=options.limits.max_read_materialize,
            )  # fmt: skip
            host = LazyHost(root, store, options, nursery, fetcher, scheduler, sio, stats, exits)
            try:
                if restore is not None:
                    await restore(host)  # nothing answers FUSE yet: the kernel's requests wait
                host.fuse = start_session(host.ops, fuse_dir, FUSE_OPTIONS, options.fd_store_name, passed)
            finally:
                ours = {options.fd_store_name, f"{options.fd_store_name}.init"}  # taken by restart
                for name, fd in passed:  # nothing else of ours is stored: fds of an older version
                    if name not in ours:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            started = True
            host.session_started()
            try:
                nursery.start_soon(_run_session, host)
                # a worker thread waits for the first reply (INIT done); then read-ahead may be raised
                with trio.move_on_after(30) as waited:
                    await trio.to_thread.run_sync(os.stat, fuse_dir, abandon_on_cancel=True)
                if waited.cancelled_caught:
                    raise ZsnapError(f"the FUSE session at {fuse_dir} did not answer within 30 s")
                dev = system.mount_source_dev(fuse_dir, resolve=False)
                if dev and options.read_ahead_kb:
                    await trio.to_thread.run_sync(system.set_read_ahead, dev, options.read_ahead_kb)
                yield host
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(DRAIN_GRACE):
                    await host.invalidator.drain()  # while the session still answers what they need
                pyfuse3.terminate()  # no new requests; those in flight finish before main returns
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_GRACE):
                    await host.session_ended.wait()
                nursery.cancel_scope.cancel()  # prefetch, fetches and what is still in flight
    finally:
        with trio.CancelScope(shield=True):
            if started and host is not None:
                keep = host.fuse is not None and options.fd_store_name is not None and keep_mounted()
                close_session(host.fuse, fuse_dir, options.fd_store_name, keep)
            if not system.is_mounted(fuse_dir, resolve=False):
                with contextlib.suppress(OSError):
                    fuse_dir.rmdir()
            elif not (started and host is not None and host.fuse is not None):
                log.info("%s is still mounted", fuse_dir)
            if options.scratch_dir is None:  # the host's own scratch (a caller's is the caller's)
                scratch = root / "scratch" / f"host-{os.getpid()}"
                await trio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
