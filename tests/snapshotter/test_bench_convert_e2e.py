"""``zsnap bench convert`` end to end: zsnap and skopeo convert the same image from the real registry, on
loopback and across the startup benchmark's shaped link."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.common import bench_leftovers

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def _bench(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "snapshotter", "bench", "convert", *args],
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _leftovers() -> set[str]:
    return bench_leftovers(b"zsnap-bench-convert-")


def test_zsnap_and_skopeo_convert_the_same_image_across_a_shaped_link(tmp_path: Path) -> None:
    mbit = 40.0
    line = _bench("--size-mb", "24", "--layers", "2", "--content", "synthetic", "--skip-ctr-remote",
                  "--bandwidth", str(mbit), "--rtt-ms", "5", "--image-cache", str(tmp_path))  # fmt: skip
    assert line["bench"] == "convert" and line["bandwidth_mbit"] == mbit and line["rtt_ms"] == 5.0
    assert "tbf" in line["network"] and "rate 40Mbit" in line["network"], line["network"]
    assert line["uncompressed_bytes"] >= 20_000_000 and line["source_bytes"] > 1_000_000
    link_floor = line["source_bytes"] / (mbit * 1e6 / 8)  # the layers cross the link once
    results = line["results"]
    assert set(results) == {"zsnap", "skopeo"}
    for tool, result in results.items():
        assert result["seconds"] >= 0.9 * link_floor, (tool, result, link_floor)  # the link really was shaped
        assert result["bytes_out"] > 0.5 * line["source_bytes"], (tool, result)  # zstd:chunked, checked
    assert results["zsnap"]["ratio_vs_zsnap"] == 1.0
    assert results["skopeo"]["ratio_vs_zsnap"] == pytest.approx(
        results["skopeo"]["seconds"] / results["zsnap"]["seconds"]
    )
    assert not _leftovers()


def test_loopback_default_with_a_baseline_checkout(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    line = _bench("--size-mb", "16", "--layers", "2", "--content", "synthetic", "--skip-ctr-remote",
                  "--skip-skopeo", "--baseline", str(root), "--rounds", "2",
                  "--image-cache", str(tmp_path))  # fmt: skip
    assert line["bandwidth_mbit"] is None and line["network"] == "host loopback"
    results = line["results"]
    assert set(results) == {"zsnap", "zsnap-baseline"}
    for result in results.values():
        assert len(result["runs"]) == 2 and len(result["cpu_runs"]) == 2
        assert result["cpu_seconds"] > 0 and result["bytes_out"] > 0
    assert results["zsnap"]["bytes_out"] == results["zsnap-baseline"]["bytes_out"]  # same code, same output
    assert not _leftovers()
