"""The built-in demo (``bash scripts/demo.sh`` runs it after setup) works, twice in a row, and leaves no
process, mount, network namespace or work directory behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snapshotter.bench.startup import netns

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def _leftovers() -> list[str]:
    left = [str(p) for p in Path(tempfile.gettempdir()).glob("zsnap-demo-*")]
    left += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "zsnap-demo-" in line]
    if netns.NETNS_DIR.is_dir():
        left += [p.name for p in netns.NETNS_DIR.glob(f"{netns.PREFIX}*")]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"zsnap-demo-" in (entry / "cmdline").read_bytes():
                    left.append(f"pid {entry.name}")
            except OSError:
                pass
    return left


def test_demo_runs_twice_and_leaves_nothing(tmp_path: Path) -> None:
    assert not _leftovers()
    netns_dir_existed = netns.NETNS_DIR.exists()
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "snapshotter.demo", "--base", "busybox", "--size-gb", "0.05",
             "--cache-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "demo done" in proc.stdout
        assert "started\n" in proc.stdout  # the container's first output
        assert "startup: lazy" in proc.stdout and "vs full pull" in proc.stdout
        assert not _leftovers()
        assert netns_dir_existed or not netns.NETNS_DIR.exists()
