"""A FUSE mount survives a restart of its serving process (fs.lazy.session, .restart, .sdnotify).

The test process plays systemd: ``tests.fs.fd_store.FdStore`` receives fds over a ``NOTIFY_SOCKET``
datagram socket (``FDSTORE=1``/``FDNAME``/``FDSTOREREMOVE``) and starts servers with them in
``LISTEN_FDS``. The server is tests/fs/fuse_restart_server.py (a deterministic tree whose big file is
slow to read); a reader process reads the big file while the server is killed and started again. Each
test prints the stall the reader saw, as a JSON line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs.lazy import sdnotify, session
from tests.fixtures.fuse import force_unmount
from tests.fs.fd_store import LAUNCHER, REPO_ROOT, FdStore
from tests.fs.fuse_restart_server import BIG_SIZE, SMALL_CONTENT, big_bytes

pytestmark = [pytest.mark.needs_root]

_KERNEL = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
needs_resend = pytest.mark.skipif(_KERNEL < (6, 9), reason="FUSE_NOTIFY_RESEND needs Linux 6.9")

READ_DELAY = 0.03  # per 64 KiB read of /big: 64 reads, about 2 s for the whole file
CHUNK = 64 * 1024

# Reads /big in 64 KiB steps, retrying an offset that fails, and reports what it saw.
_READER = """
import hashlib, json, os, sys, time
path, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
print("open", flush=True)
digest, off, gaps, errors = hashlib.sha256(), 0, [], []
last = time.monotonic()
deadline = last + 60
while off < size and time.monotonic() < deadline:
    try:
        data = os.pread(fd, chunk, off)
    except OSError as e:
        errors.append([round(time.monotonic() - last, 3), e.errno])
        time.sleep(0.01)
        continue
    if not data:
        break
    now = time.monotonic()
    gaps.append(now - last)
    last = now
    digest.update(data)
    off += len(data)
os.close(fd)
gaps.sort()
print(json.dumps({"sha256": digest.hexdigest(), "bytes": off, "errors": errors,
                  "max_gap": gaps[-1], "median_gap": gaps[len(gaps) // 2]}), flush=True)
"""


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.mountpoint = tmp_path / "mnt"
        self.mountpoint.mkdir()
        self.log_path = tmp_path / "server.log"
        self.store = FdStore(tmp_path / "notify.sock")
        self.servers: list[subprocess.Popen[bytes]] = []
        self.readers: list[subprocess.Popen[bytes]] = []

    def start_server(
        self, *args: str, store: bool = True, read_delay: float = READ_DELAY
    ) -> tuple[subprocess.Popen[bytes], dict]:
        argv = [
            "-m",
            "tests.fs.fuse_restart_server",
            str(self.mountpoint),
            "--read-delay",
            str(read_delay),
            *args,
        ]
        if store:
            proc = self.store.spawn(argv, self.log_path)
        else:
            env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            env["PYTHONPATH"] = str(REPO_ROOT)
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, *argv], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log
                )
        self.servers.append(proc)
        line = proc.stdout.readline().decode()
        assert line.startswith("ready "), f"server did not start: {line!r}\n{self.log_tail()}"
        return proc, json.loads(line.split(" ", 1)[1])

    def start_reader(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(self.mountpoint / "big"), str(BIG_SIZE), str(CHUNK)],
            stdout=subprocess.PIPE,
        )
        self.readers.append(proc)
        assert proc.stdout.readline() == b"open\n"
        return proc

    def reader_result(self, proc: subprocess.Popen[bytes]) -> dict:
        out, _ = proc.communicate(timeout=60)
        return json.loads(out)

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""

    def close(self) -> None:
        for proc in self.readers + self.servers:
            if proc.poll() is None:
                proc.kill()
        force_unmount(self.mountpoint)
        for proc in self.readers + self.servers:
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.store.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


EXPECTED_SHA256 = hashlib.sha256(big_bytes(0, BIG_SIZE)).hexdigest()


def _stop(harness: Harness, server: subprocess.Popen[bytes], how: signal.Signals) -> None:
    server.send_signal(how)
    assert server.wait(timeout=20) == (0 if how == signal.SIGTERM else -signal.SIGKILL), harness.log_tail()
    assert _mounted(harness.mountpoint)


def _check_read(harness: Harness, result: dict) -> None:
    assert result["bytes"] == BIG_SIZE
    assert result["sha256"] == EXPECTED_SHA256
    assert result["errors"] == []
    assert (harness.mountpoint / "small").read_bytes() == SMALL_CONTENT
    assert sorted(p.name for p in harness.mountpoint.iterdir()) == ["big", "small"]
    # libfuse reports trouble on stderr as "fuse: ..." (fuse_log, perror): there must be none, in
    # particular not for the replayed INIT's reply that the kernel refuses.
    assert [line for line in harness.log_tail().splitlines() if line.startswith("fuse")] == []


def _restart_while_reading(
    harness: Harness, stops: list[signal.Signals], *server_args: str, read_delay: float = READ_DELAY
) -> tuple[dict, list[float]]:
    """Start a server and a reader of /big, then stop and restart the server once per ``stops``."""
    server, ready = harness.start_server(*server_args, read_delay=read_delay)
    assert ready == {"adopted": False, "resent": False, "fd": ready["fd"]}
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]
    reader = harness.start_reader()
    restarts = []
    for how in stops:
        time.sleep(0.5)  # a quarter of the file per incarnation
        assert reader.poll() is None, "the reader finished too early to test anything"
        t0 = time.monotonic()
        _stop(harness, server, how)
        server, ready = harness.start_server(*server_args, read_delay=read_delay)
        restarts.append(time.monotonic() - t0)
        assert ready["adopted"] is True, harness.log_tail()
        assert ready["resent"] is True
    result = harness.reader_result(reader)
    _check_read(harness, result)
    return result, restarts


def _report(case: str, result: dict, restarts: list[float]) -> None:
    print(
        json.dumps(
            {
                "bench": "fuse_restart",
                "case": case,
                "restarts_s": [round(t, 3) for t in restarts],
                "reader_max_stall_s": round(result["max_gap"], 3),
                "reader_median_read_s": round(result["median_gap"], 3),
                # against the same run's ordinary reads (meaningless when the page cache serves them)
                "stall_vs_median_read": round(result["max_gap"] / result["median_gap"], 1)
                if result["median_gap"] >= 0.001
                else None,
                "eio_seen": len(result["errors"]),
            }
        )
    )


@needs_resend
@pytest.mark.slow
@pytest.mark.parametrize("cache", ["direct_io", "page_cache"])
def test_reader_survives_kill9_and_restart_twice(harness: Harness, cache: str) -> None:
    # Through the page cache the kernel reads ahead in big requests, several at a time: slower ones
    # keep the whole read about as long as with direct_io.
    args, delay = (["--page-cache"], 0.25) if cache == "page_cache" else ([], READ_DELAY)
    result, restarts = _restart_while_reading(
        harness, [signal.SIGKILL, signal.SIGKILL], *args, read_delay=delay
    )
    _report(f"kill9 {cache}", result, restarts)
    # The stall is one restart (interpreter start, adoption) plus the resent read.
    assert result["max_gap"] < max(restarts) + 1.0


@needs_resend
@pytest.mark.slow
def test_reader_survives_graceful_restart(harness: Harness) -> None:
    result, restarts = _restart_while_reading(harness, [signal.SIGTERM])
    _report("sigterm", result, restarts)
    assert result["max_gap"] < max(restarts) + 1.0
    # The stopped server answered every read it had started before exiting.
    assert "SIGTERM with" in harness.log_tail()
    exits = [line for line in harness.log_tail().splitlines() if "exiting for a restart" in line]
    assert len(exits) == 1 and " 0 unanswered" in exits[0], exits


@needs_resend
@pytest.mark.slow
def test_without_resend_a_read_in_flight_at_kill9_hangs_until_a_later_resend(harness: Harness) -> None:
    # 0.5 s per read: at any moment the server holds the reader's request, so kill -9 orphans it.
    server, _ = harness.start_server(read_delay=0.5)
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]
    reader = harness.start_reader()
    time.sleep(0.7)
    _stop(harness, server, signal.SIGKILL)
    server, ready = harness.start_server("--no-resend", read_delay=0.0)
    assert ready == {"adopted": True, "resent": False, "fd": ready["fd"]}
    time.sleep(3)  # /big would be read to its end in milliseconds at 0 s per read
    assert reader.poll() is None, "the orphaned read did not hang: nothing shows the resend is needed"
    _stop(harness, server, signal.SIGTERM)
    _, ready = harness.start_server(read_delay=0.0)
    assert ready["resent"] is True
    result = harness.reader_result(reader)
    _check_read(harness, result)
    assert result["max_gap"] > 3


@pytest.mark.slow
def test_umount_after_restart_unmounts_and_empties_the_store(harness: Harness) -> None:
    first, _ = harness.start_server()
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]
    first.kill()
    first.wait(timeout=10)
    second, ready = harness.start_server()
    assert ready["adopted"] is True
    subprocess.run(["umount", str(harness.mountpoint)], check=True)
    assert second.wait(timeout=20) == 0, harness.log_tail()
    assert not _mounted(harness.mountpoint)
    assert harness.store.wait_names([]) == []


@pytest.mark.slow
@pytest.mark.parametrize("adopted", [False, True])
def test_server_unmounts_its_session_fresh_or_adopted(harness: Harness, adopted: bool) -> None:
    server, ready = harness.start_server()
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]
    if adopted:
        server.kill()
        server.wait(timeout=10)
        server, ready = harness.start_server()
    assert ready["adopted"] is adopted
    server.send_signal(signal.SIGINT)  # the server's "unmount": close_fuse_session(unmount=True)
    assert server.wait(timeout=20) == 0, harness.log_tail()
    assert not _mounted(harness.mountpoint)
    assert harness.store.wait_names([]) == []
    assert "exiting for an unmount request" in harness.log_tail()


@pytest.mark.slow
def test_dead_stored_connection_mounts_afresh(harness: Harness) -> None:
    first, _ = harness.start_server()
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]
    first.kill()
    first.wait(timeout=10)
    subprocess.run(["umount", "-l", str(harness.mountpoint)], check=True)  # unmounted while no one serves
    _, ready = harness.start_server()
    assert ready["adopted"] is False
    assert (harness.mountpoint / "small").read_bytes() == SMALL_CONTENT
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]


def test_without_stored_fd_the_server_mounts_normally(harness: Harness) -> None:
    _, ready = harness.start_server()
    assert ready["adopted"] is False
    assert (harness.mountpoint / "small").read_bytes() == SMALL_CONTENT
    assert (harness.mountpoint / "big").stat().st_size == BIG_SIZE
    with open(harness.mountpoint / "big", "rb") as f:
        f.seek(5 * 4096 + 3)
        assert f.read(10) == big_bytes(5 * 4096 + 3, 10)


def test_without_a_service_manager_the_mount_dies_with_the_server_and_is_replaced(harness: Harness) -> None:
    server, ready = harness.start_server(store=False)
    assert ready["adopted"] is False
    assert (harness.mountpoint / "small").read_bytes() == SMALL_CONTENT
    assert harness.store.names() == []
    server.kill()
    server.wait(timeout=10)
    with pytest.raises(OSError) as dead:
        (harness.mountpoint / "small").read_bytes()
    assert dead.value.errno == errno.ENOTCONN
    # The next start (with a manager but nothing stored) detaches the dead mount and mounts afresh.
    _, ready = harness.start_server()
    assert ready["adopted"] is False
    assert (harness.mountpoint / "small").read_bytes() == SMALL_CONTENT
    assert harness.store.wait_names(["fuse", "fuse.init"]) == ["fuse", "fuse.init"]


def test_init_request_roundtrip() -> None:
    header = (104).to_bytes(4, "little") + (26).to_bytes(4, "little") + (6).to_bytes(8, "little") + bytes(24)
    init_in = (7).to_bytes(4, "little") + (45).to_bytes(4, "little") + bytes(56)
    request = session.InitRequest(header + init_in)
    assert request.protocol == (7, 45)
    assert request.unique == 6
    replay = session.InitRequest(request.with_unique(session.ADOPTED_INIT_UNIQUE))
    assert replay.unique == session.ADOPTED_INIT_UNIQUE
    assert replay.raw[8:16] != request.raw[8:16] and replay.raw[16:] == request.raw[16:]
    assert not request.kernel_can_resend
    ext = init_in[:12] + (1 << 30).to_bytes(4, "little") + (1 << 7).to_bytes(4, "little") + init_in[20:]
    assert session.InitRequest(header + ext).kernel_can_resend  # FUSE_HAS_RESEND is flags2 bit 7
    with pytest.raises(session.FuseSessionError):
        session.InitRequest(header[:4] + (15).to_bytes(4, "little") + header[8:] + init_in)


def test_listen_fds_only_for_this_process() -> None:
    code = (
        "import os; from fs.lazy import sdnotify; "
        "print(sdnotify.listen_fds(unset_environment=False)); "
        "print(os.readlink('/proc/self/fd/3').startswith('pipe:')); "
        "os.environ['LISTEN_PID'] = str(os.getppid()); print(sdnotify.listen_fds()); "
        "print('LISTEN_FDS' in os.environ, sdnotify.listen_fds())"
    )
    r, w = os.pipe()
    try:
        env = dict(os.environ, TEST_STORE_FDS=str(r), TEST_STORE_NAMES="fuse", PYTHONPATH=str(REPO_ROOT))
        out = (
            subprocess.run(
                [sys.executable, "-c", LAUNCHER, "-c", code],
                env=env,
                cwd=REPO_ROOT,
                pass_fds=[r],
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .splitlines()
        )
    finally:
        os.close(r)
        os.close(w)
    assert out == ["[('fuse', 3)]", "True", "[]", "False []"]


def test_fdname_validation() -> None:
    assert sdnotify.check_fdname("fuse.init") == "fuse.init"
    for bad in ("", "a:b", "x" * 256, "tab\there"):
        with pytest.raises(ValueError):
            sdnotify.check_fdname(bad)


def test_notify_sends_state_and_fds_to_an_abstract_socket() -> None:
    name = f"zsnap-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(b"\0" + name.encode())
        r, w = os.pipe()
        try:
            assert sdnotify.store_fds("fuse", [r], environ={"NOTIFY_SOCKET": "@" + name})
            msg, ancdata, _, _ = receiver.recvmsg(4096, socket.CMSG_SPACE(4))
        finally:
            os.close(r)
        ((level, kind, data),) = ancdata
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        received = int.from_bytes(data[:4], "little")
        try:
            os.write(w, b"x")
            assert os.read(received, 1) == b"x"  # the same pipe, passed over the socket
        finally:
            os.close(received)
            os.close(w)
    assert msg == b"FDSTORE=1\nFDNAME=fuse"
    assert sdnotify.notify("READY=1", environ={}) is False
    with pytest.raises(ValueError):
        sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1"})
