"""Shared by the chaos tests: the seed and round knobs, the store checks run after every crash or fault.

``ZSNAP_CHAOS_SEED`` replays a run (every test prints the seed it used); ``ZSNAP_CHAOS_ROUNDS`` makes a
long run (the default keeps the whole package to a few minutes on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

from fs.store import Store
from tests.fixtures.fuse import REPO_ROOT, zsnap_command

VECTOR = "skopeo-1.9.3-zstd-chunked"


def chaos_rounds(default: int) -> int:
    return int(os.environ.get("ZSNAP_CHAOS_ROUNDS", default))


def chaos_rng(test: str) -> tuple[int, random.Random]:
    """The seed (``ZSNAP_CHAOS_SEED`` or a fresh one, printed) and a Random made from it."""
    seed = int(os.environ.get("ZSNAP_CHAOS_SEED", time.time_ns() % 1_000_000_007))
    print(f"{test}: ZSNAP_CHAOS_SEED={seed}")
    return seed, random.Random(seed)


def expected_files(vectors_dir: Path) -> dict[str, str]:
    """Relative path -> sha256 hex of every regular file of the features vector."""
    out = {}
    for line in (vectors_dir / "features.SHA256SUMS").read_text().splitlines():
        digest, path = line.split("  ", 1)
        out[path.lstrip("/")] = digest
    return out


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assert_store_consistent(root: Path) -> dict:
    """The store under ``root`` reopens consistent: every blob hashes to its digest, refcounts agree, no
    temp objects or holders of dead processes survive the open, no wip files.

    Returns ``store stats --json`` plus ``reclaimed_at_open``: what the open cleaned up."""
    with Store.open(root) as store:
        reclaimed = list(store.reclaimed)
        problems = store.verify(full=True)
        assert not problems, problems
    assert not list((root / "wip").glob("*")), list((root / "wip").iterdir())
    done = subprocess.run(
        [*zsnap_command(root), "store", "stats", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=True,
    )
    stats = json.loads(done.stdout)
    assert not stats["temp_objects"], stats
    assert not stats["holders"], stats  # nothing runs now: no holder may outlive its process
    for path in (root / "data").rglob("*"):
        if path.is_file():
            assert "sha256:" + sha256_file(path) == "sha256:" + path.name, path
    stats["reclaimed_at_open"] = reclaimed
    return stats


def assert_check_full_passes(root: Path, ref: str, *, timeout: float) -> None:
    """``zsnap check --full REF`` (every chunk fetched and verified against the TOC) says OK."""
    check = subprocess.run(
        [*zsnap_command(root), "check", "--full", ref],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        check=False,
    )
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
