"""The mount side of :func:`fs.lazy.host.open_lazy_host`: where the session is mounted, how it starts
(pyfuse3 alone, or adopted from / stored in the service manager's fd store through
:mod:`fs.lazy.restart`) and how it ends (unmounted, or kept mounted for the next process)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from fs.errors import ZsnapError
from fs.lazy import restart, session, system

__all__ = ["close_session", "prepare_mountpoint", "resolve_mountpoint", "start_session"]

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
