"""Keeping a FUSE session in the service manager's file descriptor store across restarts.

``fs.lazy.session`` explains the mechanism; this module is the bookkeeping around it. Under one fd
name a session stores two fds: the ``/dev/fuse`` connection (``name``) and a sealed memfd holding the
``FUSE_INIT`` request the kernel sent at mount time (``name + ".init"``), which the next process must
replay to libfuse. The whole life cycle, as a serving process sees it::

    fuse = start_fuse_session(ops, mountpoint, options, name="fuse-<id>", passed=sdnotify.listen_fds())
    await pyfuse3.main()           # ends after pyfuse3.terminate() or an unmount
    session.close_fuse_session(fuse, unmount=False)   # restart: the stored fd keeps the mount
    # or, to really unmount:
    session.close_fuse_session(fuse, unmount=True); forget_stored_fuse_session("fuse-<id>")

The lazy host (``fs.lazy.host`` through ``fs.lazy.hostsession``) follows it when
``HostOptions.fd_store_name`` is set (``zsnap serve`` under a service manager with an fd store).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterable
from typing import Any

from fs.lazy import sdnotify, session

_INIT_SUFFIX = ".init"

log = logging.getLogger(__name__)


def _init_memfd(init: session.InitRequest) -> int:
    fd = os.memfd_create("zsnap-fuse-init", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, init.raw)
    fcntl.fcntl(
        fd,
        fcntl.F_ADD_SEALS,
        fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL,
    )
    return fd


def store_fuse_session(fuse: session.FuseSession, name: str) -> bool:
    """Put the session's fd and its INIT request in the service manager's fd store under ``name``.

    Call it once the session is set up, before serving. An adopted session is still in the store it
    came from (the manager keeps stored fds while passing them on), so nothing is sent for it.

    Returns False when there is no service manager (``NOTIFY_SOCKET`` unset): then the mount dies with
    this process, as any FUSE mount does.
    """
    if fuse.adopted:
        return True
    sdnotify.check_fdname(name + _INIT_SUFFIX)
    init_fd = _init_memfd(fuse.init)
    try:
        if not sdnotify.store_fds(name + _INIT_SUFFIX, [init_fd]):
            return False
    finally:
        os.close(init_fd)
    return sdnotify.store_fds(name, [fuse.device_fd])


def forget_stored_fuse_session(name: str) -> bool:
    """Drop the stored fd and INIT of ``name`` (after a real unmount); False without a manager."""
    removed = sdnotify.remove_stored_fds(name)
    sdnotify.remove_stored_fds(name + _INIT_SUFFIX)
    return removed


def stored_fuse_session(passed: list[tuple[str, int]], name: str) -> tuple[int, session.InitRequest] | None:
    """Pick the fd and INIT request stored under ``name`` out of ``sdnotify.listen_fds()``.

    The INIT memfd is read and closed. Returns None (closing any half) when either is missing or
    unreadable: the caller then mounts afresh.
    """
    fuse_fds = [fd for n, fd in passed if n == name]
    init_fds = [fd for n, fd in passed if n == name + _INIT_SUFFIX]
    init: session.InitRequest | None = None
    for init_fd in init_fds:
        with contextlib.suppress(OSError, session.FuseSessionError):
            init = init or session.InitRequest(os.pread(init_fd, 64 * 1024, 0))
        os.close(init_fd)
    for extra in fuse_fds[1:]:  # one connection per name; the store may have been sent it twice
        os.close(extra)
    if not fuse_fds or init is None:
        for fd in fuse_fds[:1]:
            os.close(fd)
        if init_fds or fuse_fds:  # half a session (the manager drops a dead connection's fd by itself)
            forget_stored_fuse_session(name)
        return None
    return fuse_fds[0], init


def start_fuse_session(
    ops: Any,
    mountpoint: str,
    options: Iterable[str],
    *,
    name: str,
    passed: list[tuple[str, int]],
    resend: bool = True,
) -> session.FuseSession:
    """Adopt the connection stored under ``name`` if it is alive, else mount afresh; keep it stored.

    Mounting afresh first detaches a dead FUSE mount left at ``mountpoint`` (a server killed before it
    stored its fd, or one that ran without a service manager).

    ``passed`` is ``sdnotify.listen_fds()``. Run ``pyfuse3.main`` next. A dead stored connection is
    dropped from the store (with its INIT) before mounting anew. ``options`` go to libfuse either way:
    mount options only matter to a fresh mount, but libfuse checks some of its own (``max_read``)
    against the INIT it replays, so they must be the ones the connection was mounted with.
    """
    stored = stored_fuse_session(passed, name)
    if stored is not None:
        try:
            return session.adopt_fuse_session(ops, *stored, mountpoint, options, resend=resend)
        except session.FuseSessionGone:
            log.info("the stored FUSE connection %s is gone; mounting %s afresh", name, mountpoint)
            forget_stored_fuse_session(name)
    _detach_dead_mount(mountpoint)
    fuse = session.mount_fuse_session(ops, mountpoint, options)
    store_fuse_session(fuse, name)
    return fuse


def _detach_dead_mount(mountpoint: str) -> None:
    """Detach a FUSE mount whose connection is aborted (its server died with no fd stored).

    Only an aborted connection answers ``ENOTCONN`` at once; a live one would be left alone.
    """
    try:
        os.stat(mountpoint)
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise
        log.info("detaching the dead FUSE mount at %s", mountpoint)
        session.detach_mount(mountpoint)
