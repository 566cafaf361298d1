"""A stand-in for systemd's file descriptor store, for tests (tests/fs/test_fuse_restart.py).

:class:`FdStore` binds a ``NOTIFY_SOCKET`` datagram socket, keeps the fds sent with ``FDSTORE=1`` under
their ``FDNAME``, drops them on ``FDSTOREREMOVE=1``, and starts processes with the stored fds as
``LISTEN_FDS`` (from fd 3, names in ``LISTEN_FDNAMES``, ``LISTEN_PID`` set by :data:`LAUNCHER` in the
child, as systemd does). Like systemd it keeps stored fds while passing them on, and closes those that
poll ``POLLERR``/``POLLHUP`` (a dead FUSE connection).
"""

from __future__ import annotations

import array
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Runs as the server's parent-to-be: moves the store's fds to 3, 4, … and sets LISTEN_* like systemd.
LAUNCHER = """
import fcntl, os, sys
fds = [int(x) for x in os.environ.pop("TEST_STORE_FDS").split(",") if x]
names = os.environ.pop("TEST_STORE_NAMES")
n = len(fds)
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3 + n) for fd in fds]
for fd in fds:
    if fd >= 3 + n:
        os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
if n:
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(n), LISTEN_FDNAMES=names)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


class FdStore:
    """Plays systemd's file descriptor store for the servers it starts."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(socket_path))
        self.stored: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        fd_size = array.array("i").itemsize
        while True:
            try:
                msg, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * fd_size))
            except OSError:
                return
            if not msg and not ancdata:
                return
            fds = array.array("i")
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fd_size])
            fields = dict(line.split("=", 1) for line in msg.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append(msg.decode())
                name = fields.get("FDNAME", "stored")
                if fields.get("FDSTORE") == "1":
                    self.stored.extend((name, fd) for fd in fds)
                    continue
                for fd in fds:
                    os.close(fd)
                if fields.get("FDSTOREREMOVE") == "1":
                    for _, fd in [e for e in self.stored if e[0] == name]:
                        os.close(fd)
                    self.stored = [e for e in self.stored if e[0] != name]

    def names(self) -> list[str]:
        with self.lock:
            return sorted(name for name, _ in self.stored)

    def wait_names(self, expected: list[str], timeout: float = 5.0) -> list[str]:
        """The stored names once they are ``expected`` (messages are handled by another thread)."""
        deadline = time.monotonic() + timeout
        while (names := self.names()) != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return names

    def _drop_dead(self) -> None:
        # systemd watches stored fds for POLLERR/POLLHUP and closes them (FDPOLL=1, the default).
        alive = []
        for name, fd in self.stored:
            revents = _poll(fd)
            if revents & (select.POLLERR | select.POLLHUP):
                os.close(fd)
            else:
                alive.append((name, fd))
        self.stored = alive

    def spawn(
        self,
        argv: list[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        stdout_to_log: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``python argv…`` with the stored fds in LISTEN_FDS and NOTIFY_SOCKET set (plus ``env``;
        stdout is a pipe unless ``stdout_to_log``)."""
        with self.lock:
            self._drop_dead()
            entries = list(self.stored)
        extra, env = env or {}, dict(os.environ)
        env.update(
            NOTIFY_SOCKET=str(self.socket_path),
            TEST_STORE_FDS=",".join(str(fd) for _, fd in entries),
            TEST_STORE_NAMES=":".join(name for name, _ in entries),
            PYTHONPATH=str(REPO_ROOT),
        )
        env.update(extra)
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, *argv],
                env=env,
                cwd=REPO_ROOT,
                stdout=log if stdout_to_log else subprocess.PIPE,
                stderr=log,
                pass_fds=[fd for _, fd in entries],
            )

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)
        with self.lock:
            for _, fd in self.stored:
                os.close(fd)
            self.stored = []


def _poll(fd: int) -> int:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return sum(revents for _, revents in poller.poll(0))
