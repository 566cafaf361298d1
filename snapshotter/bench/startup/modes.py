"""One cold sample of one image in one mode: pull, create, run-to-first-output, measured separately.

Every sample starts from nothing: a fresh containerd (and, for the lazy modes, a fresh ``zsnap serve``)
under a new directory, the page cache dropped; both are stopped and their directories removed afterwards.
So containerd's content and snapshots, zsnap's store and the kernel's caches are all cold, as in HelloBench
(Slacker, FAST'16) and stargz-snapshotter's benchmark.

* ``full``: containerd's overlayfs snapshotter; the pull downloads and unpacks every layer.
* ``lazy``: ``zsnap serve`` as containerd's proxy snapshotter; the pull mounts the zstd:chunked layers
  lazily, the container fetches what it reads.
* ``lazy-prefetch``: the same on a copy converted with ``--prefetch-list`` (the files the start workload
  opened, recorded once).
* ``stargz``: stargz-snapshotter on an eStargz copy (needs ``containerd-stargz-grpc`` on PATH).

Pulls go through CRI ``PullImage`` (what the kubelet does, and the only client that passes the snapshot
labels a remote snapshotter needs); containers are created and started with ``ctr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from converter.cache import WRITER_VERSION
from fs.errors import ZsnapError
from snapshotter.cri import pull_image
from snapshotter.services import LocalContainerd, StargzSnapshotter, ZsnapServe, stop_pid

__all__ = ["MODES", "TAGS", "Sample", "Target", "drop_page_cache", "mode_unavailable", "sample"]

MODES = ("full", "lazy", "lazy-prefetch", "stargz")
#: registry tag of each mode's copy of an image
#: the conversions carry the converter's writer version: a cached registry keeps the outputs of an older
#: converter under other tags instead of being measured as this one's
TAGS = {
    "full": "gzip",
    "lazy": f"zstd-chunked-w{WRITER_VERSION}",
    "lazy-prefetch": f"zstd-chunked-prefetch-w{WRITER_VERSION}",
    "stargz": "estargz",
}
SNAPSHOTTER = {"full": "overlayfs", "lazy": "zsnap", "lazy-prefetch": "zsnap", "stargz": "stargz"}


@dataclasses.dataclass
class Sample:
    """One measurement; seconds, ``None`` where the workload was not run."""

    image: str
    mode: str
    rep: int
    pull_s: float | None = None
    create_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None
    fetched_bytes: int | None = None
    readall_s: float | None = None
    readall_hog_s: float | None = None
    read_bytes: int | None = None  # lazy modes: what the start workload read from the lazy layers
    toc_bytes: int | None = None  # lazy modes: footers and TOCs, part of fetched_bytes
    output: str = ""


@dataclasses.dataclass
class Target:
    """Where things are: the image reference (``HOST/REPO:TAG``) per mode, the network, the work dir."""

    refs: dict[str, str]
    start_cmd: list[str]
    readall_cmd: list[str]
    prefix: list[str]  # runs a command in the benchmark's network namespace ([] on plain loopback)
    registry_host: str  # what containerd and zsnap serve dial (the delay proxy's address)
    work: Path
    proxy_stats: Path | None = None
    timeout: float = 3600.0


def mode_unavailable(mode: str) -> str | None:
    """Why ``mode`` cannot run on this machine, or ``None`` if it can."""
    if mode == "stargz" and shutil.which("containerd-stargz-grpc") is None:
        return "containerd-stargz-grpc is not on PATH (not packaged here): stargz skipped"
    return None


def drop_page_cache() -> None:
    """Write back dirty pages, then drop clean page-cache pages (``vm.drop_caches = 1``), so every sample
    reads from disk or network and none pays for the previous one's writeback (a 10 GB full pull leaves
    seconds of it: the lazy sample after it measured 2.91 s against 1.85-2.03 s once synced)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


# -- CRI --------------------------------------------------------------------------------------------------


# -- one sample -------------------------------------------------------------------------------------------


class _Stack:
    """containerd (+ ``zsnap serve`` or the stargz snapshotter) for one sample, in a fresh directory."""

    def __init__(self, target: Target, mode: str) -> None:
        self.dir = target.work / f"sample-{uuid.uuid4().hex[:8]}"
        self.serve: ZsnapServe | StargzSnapshotter | None = None
        self.containerd: LocalContainerd | None = None
        try:
            proxies = {}
            if SNAPSHOTTER[mode] == "zsnap":
                self.serve = ZsnapServe(self.dir / "zsnap", prefix=target.prefix, metrics=True)
                proxies["zsnap"] = self.serve.address
            elif SNAPSHOTTER[mode] == "stargz":
                self.serve = StargzSnapshotter(
                    self.dir / "stargz", plain_http_hosts=[target.registry_host], prefix=target.prefix
                )
                proxies["stargz"] = self.serve.address
            self.containerd = LocalContainerd(
                self.dir / "containerd", proxy_snapshotters=proxies, cri_snapshotter=SNAPSHOTTER[mode],
                plain_http_hosts=[target.registry_host], prefix=target.prefix,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.containerd is not None:
            for cid in self.containerd.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.containerd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
                self.containerd.ctr("tasks", "rm", "-f", cid, check=False)
                self.containerd.ctr("containers", "rm", cid, check=False)
            refs = self.containerd.ctr("images", "ls", "-q", check=False).stdout.split()
            if refs:
                self.containerd.ctr("images", "rm", "--sync", *refs, check=False)
            self.containerd.stop()
            self.containerd = None
        if self.serve is not None:
            self.serve.stop()
            keep = os.environ.get("ZSNAP_BENCH_KEEP_LOGS")  # a directory: keep each sample's daemon log
            if keep and isinstance(self.serve, ZsnapServe):
                Path(keep).mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy(self.serve.root / "serve.log", Path(keep) / f"{self.dir.name}-serve.log")
            self.serve = None
        subprocess.run(["umount", "-R", "-l", str(self.dir)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _fetched(target: Target) -> int | None:
    if target.proxy_stats is None:
        return None
    time.sleep(0.25)  # the proxy refreshes its counters every 0.1 s
    try:
        return int(json.loads(target.proxy_stats.read_text())["down"])
    except (OSError, ValueError, KeyError):
        return 0


def _create(ctrd: LocalContainerd, mode: str, ref: str, cmd: Sequence[str]) -> str:
    cid = f"bench-{uuid.uuid4().hex[:10]}"
    ctrd.ctr("containers", "create", "--snapshotter", SNAPSHOTTER[mode], ref, cid, *cmd)
    return cid


def _start(ctrd: LocalContainerd, cid: str, timeout: float) -> tuple[float, float, str]:
    """Start the task and wait for it; return (seconds to first output, seconds to exit, output).

    The shim writes the container's stdout and stderr straight to a file (``--log-uri file://``), which is
    polled every millisecond for its first byte: ``ctr``'s own attached FIFOs lost the whole output of a
    container that exited within ~0.1 s now and then on a loaded machine.
    """
    log = ctrd.root / f"{cid}.out"
    started = time.monotonic()
    proc = subprocess.Popen(
        ["ctr", "--address", ctrd.address, "--namespace", ctrd.namespace, "tasks", "start",
         "--log-uri", f"file://{log}", cid],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    first_s = None
    deadline = started + timeout
    while first_s is None and proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and log.stat().st_size > 0:
            first_s = time.monotonic() - started
        else:
            time.sleep(0.001)
    try:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_pid(proc)
        raise ZsnapError(f"container {cid} did not finish within {timeout:.0f}s") from None
    exit_s = time.monotonic() - started
    output = log.read_text(errors="replace") if log.exists() else ""
    if first_s is None and output:  # it all came out in the last millisecond
        first_s = exit_s
    if proc.returncode != 0 or first_s is None:
        detail = (output + err.decode(errors="replace"))[-800:]
        raise ZsnapError(f"container {cid} failed ({proc.returncode}, no output): {detail}")
    ctrd.ctr("containers", "rm", cid, check=False)
    return first_s, exit_s, output


def sample(target: Target, image: str, mode: str, rep: int, *, readall: bool, cpu_hog: bool) -> Sample:
    """Measure ``image`` in ``mode`` once, cold: the start workload (and then read-everything), and with
    ``cpu_hog`` one more cold pull + read-everything while a process keeps one core busy."""
    result = Sample(image=image, mode=mode, rep=rep)
    ref = target.refs[mode]
    drop_page_cache()
    before = _fetched(target)
    stack = _Stack(target, mode)
    try:
        ctrd = stack.containerd
        assert ctrd is not None
        t0 = time.monotonic()
        pull_image(ctrd.address, ref, target.timeout)
        t1 = time.monotonic()
        cid = _create(ctrd, mode, ref, target.start_cmd)
        t2 = time.monotonic()
        first_s, _, result.output = _start(ctrd, cid, target.timeout)
        result.pull_s, result.create_s, result.run_s = t1 - t0, t2 - t1, first_s
        result.total_s = t1 - t0 + t2 - t1 + first_s
        after = _fetched(target)
        if before is not None and after is not None:
            result.fetched_bytes = after - before
        if isinstance(stack.serve, ZsnapServe):
            counters = stack.serve.metrics()
            result.read_bytes = int(counters["zsnap_read_bytes_total"])
            result.toc_bytes = int(counters["zsnap_toc_fetched_bytes_total"])
        if readall:
            t3 = time.monotonic()
            _start(ctrd, _create(ctrd, mode, ref, target.readall_cmd), target.timeout)
            result.readall_s = time.monotonic() - t3
    finally:
        stack.stop()
    if cpu_hog:
        result.readall_hog_s = _readall_with_hog(target, mode, ref)
    return result


def _readall_with_hog(target: Target, mode: str, ref: str) -> float:
    drop_page_cache()
    stack = _Stack(target, mode)
    hog = None
    try:
        ctrd = stack.containerd
        assert ctrd is not None
        pull_image(ctrd.address, ref, target.timeout)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
        t0 = time.monotonic()
        _start(ctrd, _create(ctrd, mode, ref, target.readall_cmd), target.timeout)
        return time.monotonic() - t0
    finally:
        if hog is not None:
            stop_pid(hog)
        stack.stop()
