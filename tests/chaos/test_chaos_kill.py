"""kill -9 at random points (seeded, printed) of ``zsnap mount`` while it is read and of ``zsnap convert``.

After every kill the store under the same ``--root`` reopens consistent (``Store.verify``, every blob file
hashes to its name, ``zsnap store stats --json`` lists no temp objects and no holders, no wip files);
every byte a reader got before the kill matched; the restarted mount / conversion completes correctly.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.chaos.common import (
    VECTOR,
    assert_check_full_passes,
    assert_store_consistent,
    chaos_rng,
    chaos_rounds,
    expected_files,
    sha256_file,
)
from tests.fixtures.fuse import REPO_ROOT, start_mount, zsnap_command
from tests.fixtures.images import push

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

# what a read of a mount whose server died may get: the FUSE connection is gone
DEAD_MOUNT_ERRNOS = {errno.ENOTCONN, errno.EIO, errno.ECONNABORTED, errno.ENOENT, errno.ESTALE}


class Reader(threading.Thread):
    """Reads every file of the mount over and over until stopped; checks each completed read."""

    def __init__(self, mountpoint: Path, files: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.mountpoint, self.files = mountpoint, files
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.wrong: list[str] = []
        self.unexpected: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for rel, digest in sorted(self.files.items()):
                if self.stop.is_set():
                    return
                try:
                    got = sha256_file(self.mountpoint / rel)
                except OSError as e:
                    self.failed += 1
                    if e.errno not in DEAD_MOUNT_ERRNOS:
                        self.unexpected.append(f"{rel}: {e!r}")
                    time.sleep(0.01)
                    continue
                if got == digest:
                    self.ok += 1
                else:
                    self.wrong.append(rel)


def test_kill_9_of_a_mount_being_read(registry, vectors_dir: Path, tmp_path: Path) -> None:
    _, rng = chaos_rng("test_kill_9_of_a_mount_being_read")
    registry.push_oci_layout(vectors_dir / VECTOR, "chaos/kill:features")
    ref = f"docker://{registry.host}/chaos/kill:features"
    files = expected_files(vectors_dir)
    root, mountpoint = tmp_path / "root", tmp_path / "mnt"
    kills = []
    reads = reclaimed = 0
    for round_ in range(chaos_rounds(4)):
        # background fetching on in odd rounds: the kill then also lands in the middle of store writes
        extra = ["--no-background-fetch"] if round_ % 2 == 0 else []
        m = start_mount(root, ref, mountpoint, *extra)
        reader = Reader(m.mountpoint, files)
        reader.start()
        delay = rng.uniform(0.0, 1.0)
        kills.append(round(delay, 3))
        time.sleep(delay)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait()
        reader.stop.set()
        reader.join(30)
        assert not reader.is_alive(), "a read of a dead mount hangs"
        m.unmount()  # the process is dead already: this only detaches what stayed mounted
        assert not reader.wrong, f"round {round_}: wrong bytes served for {reader.wrong}"
        assert not reader.unexpected, reader.unexpected
        reclaimed += len(assert_store_consistent(root)["reclaimed_at_open"])
        reads += reader.ok
    # the last restart on the same root serves everything right
    m = start_mount(root, ref, mountpoint)
    try:
        for rel, digest in files.items():
            assert sha256_file(m.mountpoint / rel) == digest, rel
    finally:
        m.unmount()
    stats = assert_store_consistent(root)
    print(
        f"kill points {kills}; {reads} reads checked before the kills; {reclaimed} reclaimed; "
        f"store {stats['objects']} objects"
    )
    assert reads > 0


def _convert(root: Path, src: str, dst: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*zsnap_command(root), "convert", "-q", "--json", f"docker://{src}", f"docker://{dst}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )


def _convert_leftovers(root: Path) -> list[Path]:
    return [p for p in (root / "convert-cache").glob(".*.tmp")] + [
        p for area in ("tmp", "wip") for p in (root / area).rglob("*") if p.is_file()
    ]


def test_kill_9_of_a_conversion(registry, test_images, tmp_path: Path) -> None:
    _, rng = chaos_rng("test_kill_9_of_a_conversion")
    src = push(test_images["large:gzip"], registry.host, "chaos/killconv:v1")
    # a clean conversion's duration spans the kill points (each round has its own root: a root that
    # converted the image once would answer the next conversion from its cache, too fast to kill)
    started = time.monotonic()
    proc = _convert(tmp_path / "clean", src, f"{registry.host}/chaos/killconv-out:clean")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    clean = time.monotonic() - started
    kills = []
    killed = reclaimed = 0
    for round_ in range(chaos_rounds(3)):
        root = tmp_path / f"root{round_}"
        dst = f"{registry.host}/chaos/killconv-out:r{round_}"
        proc = _convert(root, src, dst)
        delay = rng.uniform(0.3, 1.0) * clean
        kills.append(round(delay, 3))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        out, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        reclaimed += len(assert_store_consistent(root)["reclaimed_at_open"])
        # restarted, the same conversion completes (reusing what the killed one left) and leaks nothing
        proc = _convert(root, src, dst)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])
        assert_check_full_passes(root, f"docker://{dst}", timeout=300)
        assert_store_consistent(root)
        assert not _convert_leftovers(root), _convert_leftovers(root)
    print(f"clean conversion {clean:.2f}s; kill points {kills}; {killed} killed; {reclaimed} reclaimed")
    assert killed > 0
