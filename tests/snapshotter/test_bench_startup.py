"""The pieces of ``zsnap bench startup`` that need no containerd: delay proxy, network namespace, image
generation, report and chart."""

from __future__ import annotations

import http.client
import io
import json
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from fs.errors import ZsnapError
from snapshotter.bench.startup import chart, images, netns, prepare, report
from snapshotter.bench.startup.modes import Sample
from snapshotter.sample_image import build_image

pytestmark = pytest.mark.needs_root


def _get_v2_seconds(host: str, port: int) -> float:
    """One ``GET /v2/`` on a new connection, seconds (connect included)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
    finally:
        conn.close()
    return time.perf_counter() - started


def _start_proxy(upstream: str, rtt_ms: float, stats: Path) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapshotter.bench.startup.delayproxy", "--upstream", upstream,
         "--rtt-ms", str(rtt_ms), "--stats-file", str(stats)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    host, _, port = proc.stdout.readline().strip().rpartition(":")
    return proc, host, int(port)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    assert proc.stdout is not None
    proc.stdout.close()


@pytest.mark.parametrize("rtt_ms", [40.0, 100.0])
def test_delay_proxy_adds_the_round_trip_it_is_told(registry, tmp_path: Path, rtt_ms: float) -> None:
    reg_host, _, reg_port = registry.host.rpartition(":")
    proc, host, port = _start_proxy(registry.host, rtt_ms, tmp_path / "stats.json")
    try:
        direct = statistics.median(_get_v2_seconds(reg_host, int(reg_port)) for _ in range(9))
        proxied = statistics.median(_get_v2_seconds(host, port) for _ in range(9))
        time.sleep(0.3)
        counted = json.loads((tmp_path / "stats.json").read_text())
    finally:
        _stop(proc)
    added_ms = (proxied - direct) * 1000
    # one request and one answer, each delayed by half the round trip; scheduling adds a little
    assert rtt_ms * 0.95 <= added_ms <= rtt_ms + 30, (direct, proxied)
    assert counted["down"] > 0 and counted["up"] > 0  # it counts what it forwards


def test_delay_proxy_keeps_bandwidth_and_bytes(registry, tmp_path: Path) -> None:
    """A large blob through the proxy arrives whole, and the proxy counts every byte it sent."""
    data = bytes(range(256)) * 16384  # 4 MiB
    layout = tmp_path / "layout"

    def layer(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    build_image(layout, [layer], tag="t", gzip_level=0)
    registry.push_oci_layout(layout, "bench/proxy:t", src_tag="t")
    manifest = json.loads(
        subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                        f"docker://{registry.host}/bench/proxy:t"], check=True, capture_output=True).stdout
    )  # fmt: skip
    blob = manifest["layers"][0]
    proc, host, port = _start_proxy(registry.host, 20.0, tmp_path / "stats.json")
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", f"/v2/bench/proxy/blobs/{blob['digest']}")
        body = conn.getresponse().read()
        conn.close()
        time.sleep(0.3)
        counted = json.loads((tmp_path / "stats.json").read_text())
    finally:
        _stop(proc)
    assert len(body) == blob["size"]
    assert counted["down"] >= blob["size"]


def _host_lo_qdisc() -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout


def _netns_names() -> set[str]:
    return set(p.name for p in netns.NETNS_DIR.iterdir()) if netns.NETNS_DIR.is_dir() else set()


@pytest.mark.parametrize("shaped_port", [None, 5001])
def test_netns_is_shaped_inside_and_removed_after(shaped_port: int | None) -> None:
    host_before = _host_lo_qdisc()
    existed = netns.NETNS_DIR.exists()
    with netns.NetNamespace(150, shaped_port=shaped_port) as ns:
        assert ns.name in _netns_names()
        assert "rate 150Mbit" in ns.qdisc()
        assert "UP" in ns.run("ip", "link", "show", "lo").stdout
        # it is a separate network: a port bound inside is free outside
        assert _host_lo_qdisc() == host_before  # the host's loopback is never shaped
    assert ns.name not in _netns_names()
    if not existed:  # the run made /run/netns (and its bind mount): both are gone again
        assert not netns.NETNS_DIR.exists()
        assert " /run/netns " not in Path("/proc/self/mountinfo").read_text()
    assert _host_lo_qdisc() == host_before


def test_netns_removed_after_a_failure() -> None:
    with pytest.raises(RuntimeError), netns.NetNamespace(100) as ns:
        raise RuntimeError("the benchmark failed")
    assert ns.name not in _netns_names()
    bad = netns.NetNamespace(100, shaped_port=70000)  # tc refuses the port: open() fails half-way
    with pytest.raises(ZsnapError, match="tc filter"):
        bad.open()
    assert bad.name not in _netns_names()
    with pytest.raises(ZsnapError, match="positive"):
        netns.NetNamespace(-5)


def test_stale_netns_of_a_dead_run_is_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"{netns.PREFIX}{dead.pid}-0"
    made_dir = not netns.NETNS_DIR.exists()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in netns.remove_stale()
        assert name not in _netns_names()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if made_dir:
            netns._remove_netns_dir()


def test_image_generation_is_reproducible(tmp_path: Path) -> None:
    spec = images.ImageSpec(0.03, "busybox", seed=7)
    first = images.build(spec, tmp_path / "a", say=lambda _: None)
    second = images.build(spec, tmp_path / "b", say=lambda _: None)
    assert first.manifest_digest == second.manifest_digest
    assert first.size_bytes == 30_000_000
    assert first.bulk_layers == [2]
    assert images.build(spec, tmp_path / "a", say=lambda _: None).layout == first.layout  # cached
    other = images.build(images.ImageSpec(0.03, "busybox", seed=8), tmp_path / "c", say=lambda _: None)
    assert other.manifest_digest != first.manifest_digest


def test_prefetch_list_records_what_the_start_workload_reads(tmp_path: Path) -> None:
    image = images.build(images.ImageSpec(0.03, "busybox", seed=7), tmp_path / "cache", say=lambda _: None)
    paths = prepare.record_prefetch(image, tmp_path / "work")
    assert paths == ["bench/start.sh", "bin/busybox"]  # not readall.sh, not the bulk data
    assert not list((tmp_path / "work").iterdir())  # its tmpfs is unmounted and removed


def test_prepare_skips_what_the_registry_has_and_redoes_a_stale_image(registry, tmp_path: Path) -> None:
    image = images.build(images.ImageSpec(0.02, "busybox", seed=3), tmp_path / "cache", say=lambda _: None)
    said: list[str] = []
    prepare.prepare(image, registry.host, ["full", "lazy"], tmp_path / "w1", said.append)
    assert [m.split(": ")[1] for m in said] == ["pushing the gzip image", "zsnap convert"]
    said.clear()
    prepare.prepare(image, registry.host, ["full", "lazy"], tmp_path / "w2", said.append)
    assert said == []  # cached in the registry
    other = images.build(images.ImageSpec(0.02, "busybox", seed=4), tmp_path / "other", say=lambda _: None)
    registry.push_oci_layout(other.layout, f"{prepare.repository(image)}:gzip", src_tag="bench")
    prepare.prepare(image, registry.host, ["full", "lazy"], tmp_path / "w3", said.append)
    assert len(said) == 2  # the gzip tag was not this image: pushed and converted again


def _samples() -> list[Sample]:
    out = []
    for rep in range(3):
        out.append(Sample("img-a", "full", rep, 10.0 + rep, 0.1, 0.2, 10.3 + rep, 1000, 5.0, 6.0))
        out.append(Sample("img-a", "lazy", rep, 0.5, 0.1, 1.0 + rep, 1.6 + rep, 10 + rep, 7.0, 8.0, 4, 2))
        out.append(Sample("img-b", "full", rep, 20.0, 0.1, 0.2, 20.3, 2000, None, None))
    return out


def test_report_json_shape_and_ratios(tmp_path: Path) -> None:
    summary = report.summarize([("img-a", 100), ("img-b", 200)], _samples())
    report.write_json(summary, tmp_path / "r.json", network="shaped")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [i["name"] for i in doc["images"]] == ["img-a", "img-b"]
    a = doc["images"][0]
    assert a["size_bytes"] == 100 and set(a["modes"]) == {"full", "lazy"}
    for field in report.FIELDS:
        assert field in a["modes"]["full"]
    assert a["modes"]["full"]["pull_s"] == 11.0 and a["modes"]["full"]["spread"]["pull_s"] == [10.0, 12.0]
    assert a["modes"]["lazy"]["readall_hog_s"] == 8.0
    assert doc["images"][1]["modes"]["full"]["readall_hog_s"] is None
    assert len(doc["samples"]) == 9
    line = json.loads(report.json_line(summary, network="shaped"))
    assert line["bench"] == "startup"
    assert line["ratios"]["img-a/lazy"]["total_vs_full"] == pytest.approx(2.6 / 11.3, abs=1e-3)
    assert line["medians"]["img-b/full"]["total_s"] == 20.3
    assert line["ratios"]["img-a/lazy"]["pull_plus_readall_vs_full"] == pytest.approx(7.5 / 16.0, abs=1e-3)
    lazy = line["ratios"]["img-a/lazy"]
    assert lazy["pull_plus_readall_hog_vs_full"] == pytest.approx(8.5 / 17.0, abs=1e-3)
    # bytes fetched before first output beyond the TOCs, per byte the workload read: (11 - 2) / 4
    assert line["ratios"]["img-a/lazy"]["fetched_beyond_tocs_vs_read"] == pytest.approx(9 / 4, abs=1e-3)
    assert "fetched_beyond_tocs_vs_read" not in line["ratios"].get("img-b/full", {})
    assert a["modes"]["lazy"]["read_bytes"] == 4 and a["modes"]["full"]["read_bytes"] is None


def test_chart_has_one_stacked_bar_per_image_and_mode(tmp_path: Path) -> None:
    summary = report.summarize([("img-a", 100), ("img-b", 200)], _samples())
    path = tmp_path / "c.png"
    assert chart.draw(summary, path) == 3
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
