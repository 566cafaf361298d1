"""``zsnap bench startup`` end to end against real containerd + runc, in its own shaped network namespace.

Uses the default cache directory (``/var/cache/zsnap/bench-startup``), so the Debian base is debootstrapped
once per machine (a few minutes the first time) and reused afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapshotter.bench.startup import netns
from tests.fixtures.common import bench_leftovers

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snapshotter", "bench", "startup", *args],
                          capture_output=True, text=True, timeout=1800)  # fmt: skip


def _ours() -> set[str]:
    return bench_leftovers(b"zsnap-bench-startup-")


def test_full_mode_end_to_end(tmp_path: Path) -> None:
    netns_dir_existed = netns.NETNS_DIR.exists()
    proc = _bench("--sizes", "0.05", "--repeat", "1", "--modes", "full", "--json", str(tmp_path / "r.json"),
                  "--chart", str(tmp_path / "c.png"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["bench"] == "startup" and line["network"] == "shaped" and line["rtt_ms"] == 20.0
    doc = json.loads((tmp_path / "r.json").read_text())
    (image,) = doc["images"]
    full = image["modes"]["full"]
    assert image["size_bytes"] >= 50_000_000
    assert full["pull_s"] > 0 and full["create_s"] > 0 and full["run_s"] > 0
    assert full["total_s"] == pytest.approx(full["pull_s"] + full["create_s"] + full["run_s"])
    assert full["readall_s"] > 0 and full["readall_hog_s"] is None
    # a full pull downloads every layer (gzip of the Debian base alone is ~50 MB)
    assert full["fetched_bytes"] > 40_000_000
    (sample,) = doc["samples"]
    assert sample["output"].startswith("started\n")  # python3 ran, then bash counted /usr/bin
    assert int(sample["output"].split()[1]) > 50
    assert (tmp_path / "c.png").stat().st_size > 5000
    assert f"netns {netns.PREFIX}" in proc.stderr and "rate 200Mbit" in proc.stderr
    assert not _ours()
    assert netns_dir_existed or not netns.NETNS_DIR.exists()  # nor /run/netns if the run made it


def test_interrupt_stops_everything() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "snapshotter", "bench", "startup", "--sizes", "0.05", "--repeat", "20",
         "--modes", "full"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        # a suite started in the background of a non-interactive shell inherits an ignored SIGINT, which
        # Python then leaves ignored: the bench must see Ctrl-C as a terminal would send it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "#1 pull" in line:  # a sample is done; the next one is running now
                break
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(120) == 130, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "interrupted" in rest
    assert not _ours()


def test_lazy_modes_end_to_end(tmp_path: Path) -> None:
    proc = _bench("--sizes", "0.3", "--repeat", "1", "--modes", "full,lazy,lazy-prefetch", "--json",
                  str(tmp_path / "r.json"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    modes = doc["images"][0]["modes"]
    for mode in ("lazy", "lazy-prefetch"):
        assert modes[mode]["run_s"] > 0
        # lazily, only a fraction of the image crosses the network before first output
        assert modes[mode]["fetched_bytes"] < modes["full"]["fetched_bytes"] / 2
        # the daemon's own counters: the workload read something, and the TOCs were part of the fetch
        assert modes[mode]["read_bytes"] > 0 and 0 < modes[mode]["toc_bytes"] < modes[mode]["fetched_bytes"]
    for sample in doc["samples"]:
        assert sample["output"].startswith("started\n")
    assert not _ours()
