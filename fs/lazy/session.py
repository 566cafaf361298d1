"""A pyfuse3 FUSE session that survives a restart of the serving process.

When a FUSE daemon exits, its mounts die with it: the kernel aborts a connection once the last open
file of its ``/dev/fuse`` goes away, and every reader gets ``ENOTCONN`` from then on (this is what
stargz-snapshotter and SOCI users see after a daemon restart). zsnap keeps the connection instead:

1. **Keep the fd.** The serving process puts a duplicate of its ``/dev/fuse`` fd in systemd's file
   descriptor store (``fs.lazy.restart``, over ``fs.lazy.sdnotify``), together with the
   ``FUSE_INIT`` request the kernel sent at mount time (in a sealed memfd: libfuse must see it again,
   below). While the process is gone (kill -9, crash, ``systemctl restart``) the store's copy keeps
   the connection alive; readers simply wait in the kernel.
2. **Adopt the fd.** The next start finds both in ``LISTEN_FDS`` (``restart.stored_fuse_session``) and
   calls :func:`adopt_fuse_session`. libfuse 3.14 takes ``/dev/fd/N`` as a mountpoint and then serves
   that fd without mounting (``fuse_session_mount`` in lib/fuse_lowlevel.c), but it still waits for
   ``FUSE_INIT`` and answers every other request with ``EIO`` until it has one
   (``fuse_session_process_buf_int``: ``if (!se->got_init) ... err = EIO``), and the kernel sent INIT
   only once, to the first process. So the first request libfuse reads is the stored INIT: fd N is
   pointed (``dup2``) at a pipe holding it while the real fd waits under another number. Before the
   first INIT libfuse reads with plain ``read(2)`` (splice needs ``proto_minor >= 14`` and
   ``FUSE_CAP_SPLICE_READ`` in ``conn.want``, both still zero), and pyfuse3 waits for readability with
   ``trio.lowlevel.wait_readable(session_fd)``, so both work on a pipe. libfuse calls
   ``Operations.init()`` while processing that INIT (``do_init``), before replying; that hook puts the
   real fd back on N. libfuse's reply then reaches the kernel with a ``unique`` the kernel never issued
   (:data:`ADOPTED_INIT_UNIQUE`); the kernel answers ``ENOENT`` and ``fuse_send_msg`` ignores exactly
   that errno silently. The kernel keeps what it negotiated with the first process, and libfuse,
   having seen the same INIT, negotiates the same values (buffer size, splice, async read).
   A fresh mount goes through the same door (:func:`mount_fuse_session` reads the kernel's INIT itself
   and replays it with its real ``unique``), which is how the INIT gets captured for the store.
3. **Resend what was lost.** Requests the dead process had read but not answered sit in the kernel's
   processing list; their readers would hang forever. ``FUSE_NOTIFY_RESEND`` (Linux >= 6.9, notify
   code 7) moves every such request back to the pending queue (``fuse_resend`` in fs/fuse/dev.c; it
   needs nothing negotiated, only a live connection). The resent requests carry
   ``FUSE_UNIQUE_RESEND`` (bit 63) in ``unique``, which libfuse echoes back unchanged. This is only
   correct for idempotent requests, which all of a read-only lazy layer's are. On an older kernel the
   notification fails with ``EINVAL``; then the requests in flight at a kill -9 stay stuck (a
   graceful stop, which answers them first, is still clean).
4. **Same numbers, same files.** The kernel keeps its inodes and open files: the adopting process must
   rebuild the same inode numbers (deterministic per layer) and accept file handles it never handed
   out (use ``fh = inode`` or another value derivable from the request), and must tolerate ``forget``
   for inodes and ``release`` for handles it has never seen.
   Readers stall from the old process's exit until the new one serves: adoption itself takes about a
   millisecond, so the stall is the new process's start-up. Rebuild the inode table from local state
   (the TOCs in the store, no registry round trip) before adopting, and adopt before anything slow.

Stopping: to restart, call ``pyfuse3.terminate()`` (no new requests are taken; requests in progress
finish, since ``pyfuse3.main`` returns only after its workers do) and then
``close_fuse_session(session, unmount=False)``: the process's own fd closes, the stored one keeps the
mount. One request can still slip through: a pyfuse3 worker already woken for a readable fd when
``terminate()`` runs reads a request, and libfuse drops it because the session has exited by then
(``fuse_session_receive_buf_int`` returns 0 when ``fuse_session_exited`` after the read); the next
start's resend recovers it. To really unmount, ``close_fuse_session(session, unmount=True)`` and
``restart.forget_stored_fuse_session``.

Service unit: ``FileDescriptorStoreMax=`` at least twice the number of mounts,
``FileDescriptorStorePreserve=restart`` (systemd 254; the default, and the only behaviour before: the
store survives ``systemctl restart`` and automatic restarts, and is flushed on a plain stop),
``NotifyAccess=main`` if the main process serves FUSE itself, ``all`` if child processes do (each
process serves one session, below). systemd closes a stored fd by itself once the kernel reports it
dead (``POLLERR`` after an unmount); the INIT memfd of that name is then dropped by
``restart.stored_fuse_session``. If a kernel FUSE request timeout is set
(``/proc/sys/fs/fuse/default_request_timeout``, Linux 6.14; 0, none, by default) it must exceed the
restart time: a request left unanswered that long aborts the connection.

Only one pyfuse3 session exists per process (pyfuse3 keeps it in module globals).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyfuse3

from fs.errors import ZsnapError

# include/uapi/linux/fuse.h
FUSE_INIT = 26
FUSE_NOTIFY_RESEND = 7
FUSE_INIT_EXT = 1 << 30
FUSE_HAS_RESEND = 1 << 39
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, pad
_OUT_HEADER = struct.Struct("<IiQ")  # len, error (the notify code when unique == 0), unique
_INIT_IN_HEAD = struct.Struct("<IIII")  # major, minor, max_readahead, flags (flags2 etc. follow)
# libfuse's receive buffer (FUSE_MAX_MAX_PAGES pages + FUSE_BUFFER_HEADER_SIZE): big enough for any
# request, and the kernel refuses reads into less than FUSE_MIN_READ_BUFFER.
_READ_BUFFER = 256 * os.sysconf("SC_PAGE_SIZE") + 0x1000
# The unique of a replayed INIT. The kernel numbers requests from 2 upwards in steps of 2 (bit 0 marks
# interrupts, bit 63 resends), so this even value in between is never pending: the reply to it is
# refused with ENOENT, which libfuse does not report.
ADOPTED_INIT_UNIQUE = 1 << 62


class FuseSessionError(ZsnapError):
    """A FUSE session could not be mounted, adopted or handed over."""


class FuseSessionGone(FuseSessionError):
    """The stored ``/dev/fuse`` connection is dead (unmounted or aborted while no one served it)."""


@dataclass(frozen=True)
class InitRequest:
    """The ``FUSE_INIT`` request (header and ``fuse_init_in``) exactly as the kernel sent it."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) < _IN_HEADER.size + _INIT_IN_HEAD.size:
            raise FuseSessionError(f"FUSE_INIT request too short ({len(self.raw)} bytes)")
        length, opcode = struct.unpack_from("<II", self.raw)
        if opcode != FUSE_INIT or length != len(self.raw):
            raise FuseSessionError(
                f"not a FUSE_INIT request (opcode {opcode}, length {length}/{len(self.raw)})"
            )

    @property
    def unique(self) -> int:
        unique: int = _IN_HEADER.unpack_from(self.raw)[2]
        return unique

    @property
    def protocol(self) -> tuple[int, int]:
        """The kernel's (major, minor) protocol version."""
        major, minor, _, _ = _INIT_IN_HEAD.unpack_from(self.raw, _IN_HEADER.size)
        return major, minor

    @property
    def flags(self) -> int:
        """The capability flags the kernel offered (``flags2`` as bits 32-63 with ``FUSE_INIT_EXT``)."""
        flags: int = _INIT_IN_HEAD.unpack_from(self.raw, _IN_HEADER.size)[3]
        if flags & FUSE_INIT_EXT and len(self.raw) >= _IN_HEADER.size + _INIT_IN_HEAD.size + 4:
            (flags2,) = struct.unpack_from("<I", self.raw, _IN_HEADER.size + _INIT_IN_HEAD.size)
            flags |= flags2 << 32
        return flags

    @property
    def kernel_can_resend(self) -> bool:
        """Whether the kernel announced ``FUSE_NOTIFY_RESEND`` support (``FUSE_HAS_RESEND``, Linux 6.9)."""
        return bool(self.flags & FUSE_HAS_RESEND)

    def with_unique(self, unique: int) -> bytes:
        """The same request under another ``unique`` (the one libfuse will reply to)."""
        fields = list(_IN_HEADER.unpack_from(self.raw))
        fields[2] = unique
        return _IN_HEADER.pack(*fields) + self.raw[_IN_HEADER.size :]


@dataclass
class FuseSession:
    """The pyfuse3 session of this process and what it takes to hand it to the next one.

    ``fd`` is the number libfuse serves (pyfuse3 does not expose it); until libfuse has read the
    replayed INIT it refers to a pipe and the device waits in ``parked_fd``. ``adopted`` says whether
    the connection came from a previous process, in which case libfuse does not know the mountpoint
    and cannot unmount it.
    """

    fd: int
    mountpoint: str
    init: InitRequest
    adopted: bool
    resent: bool = False
    parked_fd: int | None = None

    @property
    def device_fd(self) -> int:
        """An fd of the ``/dev/fuse`` connection itself, whether or not the INIT replay is done."""
        return self.fd if self.parked_fd is None else self.parked_fd


def _fuse_device_fds() -> set[int]:
    fds = set()
    for entry in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{entry}") == "/dev/fuse":
                fds.add(int(entry))
    return fds


def read_init_request(fd: int, *, timeout: float = 10.0) -> InitRequest:
    """Read the kernel's ``FUSE_INIT`` from a freshly mounted ``/dev/fuse`` fd.

    The kernel queues INIT while mounting, so it is normally there at once.

    Raises:
      FuseSessionError: nothing arrived within ``timeout`` or the first request is not INIT.
    """
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        raise FuseSessionError(f"no FUSE_INIT from the kernel within {timeout:g}s")
    return InitRequest(os.read(fd, _READ_BUFFER))


def _replay_init(ops: Any, session: FuseSession, request: bytes) -> None:
    """Make ``request`` the first read of ``session.fd``; ``ops.init`` puts the device back."""
    fd = session.fd
    session.parked_fd = os.dup(fd)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, request)
    finally:
        os.close(write_end)
    os.dup2(read_end, fd, inheritable=False)
    os.close(read_end)  # fd is the pipe's only reader now: the pipe dies (and leaves epoll) on the swap

    had_own_init = "init" in vars(ops)
    original_init = ops.init

    def init() -> None:
        # Called synchronously from libfuse's do_init, after it read the INIT and before it replies.
        parked, session.parked_fd = session.parked_fd, None
        assert parked is not None, "libfuse calls init once, and only after the device was parked"
        os.dup2(parked, fd, inheritable=False)
        os.close(parked)
        if had_own_init:
            ops.init = original_init
        else:
            del ops.init
        original_init()

    ops.init = init


def mount_fuse_session(ops: Any, mountpoint: str, options: Iterable[str]) -> FuseSession:
    """Mount a new FUSE file system like ``pyfuse3.init`` and keep what a successor needs to adopt it.

    Run ``pyfuse3.main`` next. Options must not include ``auto_unmount`` (it unmounts when this
    process dies, which is what this module avoids).

    Raises:
      FuseSessionError: ``auto_unmount`` was asked for, or the mount did not behave as expected.
    """
    options = set(options)
    if "auto_unmount" in options:
        raise FuseSessionError("auto_unmount unmounts on exit; a restartable session cannot use it")
    before = _fuse_device_fds()
    pyfuse3.init(ops, mountpoint, options)
    new = _fuse_device_fds() - before
    if len(new) != 1:
        pyfuse3.close(unmount=True)
        raise FuseSessionError(f"expected one new /dev/fuse fd after mounting, found {sorted(new)}")
    (fd,) = new
    try:
        init = read_init_request(fd)
    except (OSError, FuseSessionError):
        pyfuse3.close(unmount=True)
        raise
    session = FuseSession(fd=fd, mountpoint=os.path.abspath(mountpoint), init=init, adopted=False)
    _replay_init(ops, session, init.raw)  # its own unique: the kernel accepts libfuse's reply
    return session


def connection_alive(fd: int) -> bool:
    """Whether the FUSE connection behind ``fd`` is still up (the kernel flags a dead one POLLERR)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not any(revents & (select.POLLERR | select.POLLNVAL) for _, revents in poller.poll(0))


def resend_pending(fd: int) -> bool:
    """Ask the kernel to queue again every request on this connection that has no reply yet.

    Returns:
      True if the kernel did; False if it does not know ``FUSE_NOTIFY_RESEND`` (Linux < 6.9).

    Raises:
      FuseSessionGone: the connection is dead (``ENODEV``).
      OSError: any other failure writing to the device.
    """
    try:
        os.write(fd, _OUT_HEADER.pack(_OUT_HEADER.size, FUSE_NOTIFY_RESEND, 0))
    except OSError as e:
        if e.errno == errno.ENODEV:
            raise FuseSessionGone("the stored FUSE connection is no longer mounted") from e
        if e.errno == errno.EINVAL:
            return False
        raise
    return True


def adopt_fuse_session(
    ops: Any, fd: int, init: InitRequest, mountpoint: str, options: Iterable[str] = (), *, resend: bool = True
) -> FuseSession:
    """Serve the FUSE connection on ``fd`` (inherited from a previous process) with ``ops``.

    Checks the connection is alive and has the kernel resend the requests the previous process left
    unanswered (they wait until ``pyfuse3.main`` runs), then sets up pyfuse3 on ``/dev/fd/<fd>`` and
    arranges for libfuse to see ``init`` as its first request. Run ``pyfuse3.main`` next. The mount
    options were fixed at mount time; ``options`` only matter to libfuse itself (e.g. ``debug``).
    ``resend=False`` skips the resend (tests use it to show what the resend is for).

    Raises:
      FuseSessionGone: the connection died while no one served it; ``fd`` is closed, mount afresh.
    """
    try:
        if not connection_alive(fd):
            raise FuseSessionGone("the stored FUSE connection is no longer mounted")
        resent = resend and resend_pending(fd)
    except FuseSessionGone:
        os.close(fd)
        raise
    pyfuse3.init(ops, f"/dev/fd/{fd}", set(options))
    session = FuseSession(
        fd=fd, mountpoint=os.path.abspath(mountpoint), init=init, adopted=True, resent=resent
    )
    _replay_init(ops, session, init.with_unique(ADOPTED_INIT_UNIQUE))
    return session


def close_fuse_session(session: FuseSession, *, unmount: bool) -> None:
    """Release pyfuse3's session after ``pyfuse3.main`` returned.

    With ``unmount=False`` (a restart) only this process's fd is closed; a stored duplicate keeps the
    mount. With ``unmount=True`` the file system is unmounted; libfuse can do that only for a session it
    mounted itself, so an adopted one is detached here (``umount -l``, as libfuse does).
    """
    if unmount and session.adopted:
        detach_mount(session.mountpoint)
    pyfuse3.close(unmount=unmount and not session.adopted)


def detach_mount(mountpoint: str) -> None:
    """Detach whatever is mounted at ``mountpoint`` (``umount -l``); nothing mounted is fine."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(mountpoint.encode(), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted (any more)
            raise FuseSessionError(f"cannot unmount {mountpoint}: {os.strerror(err)}")
