"""Private instances of the real registry and containerd, for the demo and the benchmarks.

Each runs on a free loopback port / a socket under a work directory of its own (never the system's
``/run/containerd``), and is stopped by PID. Each can run inside a network namespace (``prefix``, e.g.
``["nsenter", "--net=/run/netns/NAME", "--"]``) and in a session of its own, so a Ctrl-C in the terminal
reaches only the Python process, which then stops them in order. Tests have their own fixtures in
``tests/fixtures/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fs.errors import ZsnapError

__all__ = ["LocalContainerd", "LocalRegistry", "StargzSnapshotter", "ZsnapServe", "stop_pid"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_ok(url: str, prefix: Sequence[str]) -> bool:
    """Does ``url`` answer 2xx, seen from the network namespace ``prefix`` enters (or this one)?"""
    if prefix:
        cmd = [*prefix, "curl", "-sf", "-o", "/dev/null", "--max-time", "1", url]
        return subprocess.run(cmd, capture_output=True).returncode == 0
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


def stop_pid(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10.0) -> None:
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
    """Wait until ``predicate()``; if it never comes (or Ctrl-C), stop ``proc``: nobody else holds it yet."""
    deadline = time.monotonic() + timeout
    try:
        while not predicate():
            if proc.poll() is not None:
                raise ZsnapError(f"{what} exited with {proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise ZsnapError(f"{what} did not become ready within {timeout}s")
            time.sleep(0.05)
    except BaseException:
        stop_pid(proc)
        raise


class LocalRegistry:
    """Debian's ``docker-registry`` (distribution 2.8) on 127.0.0.1:<free port>; ``.host`` is HOST:PORT.

    ``data`` (default ``root/data``) holds the blobs, so a cache directory can outlive the registry;
    ``host`` picks the address (inside a network namespace every port is free); ``prefix`` runs it there.
    """

    def __init__(
        self, root: Path, *, data: Path | None = None, host: str | None = None, prefix: Sequence[str] = ()
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.host = host or f"127.0.0.1:{_free_port()}"
        self._prefix = list(prefix)
        config = root / "config.yml"
        storage = data or root / "data"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {storage}}}, redirect: {{disable: true}}}}\n"
            f"http: {{addr: {self.host}}}\n"
        )
        self._proc = subprocess.Popen(
            [*self._prefix, "docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait(self._ready, self._proc, "docker-registry")

    def _ready(self) -> bool:
        return _http_ok(f"http://{self.host}/v2/", self._prefix)

    def stop(self) -> None:
        stop_pid(self._proc)


class LocalContainerd:
    """containerd with its own root, state and socket under ``root``; ``ctr(...)`` talks to it.

    ``proxy_snapshotters`` maps snapshotter names to the sockets containerd dials (``{"zsnap": SOCK}``).
    ``cri_snapshotter`` enables the CRI plugin with that snapshotter and snapshot annotations on (what a
    remote snapshotter needs to be told which layer to mount lazily), reaching ``plain_http_hosts`` over
    plain HTTP; ``ctr`` then works in CRI's namespace ``k8s.io``. ``prefix`` runs containerd (and so its
    pulls) inside a network namespace; the socket is a file, so clients need no prefix.
    """

    NAMESPACE = "zsnap-bench"
    CRI_NAMESPACE = "k8s.io"

    def __init__(
        self,
        root: Path,
        *,
        proxy_snapshotters: Mapping[str, str] | None = None,
        cri_snapshotter: str | None = None,
        plain_http_hosts: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.address = str(root / "c.sock")
        self.namespace = self.CRI_NAMESPACE if cri_snapshotter else self.NAMESPACE
        disabled = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]  # fmt: skip
        if not cri_snapshotter:
            disabled.append("io.containerd.grpc.v1.cri")
        text = (
            "version = 2\n"
            f'root = "{root / "root"}"\nstate = "{root / "state"}"\n'
            f"disabled_plugins = {json.dumps(disabled)}\n"
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n'
        )
        for name, sock in (proxy_snapshotters or {}).items():
            text += f'[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{sock}"\n'
        if cri_snapshotter:
            cri = '[plugins."io.containerd.grpc.v1.cri"'
            text += (
                f'{cri}.containerd]\n  snapshotter = "{cri_snapshotter}"\n'
                "  disable_snapshot_annotations = false\n"
            )
            for host in plain_http_hosts:
                text += f'{cri}.registry.mirrors."{host}"]\n  endpoint = ["http://{host}"]\n'
        config = root / "config.toml"
        config.write_text(text)
        self._log = open(root / "containerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [*prefix, "containerd", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            _wait(lambda: os.path.exists(self.address) and self._ctr_ok(), self._proc, "containerd")
        except BaseException:
            self._log.close()
            raise

    def log_tail(self, n: int = 2000) -> str:
        return (self.root / "containerd.log").read_text(errors="replace")[-n:]

    def _ctr_ok(self) -> bool:
        return self.ctr("version", check=False).returncode == 0

    def ctr(self, *args: str, check: bool = True, tool: str = "ctr") -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [tool, "--address", self.address, "--namespace", self.namespace, *args],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            detail = proc.stderr.strip()[-1500:]
            raise ZsnapError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {detail}")
        return proc

    def stop(self) -> None:
        stop_pid(self._proc)
        self._log.close()
        subprocess.run(["umount", "-R", str(self.root / "state")], capture_output=True)


class ZsnapServe:
    """``zsnap serve``: the proxy snapshotter containerd dials at ``address`` (``root/zsnap.sock``).

    Its state lives in ``root`` (store, mounts). ``prefix`` runs it inside a network namespace, beside
    the registry it fetches from. Stopped with SIGTERM, which unmounts its layers.
    """

    def __init__(
        self, root: Path, *, prefix: Sequence[str] = (), extra: Sequence[str] = (), metrics: bool = False
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.address = str(root / "zsnap.sock")
        self.prefix = list(prefix)
        self._log = open(root / "serve.log", "ab")  # noqa: SIM115 - closed in stop()
        argv = [sys.executable, "-m", "snapshotter", "--root", str(root), "serve", "--socket", self.address]
        # several instances may run at once: a free port of their own, or none
        self.metrics_port = _free_port() if metrics else None
        argv += ["--metrics-address", f"127.0.0.1:{self.metrics_port}" if metrics else ""]
        self._proc = subprocess.Popen(
            [*prefix, *argv, *extra], stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            _wait(lambda: os.path.exists(self.address), self._proc, "zsnap serve", timeout=60)
        except BaseException:
            self._log.close()
            raise

    def log_tail(self, n: int = 2000) -> str:
        return (self.root / "serve.log").read_text(errors="replace")[-n:]

    def metrics(self) -> dict[str, float]:
        """The daemon's Prometheus series without labels (``{name: value}``), scraped from inside its
        network namespace; {} without a metrics endpoint."""
        if self.metrics_port is None:
            return {}
        scrape = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1]).read().decode())"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        argv = [*self.prefix, sys.executable, "-c", scrape, url]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
        out = {}
        for line in done.stdout.splitlines():
            name, _, value = line.partition(" ")
            if name and not name.startswith("#") and "{" not in name:
                out[name] = float(value)
        return out

    def stop(self) -> None:
        stop_pid(self._proc, timeout=60)
        self._log.close()


class StargzSnapshotter:
    """stargz-snapshotter's ``containerd-stargz-grpc`` (not packaged on Debian 12: only when on PATH), the
    peer lazy snapshotter, at ``root/stargz.sock``, reaching ``plain_http_hosts`` over plain HTTP."""

    def __init__(
        self, root: Path, *, plain_http_hosts: Sequence[str] = (), prefix: Sequence[str] = ()
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.address = str(root / "stargz.sock")
        config = root / "config.toml"
        config.write_text("".join(
            f'[[resolver.host."{host}".mirrors]]\n  host = "{host}"\n  insecure = true\n'
            for host in plain_http_hosts
        ))  # fmt: skip
        self._log = open(root / "stargz.log", "ab")  # noqa: SIM115 - closed in stop()
        argv = ["containerd-stargz-grpc", "--address", self.address, "--root", str(root / "state"),
                "--config", str(config), "--log-level", "warn"]  # fmt: skip
        self._proc = subprocess.Popen(
            [*prefix, *argv], stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            _wait(lambda: os.path.exists(self.address), self._proc, "containerd-stargz-grpc", timeout=60)
        except BaseException:
            self._log.close()
            raise

    def stop(self) -> None:
        stop_pid(self._proc, timeout=60)
        self._log.close()
        subprocess.run(["umount", "-R", "-l", str(self.root / "state")], capture_output=True)
