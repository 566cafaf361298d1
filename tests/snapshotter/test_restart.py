"""``zsnap serve`` restarts without breaking running containers (issue 7), with the real containerd.

The daemon runs under the test file descriptor store (tests/fs/fd_store.py plays systemd: it gives the
daemon ``NOTIFY_SOCKET``, ``FDSTORE`` as systemd 254 does for ``FileDescriptorStoreMax=``, keeps the fds
sent with ``FDSTORE=1`` and passes them back in ``LISTEN_FDS`` at the next start). containerd (CRI on)
pulls a zstd:chunked image lazily through it; the daemon is then stopped with SIGTERM (``systemctl
restart``) or SIGKILL (a crash) and started again:

* between the pull and ``ctr run``: the committed snapshots are all listed again, the image is attached
  again before ``READY=1``, and the container reads correct bytes;
* while a container reads a big file lazily (64 KiB at a time with a pause, prefetch and background
  fetching off, so most of the file is fetched after the restart): the read completes with the right
  sha256 and the container exits 0. The longest pause the reader saw is printed as a JSON line.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from snapshotter import cri
from snapshotter.proto import snapshots_pb2 as pb
from snapshotter.proto import snapshots_pb2_grpc
from tests.fixtures.common import wait_until
from tests.fixtures.containerd import CRI_ENABLED, cri_config_toml, mounts_below, start_containerd
from tests.fixtures.fuse import force_unmount
from tests.fixtures.images.content import ImageSpec, LayerSpec, Payload, d, f
from tests.fixtures.images.layout import BuiltImage, LayoutWriter, build_image
from tests.fixtures.images.skopeo import push
from tests.fixtures.images.specs import busybox_layer
from tests.fs.fd_store import FdStore
from tests.snapshotter.daemon import short_tempdir
from tests.snapshotter.test_containerd import convert, image_chain, run_in

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

BIG = Payload(24 << 20, 7, "random")
STEP = 64 * 1024
STEPS = BIG.size // STEP
HELLO = b"served again after a restart\n"
# Reads /data/big 64 KiB at a time with a pause (stdout: the sha256), one progress line per step on stderr.
READER = (
    f"i=0; while [ $i -lt {STEPS} ]; do "
    "dd if=/data/big bs=65536 skip=$i count=1 2>/tmp/err || "
    '{ read -r e < /tmp/err; echo "dd failed at $i: $e" >&2; }; '
    'echo "read $i" >&2; sleep 0.02; i=$((i+1)); done | sha256sum'
)


def restart_spec() -> ImageSpec:
    layer = LayerSpec((d("data"), f("data/big", BIG), f("data/hello", HELLO)), comment="one big file")
    return ImageSpec("restart", (busybox_layer(), layer), top_dirs=("bin", "data", "etc"))


def big_sha256() -> str:
    h = hashlib.sha256()
    for block in BIG.blocks():
        h.update(block)
    return h.hexdigest()


class ServedStack:
    """``zsnap serve`` under the test fd store, and a CRI containerd routing ``zsnap`` to it."""

    def __init__(self, base: Path, registry_host: str) -> None:
        self.base = base
        self.root = base / "root"
        self.socket = base / "zsnap.sock"
        self.log_path = base / "zsnap.log"
        config = base / "config.toml"
        config.write_text(
            'metrics_address = "127.0.0.1:0"\nprefetch = false\nbackground_fetch = false\n'
            f'[registry]\nplain_http = ["{registry_host}"]\n'
        )
        self.argv = ["-m", "snapshotter", "--root", str(self.root), "-v", "serve", "--config", str(config),
                     "--socket", str(self.socket)]  # fmt: skip
        self.fds = FdStore(base / "notify.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.ctrd = None
        try:
            self.start()
            self.ctrd = start_containerd(
                proxy_snapshotters={"zsnap": str(self.socket)},
                disabled_plugins=CRI_ENABLED,
                extra_config=cri_config_toml(snapshotter="zsnap", plain_http=[registry_host]),
            )
        except BaseException:
            self.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _readies(self) -> list[str]:
        with self.fds.lock:
            return [m for m in self.fds.messages if "READY=1" in m]

    def start(self) -> float:
        """Start the daemon; returns the seconds until it sent READY=1."""
        before = len(self._readies())
        started = time.monotonic()
        self.proc = self.fds.spawn(self.argv, self.log_path, env={"FDSTORE": "8"}, stdout_to_log=True)
        while len(self._readies()) == before:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zsnap serve exited {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() - started > 120:
                raise TimeoutError(f"no READY=1 from zsnap serve:\n{self.log()[-4000:]}")
            time.sleep(0.005)
        ready = time.monotonic() - started
        self.metrics_port = int(self._readies()[-1].split("metrics on ", 1)[1].split()[0].rsplit(":", 1)[1])
        return ready

    def stop(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        code = self.proc.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert code == 0, self.log()[-4000:]

    def restart(self, sig: signal.Signals) -> float:
        """Stop the daemon with ``sig`` and start it again; returns seconds from the signal to READY=1."""
        started = time.monotonic()
        self.stop(sig)
        self.start()
        return time.monotonic() - started

    def wait_reconnected(self) -> None:
        assert self.ctrd is not None
        probe = ["snapshots", "--snapshotter", "zsnap", "ls"]
        wait_until(lambda: self.ctrd.ctr(*probe, check=False, namespace=cri.CRI_NAMESPACE).returncode == 0,
                   timeout=30, what="containerd to reconnect to the restarted daemon")  # fmt: skip

    def snapshots(self) -> set[tuple[str, int, str]]:
        with grpc.insecure_channel(f"unix:{self.socket}") as channel:
            stub = snapshots_pb2_grpc.SnapshotsStub(channel)
            return {(i.name, i.kind, i.parent) for r in stub.List(pb.ListSnapshotsRequest()) for i in r.info}

    def metric(self, name: str) -> float:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {name}")

    def close(self) -> None:
        try:
            if self.ctrd is not None:
                self.ctrd.stop()
                if not mounts_below(self.ctrd.base):
                    shutil.rmtree(self.ctrd.base, ignore_errors=True)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=30)
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
            self.fds.close()  # the kept connection dies with the store's copy
            force_unmount(self.root / "mnt")


@pytest.fixture(scope="module")
def restart_layout(tmp_path_factory) -> BuiltImage:
    """The restart image (busybox + a 24 MiB random file) as an OCI layout (gzip)."""
    writer = LayoutWriter(tmp_path_factory.mktemp("restart-image") / "layout")
    try:
        return build_image(writer, restart_spec(), "gzip", compression="gzip")
    finally:
        writer.close()


def push_converted(image: BuiltImage, registry_host: str, tmp_path: Path) -> str:
    src = push(image, registry_host, "restart/big:gzip")
    ref = f"{registry_host}/restart/big:zstd-chunked"
    convert(src, ref, tmp_path)
    return ref


@pytest.fixture(scope="module")
def restart_image(registry, restart_layout: BuiltImage, tmp_path_factory) -> str:
    """The restart image in the shared registry as zstd:chunked."""
    return push_converted(restart_layout, registry.host, tmp_path_factory.mktemp("convert"))


@contextlib.contextmanager
def served_stack(registry_host: str) -> Iterator[ServedStack]:
    base = short_tempdir()
    stack = ServedStack(base, registry_host)
    try:
        yield stack
    finally:
        stack.close()
        if not mounts_below(base):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def served(registry) -> Iterator[ServedStack]:
    with served_stack(registry.host) as stack:
        yield stack


SIGNALS = [pytest.param(signal.SIGTERM, id="sigterm"), pytest.param(signal.SIGKILL, id="kill-9")]


@pytest.mark.parametrize("sig", SIGNALS)
def test_restart_between_pull_and_run(served: ServedStack, restart_image: str, sig: signal.Signals) -> None:
    """Every committed snapshot is listed again, the image is attached again before READY=1 and a
    container started after the restart reads correct bytes."""
    ref = restart_image
    cri.pull_image(served.ctrd.address, ref, timeout=120)
    chains, _ = image_chain(served, ref, cri.CRI_NAMESPACE)  # type: ignore[arg-type]
    before = served.snapshots()
    assert set(chains) <= {name for name, _, _ in before}
    assert served.metric("zsnap_mounted_images") == 1.0
    served.restart(sig)
    assert served.snapshots() == before
    assert served.metric("zsnap_mounted_images") == 1.0  # attached again before READY=1
    assert "restored 1 of 1 lazily served image(s)" in served.log()
    assert "adopted the FUSE session" in served.log()  # the kept connection, not a new mount
    served.wait_reconnected()
    out = run_in(served.ctrd, ref, ["sh", "-c", "cat /data/hello; sha256sum /data/big"],
                 namespace=cri.CRI_NAMESPACE)  # fmt: skip
    assert HELLO.decode() in out and big_sha256() in out
    cri.remove_image(served.ctrd.address, ref)
    wait_until(lambda: not set(chains) & {n for n, _, _ in served.snapshots()}, timeout=30,
               what="containerd's GC to remove the lazy snapshots")  # fmt: skip


class Reader:
    """``ctr run`` of the READER script, its progress lines timestamped as they arrive."""

    def __init__(self, stack: ServedStack, ref: str) -> None:
        ctrd = stack.ctrd
        cid = f"zsnap-{uuid.uuid4().hex[:12]}"
        cmd = ["ctr", "--address", ctrd.address, "--namespace", cri.CRI_NAMESPACE, "run", "--rm",
               "--snapshotter", "zsnap", "--runc-root", str(ctrd.base / "runc"), "--fifo-dir",
               str(ctrd.base / "fifo"), ref, cid, "sh", "-c", READER]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.stdout = ""
        self._threads = [threading.Thread(target=self._progress), threading.Thread(target=self._out)]
        for t in self._threads:
            t.start()

    def _progress(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.strip()))

    def _out(self) -> None:
        assert self.proc.stdout is not None
        self.stdout = self.proc.stdout.read()

    def steps(self) -> int:
        return sum(1 for _, line in self.lines if line.startswith("read "))

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def stop(self) -> None:
        """Kill the container's ``ctr run`` if it still runs (a failed test must not leave it reading)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.wait(timeout=30)

    def assert_read_all_right(self, code: int, stack: ServedStack) -> None:
        """The container exited 0, none of its reads failed, and the big file hashed right."""
        failures = [line for _, line in self.lines if line.startswith("dd failed")]
        assert code == 0 and not failures, (code, failures, self.lines[-5:], stack.log()[-3000:])
        assert big_sha256() in self.stdout  # every byte the container got was the right one

    def longest_gap(self, since: float) -> float:
        times = [since] + [t for t, line in self.lines if line.startswith("read ") and t > since]
        return max(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else 0.0


@pytest.mark.parametrize("sig", SIGNALS)
def test_restart_while_a_container_reads(
    served: ServedStack, restart_image: str, sig: signal.Signals
) -> None:
    """A container reading a big file lazily keeps reading across the restart: correct sha256, exit 0,
    at most a short stall (printed, not asserted beyond 'finished')."""
    ref = restart_image
    cri.pull_image(served.ctrd.address, ref, timeout=120)
    fetched_before = served.metric("zsnap_fetched_bytes_total")
    reader = Reader(served, ref)
    try:
        wait_until(lambda: reader.steps() >= STEPS // 4 or reader.proc.poll() is not None, timeout=120,
                   what="the container to read a quarter of the file")  # fmt: skip
        assert reader.proc.poll() is None, reader.lines[-5:]
        steps_at_restart = reader.steps()
        signalled = time.monotonic()
        restart_seconds = served.restart(sig)
        code = reader.wait(timeout=300)
    finally:
        reader.stop()
    reader.assert_read_all_right(code, served)
    assert served.log().count("adopted the FUSE session") == 1
    assert steps_at_restart < STEPS and reader.steps() == STEPS
    stall = reader.longest_gap(signalled)
    before = [t for t, line in reader.lines if line.startswith("read ") and t < signalled]
    gaps = sorted(b - a for a, b in itertools.pairwise(before))
    fetched_after = served.metric("zsnap_fetched_bytes_total")  # the new process's own counter
    assert fetched_after > 0, "the restarted daemon served the rest of the file lazily"
    restored = [line for line in served.log().splitlines() if "lazy layers restored in" in line]
    record = {
        "restore_s": float(restored[-1].rsplit(" in ", 1)[1].split()[0]),
        "test": "restart_while_reading", "signal": sig.name, "stall_s": round(stall, 3),
        "restart_to_ready_s": round(restart_seconds, 3), "steps_before_restart": steps_at_restart,
        "median_step_before_s": round(gaps[len(gaps) // 2], 4), "steps": STEPS,
        "fetched_before_restart_bytes": fetched_before, "fetched_after_bytes": fetched_after,
    }  # fmt: skip
    print(json.dumps(record))
    cri.remove_image(served.ctrd.address, ref)


def test_a_layer_that_cannot_be_restored_fails_reads_without_hanging(
    registry_factory, restart_layout: BuiltImage, tmp_path: Path
) -> None:
    """The image's registry goes away while a container reads it; the restarted daemon cannot attach it
    again: one clear log line, READY=1 all the same, and the container's reads of what was not read yet
    fail (EIO) instead of hanging, so it ends."""
    gone = registry_factory(name="gone-registry")
    ref = push_converted(restart_layout, gone.host, tmp_path)
    with served_stack(gone.host) as served:
        cri.pull_image(served.ctrd.address, ref, timeout=120)
        reader = Reader(served, ref)
        try:
            wait_until(lambda: reader.steps() >= 16 or reader.proc.poll() is not None, timeout=120,
                       what="the container to start reading")  # fmt: skip
            gone.stop()
            served.restart(signal.SIGTERM)
            code = reader.wait(timeout=240)
        finally:
            reader.stop()
        lines = [line for line in served.log().splitlines() if "after the restart" in line]
        assert len(lines) == 1 and ref.split("/", 1)[1].split(":")[0] in lines[0], lines
        assert "restored 0 of 1 lazily served image(s)" in served.log()
        assert big_sha256() not in reader.stdout
        failed = [line for _, line in reader.lines if line.startswith("dd failed")]
        print(json.dumps({"test": "lost_layer", "exit": code, "failed_reads": len(failed),
                          "first": failed[:1]}))  # fmt: skip
        assert failed and all("Input/output error" in line for line in failed), failed[:3]


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as mountinfo:
        return any(line.split()[4] == str(path) for line in mountinfo)


def test_sigterm_keeps_the_session_in_the_store_and_sigint_unmounts(served: ServedStack) -> None:
    """SIGTERM (systemctl stop/restart) leaves the FUSE session mounted and stored for the next start,
    which adopts it; SIGINT unmounts it and takes it out of the store."""
    session = ["zsnap-fuse", "zsnap-fuse.init"]
    mnt = served.root / "mnt"
    assert served.fds.wait_names(session) == session and _mounted(mnt)
    served.restart(signal.SIGTERM)
    assert served.fds.wait_names(session) == session and _mounted(mnt)
    assert "adopted the FUSE session" in served.log()
    served.stop(signal.SIGINT)
    assert served.fds.wait_names([]) == [] and not _mounted(mnt)
