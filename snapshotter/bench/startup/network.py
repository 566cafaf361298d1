"""The benchmark's network: a registry behind the delay proxy, in a shaped namespace (or on loopback).

``with network(data, work, shaped=True, bandwidth_mbit=200, rtt_ms=20) as net:`` starts, in order, the
namespace (:mod:`.netns`), ``docker-registry`` over the storage directory ``data`` and the delay proxy
(:mod:`.delayproxy`) in front of it, and stops them in reverse order on the way out, Ctrl-C included.
Clients dial ``net.registry_host`` (the proxy); anything that must reach it runs with ``net.prefix``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from fs.errors import ZsnapError
from snapshotter.bench.startup.netns import NetNamespace
from snapshotter.services import LocalRegistry, stop_pid

__all__ = ["Network", "network"]

REGISTRY_IN_NETNS = "127.0.0.1:5000"
PROXY_PORT_IN_NETNS = 5001


@dataclasses.dataclass
class Network:
    prefix: list[str]  # runs a command inside the namespace ([] on plain loopback)
    registry_host: str  # HOST:PORT of the delay proxy in front of the registry
    proxy_stats: Path  # the proxy's byte counters (JSON)
    description: str


class _Proxy:
    """The delay proxy as a child process, in its own session; stopped by PID."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True)  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.stop()
            raise ZsnapError(f"the delay proxy failed to start: {self.proc.stderr.read()[-800:]}")

    def stop(self) -> None:
        stop_pid(self.proc)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def network(
    data: Path, work: Path, *, shaped: bool = True, bandwidth_mbit: float = 200.0, rtt_ms: float = 20.0
) -> Iterator[Network]:
    """Registry (storage ``data``) + delay proxy, in a shaped namespace if ``shaped``; see the module doc."""
    with contextlib.ExitStack() as stack:
        prefix: list[str] = []
        description = "host loopback, unshaped"
        if shaped:
            ns = stack.enter_context(NetNamespace(bandwidth_mbit, shaped_port=PROXY_PORT_IN_NETNS))
            prefix = ns.prefix
            description = f"netns {ns.name} ({ns.qdisc()}) + {rtt_ms:g} ms RTT (delay proxy)"
        registry = LocalRegistry(work / "registry", data=data, prefix=prefix,
                                 host=REGISTRY_IN_NETNS if shaped else None)  # fmt: skip
        stack.callback(registry.stop)
        stats = work / "proxy-stats.json"
        argv = [*prefix, sys.executable, "-m", "snapshotter.bench.startup.delayproxy"]
        argv += [
            "--upstream",
            registry.host,
            "--rtt-ms",
            str(rtt_ms if shaped else 0.0),
            "--stats-file",
            str(stats),
        ]
        if shaped:
            argv += ["--listen", f"127.0.0.1:{PROXY_PORT_IN_NETNS}"]
        proxy = _Proxy(argv)
        stack.callback(proxy.stop)
        yield Network(prefix=prefix, registry_host=proxy.address, proxy_stats=stats, description=description)
