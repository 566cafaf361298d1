"""Test-only FUSE server for tests/fs/test_fuse_restart.py: a deterministic tree with one slow big file.

    python -m tests.fs.fuse_restart_server MOUNTPOINT --read-delay 0.05

Tree (inode numbers are fixed, so every incarnation of the server means the same files by them)::

    /        inode 1
    /big     inode 2, BIG_SIZE bytes of :func:`big_bytes`, every read sleeps --read-delay
    /small   inode 3, SMALL_CONTENT

Files are opened with ``direct_io`` so every read of the test reaches the server (``--page-cache``:
through the page cache, with the kernel's read-ahead, as zsnap serves them). File handles are the
inode numbers: a handle from a previous incarnation means the same file. Unknown handles and forgets
are accepted.

The server adopts the connection stored under the fd name ``fuse`` in ``LISTEN_FDS`` if there is one,
else mounts MOUNTPOINT; it stores the session (``NOTIFY_SOCKET``) and prints one line
``ready {"adopted": bool, "resent": bool, "fd": int}`` once it serves. SIGTERM stops it for a
restart (requests in flight are answered, the mount stays); SIGINT unmounts and exits; an unmount from
outside makes it exit. Both of the latter drop the stored fd.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

from fs.lazy import restart, sdnotify, session

FD_NAME = "fuse"
BIG_SIZE = 4 * 1024 * 1024
SMALL_CONTENT = b"small file, served by every incarnation\n"
_BLOCK = 4096
_FILES = {2: (b"big", BIG_SIZE), 3: (b"small", len(SMALL_CONTENT))}

log = logging.getLogger("fuse_restart_server")


def big_bytes(offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset+size)`` of /big: each 4 KiB block repeats its block number (8 bytes LE)."""
    end = min(offset + size, BIG_SIZE)
    if offset >= end:
        return b""
    first, last = offset // _BLOCK, (end - 1) // _BLOCK
    data = b"".join(i.to_bytes(8, "little") * (_BLOCK // 8) for i in range(first, last + 1))
    start = offset - first * _BLOCK
    return data[start : start + end - offset]


class RestartableTree(pyfuse3.Operations):
    def __init__(self, read_delay: float, *, page_cache: bool = False) -> None:
        super().__init__()
        self.read_delay = read_delay
        self.page_cache = page_cache
        self.reads = 0
        self.in_flight = 0
        self.big_started = 0
        self.big_answered = 0

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attrs.st_mode = stat.S_IFDIR | 0o755
            attrs.st_nlink = 2
        elif inode in _FILES:
            attrs.st_mode = stat.S_IFREG | 0o444
            attrs.st_nlink = 1
            attrs.st_size = _FILES[inode][1]
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attrs.entry_timeout = attrs.attr_timeout = 300
        return attrs

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None):
        if parent_inode == pyfuse3.ROOT_INODE:
            for inode, (file_name, _) in _FILES.items():
                if name == file_name:
                    return self._attrs(inode)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def forget(self, inode_list) -> None:
        return None  # the tree is fixed; forgets for inodes a predecessor handed out are fine too

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token) -> None:
        for inode, (name, _) in list(_FILES.items())[start_id:]:
            if not pyfuse3.readdir_reply(token, name, self._attrs(inode), inode - 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode not in _FILES:
            raise pyfuse3.FUSEError(errno.EISDIR if inode == pyfuse3.ROOT_INODE else errno.ENOENT)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self.page_cache:  # like zsnap's LazyOperations: kernel read-ahead sends async reads
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        self.reads += 1
        if fh == 2:
            self.big_started += 1
            self.in_flight += 1
            try:
                await trio.sleep(self.read_delay)
            finally:
                self.in_flight -= 1
            self.big_answered += 1
            return big_bytes(off, size)
        if fh == 3:
            return SMALL_CONTENT[off : off + size]
        raise pyfuse3.FUSEError(errno.EBADF)

    async def release(self, fh: int) -> None:
        return None  # also for handles a predecessor handed out


async def _serve(args: argparse.Namespace) -> int:
    ops = RestartableTree(args.read_delay, page_cache=args.page_cache)
    t0 = time.perf_counter()
    fuse = restart.start_fuse_session(
        ops,
        args.mountpoint,
        {"fsname=restarttest", "ro", "allow_other"},
        name=FD_NAME,
        passed=sdnotify.listen_fds(),
        resend=not args.no_resend,
    )
    stop_reason = "an unmount"  # main returns by itself when the file system is unmounted

    async def on_signal(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal stop_reason
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                stop_reason = "a restart" if signum == signal.SIGTERM else "an unmount request"
                log.info("%s with %d reads in flight", signal.Signals(signum).name, ops.in_flight)
                pyfuse3.terminate()  # no new requests; the ones in flight finish before main returns
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signal)  # before 'ready': a signal right after it is handled
        ready = {"adopted": fuse.adopted, "resent": fuse.resent, "fd": fuse.fd}
        log.info(
            "ready %.3f s after the process started (session set up in %.1f ms)",
            _age(),
            (time.perf_counter() - t0) * 1000,
        )
        log.info("kernel FUSE %d.%d, can resend: %s", *fuse.init.protocol, fuse.init.kernel_can_resend)
        print("ready " + json.dumps(ready), flush=True)
        await pyfuse3.main(min_tasks=2, max_tasks=32)
        nursery.cancel_scope.cancel()
    session.close_fuse_session(fuse, unmount=stop_reason == "an unmount request")
    if stop_reason != "a restart":  # nothing to hand over any more
        restart.forget_stored_fuse_session(FD_NAME)
    log.info(
        "served %d reads (%d of /big answered, %d unanswered); exiting for %s",
        ops.reads,
        ops.big_answered,
        ops.big_started - ops.big_answered,
        stop_reason,
    )
    return 0


def _age() -> float:
    """Seconds since this process started (exec included), at clock-tick resolution."""
    with open("/proc/self/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--read-delay", type=float, default=0.05)
    parser.add_argument("--page-cache", action="store_true", help="no direct_io: reads go through the cache")
    parser.add_argument("--no-resend", action="store_true", help="adopt without FUSE_NOTIFY_RESEND")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    return trio.run(_serve, args)


if __name__ == "__main__":
    sys.exit(main())
