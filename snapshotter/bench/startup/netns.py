"""A private network namespace with a shaped loopback, for the startup benchmark.

The registry, the delay proxy, containerd and ``zsnap serve`` run inside it (``nsenter --net=…``, network
namespace only: ``ip netns exec`` would also unshare the mount namespace, and FUSE mounts made there are
invisible to containerd and runc). Its ``lo`` gets a token-bucket filter, so bandwidth is shaped in the
kernel; the host's own loopback is never touched (every ``tc``/``ip link`` runs inside the namespace).
This kernel has no netem, so round-trip latency is added by :mod:`.delayproxy` instead.

With ``shaped_port`` only TCP traffic from that port (the delay proxy's answers) goes through the tbf:
the registry answers the proxy over the same loopback, and shaping every packet would charge each
downloaded byte twice (registry -> proxy -> client), halving the bandwidth asked for.

Namespaces are named ``zsnap-bench-<pid>-<n>``; :func:`remove_stale` deletes those whose creating process
is gone (a run killed with SIGKILL), so a failure never leaves one behind for long.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from pathlib import Path

from fs.errors import ZsnapError

__all__ = ["NETNS_DIR", "NetNamespace", "remove_stale"]

NETNS_DIR = Path("/run/netns")
PREFIX = "zsnap-bench-"
_counter = itertools.count()


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)


class NetNamespace:
    """``with NetNamespace(rate_mbit=200) as ns: subprocess.run([*ns.prefix, "cmd"])``.

    Args:
      rate_mbit: bandwidth of the namespace's loopback (tbf, burst 1 MB, latency 100 ms); ``None`` leaves
        it unshaped.
      shaped_port: shape only TCP segments sent from this port (default: everything on ``lo``).
      name: the namespace's name (default ``zsnap-bench-<pid>-<n>``).
    """

    def __init__(
        self, rate_mbit: float | None = 200.0, *, shaped_port: int | None = None, name: str | None = None
    ) -> None:
        if rate_mbit is not None and not 0 < rate_mbit < float("inf"):
            raise ZsnapError(f"bandwidth must be a positive number of Mbit/s, not {rate_mbit}")
        self.name = name or f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.rate_mbit = rate_mbit
        self.shaped_port = shaped_port
        self.path = NETNS_DIR / self.name
        self._created_dir = False
        self._open = False

    @property
    def prefix(self) -> list[str]:
        """The argv prefix that runs a command in this namespace (and only its network namespace)."""
        return ["nsenter", f"--net={self.path}", "--"]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace; raise :class:`ZsnapError` with its stderr if it fails."""
        proc = subprocess.run([*self.prefix, *argv], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ZsnapError(f"{' '.join(argv)} in netns {self.name} failed: {proc.stderr.strip()}")
        return proc

    def open(self) -> None:
        remove_stale()
        self._created_dir = not NETNS_DIR.exists()
        proc = _ip("netns", "add", self.name)
        if proc.returncode != 0:
            raise ZsnapError(f"ip netns add {self.name} failed: {proc.stderr.strip()}")
        self._open = True
        try:
            self.run("ip", "link", "set", "lo", "up")
            tbf = ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", "1mb", "latency", "100ms"]
            if self.rate_mbit is not None and self.shaped_port is None:
                self.run("tc", "qdisc", "add", "dev", "lo", "root", *tbf)
            elif self.rate_mbit is not None:
                # htb only classifies (both classes unlimited; this kernel has no prio qdisc); the tbf below
                # class 1:10 shapes what the filter sends there, everything else takes class 1:20
                lo = ["dev", "lo"]
                self.run("tc", "qdisc", "add", *lo, "root", "handle", "1:", "htb", "default", "20")
                for cls in ("1:10", "1:20"):
                    unlimited = ["htb", "rate", "100gbit", "quantum", "60000"]
                    self.run("tc", "class", "add", *lo, "parent", "1:", "classid", cls, *unlimited)
                self.run("tc", "qdisc", "add", *lo, "parent", "1:10", "handle", "10:", *tbf)
                match = ["u32", "match", "ip", "sport", str(self.shaped_port), "0xffff", "flowid", "1:10"]
                self.run("tc", "filter", "add", *lo, "parent", "1:", "protocol", "ip", "prio", "1", *match)
        except BaseException:
            self.close()
            raise

    def qdisc(self) -> str:
        """``tc qdisc show dev lo`` inside the namespace (what the shaping really is), one line."""
        return "; ".join(self.run("tc", "qdisc", "show", "dev", "lo").stdout.strip().splitlines())

    def close(self) -> None:
        """Delete the namespace (idempotent). Processes still inside keep it alive until they exit, so the
        caller stops its own processes first."""
        if self._open:
            _ip("netns", "del", self.name)
            self._open = False
        if self._created_dir:
            _remove_netns_dir()
            self._created_dir = False

    def __enter__(self) -> NetNamespace:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remove_netns_dir() -> None:
    """Undo what the first ``ip netns add`` did: it bind-mounts ``/run/netns`` on itself (shared) and then
    makes the directory. A plain umount fails while another namespace is mounted below, and rmdir while
    anything is left in it, so someone else's namespace is never touched."""
    if NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
        subprocess.run(["umount", str(NETNS_DIR)], capture_output=True)
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()


def remove_stale() -> list[str]:
    """Delete ``zsnap-bench-<pid>-*`` namespaces whose creating process no longer runs; return their names."""
    removed: list[str] = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        if not entry.name.startswith(PREFIX):
            continue
        pid = entry.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", entry.name)
            removed.append(entry.name)
    return removed
