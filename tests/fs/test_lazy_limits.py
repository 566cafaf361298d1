"""A limit set in the daemon's config file reaches the lazy host: a layer past it is refused at attach
with one clear error naming the layer and the limit (the host serves from a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.common import stop_process
from tests.fixtures.fuse import REPO_ROOT, force_unmount

pytestmark = pytest.mark.needs_root

SKOPEO = "skopeo-1.9.3-zstd-chunked"


def _attach_with_config(tmp_path: Path, vectors_dir: Path, config_text: str) -> dict[str, object]:
    """Start a host worker with ``config_text`` as its config file, attach the skopeo vector's image, stop."""
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    root = tmp_path / "root"
    root.mkdir()
    log_path = tmp_path / "host.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fs.host_worker", "--root", str(root), "--config", str(config),
             "--no-prefetch", "--no-background-fetch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
        )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"layers": [], "lazy": [], "attach_seconds": []}
        proc.stdin.write(f"attach oci:{vectors_dir / SKOPEO}:features img0\n".encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, log_path.read_text()[-4000:]
        return json.loads(line)
    finally:
        stop_process(proc, timeout=20)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        force_unmount(root / "mnt")


def test_configured_max_toc_entries_refuses_the_layer_at_attach(tmp_path: Path, vectors_dir: Path) -> None:
    answer = _attach_with_config(tmp_path, vectors_dir, "[limits]\nmax-toc-entries = 3\n")
    error = str(answer.get("error", ""))
    assert "more than the limit of 3 (max-toc-entries)" in error, answer
    assert "layer sha256:" in error, answer  # names the layer
    # the same image attaches under the default limits: the refusal came from the configured limit
    answer = _attach_with_config(tmp_path / "again", vectors_dir, "")
    assert "layers" in answer and len(answer["layers"]) == 3, answer
