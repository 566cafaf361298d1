"""``zsnap store stats|gc`` and ``zsnap bench store``, run as a user would (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fs.store import Store, StoreStats

REPO = Path(__file__).resolve().parents[2]
#: ``python -m snapshotter`` from the repository root runs this checkout's code (the installed ``zsnap``
#: script may belong to another checkout sharing the venv).
ZSNAP = [sys.executable, "-m", "snapshotter"]
TEMP = "uncompressed/sha256:" + "cd" * 32


def zsnap(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # wide enough that rich does not fold long names
    proc = subprocess.run([*ZSNAP, *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        pytest.fail(f"zsnap {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def populated(tmp_path: Path):
    root = tmp_path / "root"
    with Store.open(root) as store:
        kept = store.put(b"k" * 3000, holder="layer:kept")
        loose = [store.put(bytes([i]) * 1000) for i in range(4)]
        with store.acquire(TEMP, lambda p: p.write_bytes(b"t" * 500), holder="convert:test"):
            yield root, store, kept, loose


def test_stats_json_and_human(populated) -> None:
    root, _, _, _ = populated
    out = zsnap("--root", str(root), "store", "stats", "--json").stdout
    assert out.count("\n") == 1  # exactly one JSON object
    stats = json.loads(out)
    assert (stats["objects"], stats["bytes"], stats["refs"]) == (5, 7000, 1)
    assert stats["referenced_bytes"] == 3000
    assert stats["temp_objects"] == [
        {"name": TEMP, "state": "ready", "size": 500, "holders": ["convert:test"]}
    ]
    human = zsnap("--root", str(root), "store", "stats").stdout
    assert "blobs" in human and "6.8 KiB" in human and "convert:test" in human
    assert TEMP in human


def test_gc_with_cap_json_then_human(populated) -> None:
    root, store, kept, loose = populated
    report = json.loads(zsnap("--root", str(root), "store", "gc", "--max-size", "5K", "--json").stdout)
    assert report["max_size"] == 5120
    assert report["removed_objects"] == 2 and report["bytes_after"] == 5000  # the two LRU loose chunks
    assert store.has(kept) and not store.has(loose[0]) and store.has(loose[3])
    human = zsnap("--root", str(root), "store", "gc").stdout  # no cap: every unreferenced blob goes
    assert "removed 2 blob(s)" in human
    stats = json.loads(zsnap("--root", str(root), "store", "stats", "--json").stdout)
    assert stats["objects"] == 1 and len(stats["temp_objects"]) == 1  # held temp object untouched


def test_stats_of_an_unused_root_is_an_empty_report(tmp_path: Path) -> None:
    root = tmp_path / "nothing"
    stats = json.loads(zsnap("--root", str(root), "store", "stats", "--json").stdout)
    assert stats == {**json.loads(StoreStats.empty(str(root)).to_json()), "reclaimed": []}
    assert stats["objects"] == 0 and stats["temp_objects"] == []
    human = zsnap("--root", str(root), "store", "stats")
    assert human.stderr == "" and "blobs" in human.stdout and "none" in human.stdout
    assert not root.exists(), "stats must not create a store"


def test_cli_errors(tmp_path: Path) -> None:
    missing = zsnap("--root", str(tmp_path / "nothing"), "store", "gc", check=False)
    assert missing.returncode == 1 and "no store" in missing.stderr
    Store.open(tmp_path / "s").close()
    bad = zsnap("--root", str(tmp_path / "s"), "store", "gc", "--max-size", "lots", check=False)
    assert bad.returncode == 2 and "not a size" in bad.stderr


def test_bench_store_prints_one_json_line(tmp_path: Path) -> None:
    out = zsnap("bench", "store", "--chunks", "40", "--hot", "8", "--dir", str(tmp_path), "--json-only")
    [line] = out.stdout.splitlines()
    result = json.loads(line)
    assert result["bench"] == "store" and result["chunks"] == 40
    for key in ("get_cached_us", "raw_pread_us", "lookup_us", "raw_lmdb_get_us", "put_us"):
        assert result[key] > 0
    assert list(tmp_path.iterdir()) == []  # scratch store removed


def test_gc_says_when_it_rewrote_a_pack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Store.open(root) as store:
        digests = store.put_many([(bytes([i]) * 4000, None) for i in range(4)])
        store.ref(digests[0], "layer:kept")  # one of four stays: the pack is three quarters dead after gc
    human = zsnap("--root", str(root), "store", "gc").stdout
    assert "removed 3 blob(s)" in human and "pack files rewritten without their dead blobs: 1" in human
    with Store.open(root) as store:
        assert store.pread(digests[0], 0, 4000) == bytes([0]) * 4000 and store.verify() == []
