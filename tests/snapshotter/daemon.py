"""Run ``zsnap serve`` as a subprocess for tests: a short temp dir, an explicit config, a NOTIFY_SOCKET.

:func:`start_daemon` binds a datagram socket, passes it as ``NOTIFY_SOCKET`` and returns once the daemon
sent ``READY=1`` (the contract systemd relies on), so a test never polls the gRPC socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from snapshotter.proto import snapshots_pb2_grpc
from tests.fixtures.common import stop_process

REPO = Path(__file__).resolve().parents[2]


def zsnap_command(root: Path, module: str = "snapshotter") -> list[str]:
    """``zsnap --root ROOT`` run from this worktree (``module``: another entry point with the same CLI)."""
    return [sys.executable, "-m", module, "--root", str(root)]


@dataclass
class Daemon:
    """A running ``zsnap serve``; ``notes`` collects every notify datagram received so far."""

    base: Path
    root: Path
    socket: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    notify_sock: socket.socket
    metrics_port: int | None = None
    notes: list[str] = field(default_factory=list)
    _channel: grpc.Channel | None = None

    def stub(self) -> snapshots_pb2_grpc.SnapshotsStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return snapshots_pb2_grpc.SnapshotsStub(self._channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_note(self, needle: str, timeout: float = 30.0) -> str:
        """Wait for a notify datagram containing ``needle``; returns it."""
        deadline = time.monotonic() + timeout
        for note in self.notes:
            if needle in note:
                return note
        while time.monotonic() < deadline:
            self.notify_sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                note = self.notify_sock.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"zsnap serve exited {self.proc.returncode}:\n{self.log()}") from None
                continue
            self.notes.append(note)
            if needle in note:
                return note
        raise TimeoutError(f"no {needle!r} from zsnap serve within {timeout}s:\n{self.log()}")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        stop_process(self.proc)
        self.notify_sock.close()


def short_tempdir(prefix: str = "zs-") -> Path:
    """A temp dir with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def start_daemon(
    base: Path,
    *,
    root: Path | None = None,
    socket_path: Path | None = None,
    config: str = "",
    args: Sequence[str] = (),
    abstract_notify: bool = False,
    module: str = "snapshotter",
    timeout: float = 30.0,
) -> Daemon:
    """Start ``zsnap serve`` under ``base`` (config text ``config``, flags ``args``); wait for READY=1."""
    root = root or base / "root"
    socket_path = socket_path or base / "zsnap.sock"
    config_path = base / "config.toml"
    config_path.write_text(config)
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract_notify:
        name = f"zsnap-test-{os.getpid()}-{time.monotonic_ns()}"
        notify_sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(base / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        notify_sock.bind(address)
    log_path = base / "zsnap.log"
    serve = ["serve", "--config", str(config_path), "--socket", str(socket_path), *args]
    cmd = [*zsnap_command(root, module), "-v", *serve]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "NOTIFY_SOCKET": address}, start_new_session=True,
        )  # fmt: skip
    daemon = Daemon(base=base, root=root, socket=socket_path, log_path=log_path, proc=proc,
                    notify_sock=notify_sock)  # fmt: skip
    try:
        ready = daemon.wait_note("READY=1", timeout=timeout)
    except BaseException:
        daemon.close()
        raise
    marker = "metrics on "
    if marker in ready:
        daemon.metrics_port = int(ready.split(marker, 1)[1].split()[0].rsplit(":", 1)[1])
    return daemon


@contextlib.contextmanager
def running_daemon(base: Path, **kw: object) -> Iterator[Daemon]:
    daemon = start_daemon(base, **kw)  # type: ignore[arg-type]
    try:
        yield daemon
    finally:
        daemon.close()
