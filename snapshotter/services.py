"""Private instances of the real registry and containerd, for the demo and the benchmarks.

Each runs on a free loopback port / a socket under a work directory of its own (never the system's
``/run/containerd``), and is stopped by PID. Tests have their own fixtures in ``tests/fixtures/``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fs.errors import ZsnapError

__all__ = ["LocalContainerd", "LocalRegistry", "stop_pid"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait(
    predicate: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise ZsnapError(f"{what} exited with {proc.returncode} while starting")
        if time.monotonic() > deadline:
            stop_pid(proc)
            raise ZsnapError(f"{what} did not become ready within {timeout}s")
        time.sleep(0.05)


class LocalRegistry:
    """Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1:<free port>; ``.host`` is HOST:PORT."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.host = f"127.0.0.1:{_free_port()}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, redirect: {{disable: true}}}}\n"
            f"http: {{addr: {self.host}}}\n"
        )
        self._proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(self._ready, self._proc, "docker-registry")

    def _ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_pid(self._proc)


class LocalContainerd:
    """containerd with its own root, state and socket under ``root``; ``ctr(...)`` talks to it."""

    NAMESPACE = "zsnap-bench"

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.address = str(root / "c.sock")
        config = root / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
        )
        self._log = open(root / "containerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        _wait(lambda: os.path.exists(self.address) and self._ctr_ok(), self._proc, "containerd")

    def _ctr_ok(self) -> bool:
        return self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True, tool: str = "ctr") -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool, "--address", self.address, "--namespace", self.NAMESPACE, *args],
            capture_output=True, text=True,
        )
        if check and proc.returncode != 0:
            detail = proc.stderr.strip()[-1500:]
            raise ZsnapError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {detail}")
        return proc

    def stop(self) -> None:
        stop_pid(self._proc)
        self._log.close()
        subprocess.run(["umount", "-R", str(self.root / "state")], capture_output=True)
