"""``zsnap serve`` as systemd runs it: notify protocol, SIGTERM, metrics, config errors; ``install-units``."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from snapshotter.proto import snapshots_pb2 as pb
from tests.snapshotter.daemon import REPO, Daemon, running_daemon, zsnap_command

pytestmark = pytest.mark.needs_root


def test_ready_then_stopping_on_sigterm(daemon: Daemon) -> None:
    ready = daemon.wait_note("READY=1")
    assert f"STATUS=serving on {daemon.socket}" in ready
    daemon.stub().Prepare(pb.PrepareSnapshotRequest(key="a"))  # READY meant it: the socket answers
    assert daemon.terminate() == 0
    daemon.wait_note("STOPPING=1")
    assert not daemon.socket.exists()


def test_abstract_notify_socket(short_tmp: Path) -> None:
    with running_daemon(short_tmp, config="lazy = false\n", abstract_notify=True) as d:
        assert "READY=1" in d.notes[0]


def scrape(daemon: Daemon) -> str:
    assert daemon.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_metrics_count_grpc_calls_by_method_and_code(daemon: Daemon) -> None:
    s = daemon.stub()
    s.Prepare(pb.PrepareSnapshotRequest(key="a"))
    s.Prepare(pb.PrepareSnapshotRequest(key="b"))
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            s.Stat(pb.StatSnapshotRequest(key="missing"))
    text = scrape(daemon)
    assert sample(text, "zsnap_grpc_requests_total", method="Prepare", code="OK") == 2
    assert sample(text, "zsnap_grpc_requests_total", method="Stat", code="NOT_FOUND") == 3
    for name in ("zsnap_mounted_images", "zsnap_mounted_layers", "zsnap_fetched_bytes_total",
                 "zsnap_cache_hits_total", "zsnap_verification_failures_total", "zsnap_fetch_seconds_count",
                 "zsnap_store_bytes"):  # fmt: skip
        assert re.search(rf"^{name}(\{{.*\}})? ", text, re.M), name


def run_serve(tmp: Path, config: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [*zsnap_command(tmp / "root"), "serve", "--socket", str(tmp / "s.sock")]
    if config is not None:
        (tmp / "config.toml").write_text(config)
        cmd += ["--config", str(tmp / "config.toml")]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ("colour = 1\n", (), "unknown key 'colour'"),
        ("[registry]\nplain = []\n", (), "unknown key registry.plain"),
        ("fetch_timeout = -1\n", (), "fetch_timeout must be a number of seconds"),
        ('cache_max_size = "lots"\n', (), "not a size: 'lots'"),
        ('metrics_address = "nowhere"\n', (), "metrics_address: not an address"),
        ("prefetch = 'yes'\n", (), "prefetch must be true or false"),
        ('socket = "relative.sock"\n', (), "socket must be an absolute path"),
        ("this is not toml", (), "is not valid TOML"),
        (None, ("--config", "/nonexistent/zsnap.toml"), "cannot read config /nonexistent/zsnap.toml"),
        ("", ("--metrics-address", "1.2.3:99999"), "--metrics-address: not an address"),
    ],
)
def test_config_errors_are_one_line(short_tmp: Path, config, args, message) -> None:
    done = run_serve(short_tmp, config, *args)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zsnap: error: "), done.stderr
    assert message in lines[0]
    assert not (short_tmp / "s.sock").exists()


def test_socket_in_use_is_refused(daemon: Daemon, short_tmp: Path) -> None:
    other = short_tmp / "other"
    other.mkdir()
    done = run_serve(other, 'lazy = false\nmetrics_address = ""\n', "--socket", str(daemon.socket))
    assert done.returncode == 1
    assert f"zsnap: error: another process already listens on {daemon.socket}" in done.stderr
    daemon.stub().Prepare(pb.PrepareSnapshotRequest(key="still-served"))


def test_install_units(tmp_path: Path) -> None:
    cmd = [*zsnap_command(tmp_path / "root"), "install-units", "--prefix", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    unit = (tmp_path / "etc/systemd/system/zsnap.service").read_text()
    for line in ("Type=notify", "Restart=always", "KillMode=process", "Before=containerd.service",
                 "FileDescriptorStoreMax=16"):  # fmt: skip
        assert line in unit.splitlines()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith("serve --config /etc/zsnap/config.toml")
    config = tmp_path / "etc/zsnap/config.toml"
    assert "installed" in done.stdout
    # the sample config is valid for the daemon's own parser
    from snapshotter.config import load_config

    assert load_config(config).socket == Path("/run/zsnap/zsnap.sock")
    config.write_text("# mine\n")
    subprocess.run(cmd, cwd=REPO, capture_output=True, check=True, timeout=60)
    assert config.read_text() == "# mine\n"  # an existing config is kept


@pytest.mark.allow_warnings
def test_unreachable_registry_falls_back_to_the_normal_path(short_tmp: Path) -> None:
    """A lazy Prepare whose registry cannot be reached returns ordinary mounts, with one line saying why."""
    labels = {
        "containerd.io/snapshot.ref": "sha256:" + "1" * 64,
        "containerd.io/snapshot/cri.image-ref": "127.0.0.1:1/nowhere/app:v1",
        "containerd.io/snapshot/cri.layer-digest": "sha256:" + "2" * 64,
        "containerd.io/snapshot/cri.manifest-digest": "sha256:" + "3" * 64,
    }
    config = "prepare_timeout = 20.0\n"
    with running_daemon(short_tmp, config=config, module="tests.snapshotter.unpacking_host") as d:
        request = pb.PrepareSnapshotRequest(key="k8s.io/1/extract-1 sha256:" + "1" * 64, labels=labels)
        mounts = d.stub().Prepare(request, timeout=60).mounts
        assert [m.type for m in mounts] == ["bind"]
        lines = [line for line in d.log().splitlines() if "takes the normal path" in line]
        assert len(lines) == 1 and "WARNING" in lines[0] and "cannot attach" in lines[0], d.log()[-2000:]
        info = d.stub().Stat(pb.StatSnapshotRequest(key=request.key)).info
        assert info.kind == pb.ACTIVE and dict(info.labels) == labels
        # the image's next layer does not wait for the same registry again
        nxt = pb.PrepareSnapshotRequest(
            key="k8s.io/2/extract-2", labels={**labels, "containerd.io/snapshot.ref": "sha256:" + "4" * 64}
        )
        d.stub().Prepare(nxt, timeout=60)
        assert "s ago)" in d.log().splitlines()[-1]
