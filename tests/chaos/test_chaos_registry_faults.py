"""Registry faults at random (reset, stall, flipped bytes, 5xx, 401) between zsnap and a REAL registry.

A :class:`~tests.fixtures.faultproxy.FaultProxy` sits in front of the session registry. A lazy mount read
through it returns the right bytes or EIO (never wrong bytes, never a hang past the fetch timeout), and
once the faults stop every read succeeds and the store holds only verified chunks. A conversion through
it succeeds with a correct image or fails with one ``zsnap: error:`` line and pushes no manifest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.chaos.common import (
    VECTOR,
    assert_check_full_passes,
    assert_store_consistent,
    chaos_rng,
    chaos_rounds,
    expected_files,
)
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.fuse import REPO_ROOT, force_unmount, start_mount, zsnap_command
from tests.fixtures.images import push

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]

FETCH_TIMEOUT = 2.0
STALL = FETCH_TIMEOUT + 2.0
# The fetch timeout bounds each FUSE read request; one read(2) can wait for two in a row (the kernel
# retries a failed readahead request with a synchronous one), plus slack for a loaded machine.
READ_CALL_BOUND = 2 * FETCH_TIMEOUT + 1.5


@pytest.fixture
def proxy(registry, request) -> FaultProxy:
    seed, _ = chaos_rng(request.node.name)
    p = FaultProxy(registry.host, seed=seed, stall_seconds=STALL).start()
    yield p
    p.stop()


def _read_file(path: Path, slowest: list[float]) -> str:
    """sha256 of the file read 128 KiB per ``read`` call, each call timed (the slowest kept)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            started = time.monotonic()
            try:
                piece = os.read(fd, 128 * 1024)
            finally:
                took = time.monotonic() - started
                slowest[0] = max(slowest[0], took)
                assert took < READ_CALL_BOUND, f"{path}: a read call took {took:.1f}s"
            if not piece:
                return h.hexdigest()
            h.update(piece)
    finally:
        os.close(fd)


def _read_all_once(
    mountpoint: Path, files: dict[str, str], pending: set[str], slowest: list[float]
) -> tuple[int, int]:
    """Read every pending file once: right bytes (dropped from ``pending``) or EIO, never wrong bytes.
    Returns (ok, eio)."""
    ok = eio = 0
    for rel in sorted(pending):
        try:
            digest = _read_file(mountpoint / rel, slowest)
        except OSError as e:
            assert e.errno == errno.EIO, (rel, e)
            eio += 1
        else:
            assert digest == files[rel], f"{rel}: a read returned wrong bytes"
            pending.discard(rel)
            ok += 1
    return ok, eio


def test_lazy_reads_through_a_faulty_registry_are_right_or_eio(
    proxy: FaultProxy, registry, vectors_dir: Path, tmp_path: Path
) -> None:
    registry.push_oci_layout(vectors_dir / VECTOR, "chaos/faults:features")
    files = expected_files(vectors_dir)
    ref = f"docker://{proxy.host}/chaos/faults:features"
    totals = {"ok": 0, "eio": 0, "fetch_errors": 0}
    slowest = [0.0]
    mounts = {"ok": 0, "failed": 0}
    for round_ in range(chaos_rounds(2)):
        root = tmp_path / f"root{round_}"
        args = ("--no-prefetch", "--no-background-fetch", "--fetch-timeout", str(FETCH_TIMEOUT))
        # odd rounds mount through the faults too (the TOC fetches): a mount comes up or fails cleanly
        proxy.rate = 0.5 if round_ % 2 else 0.0
        try:
            m = start_mount(root, ref, tmp_path / f"mnt{round_}", *args, verbose=False)
        except RuntimeError as e:
            mounts["failed"] += 1
            message = str(e)
            errors = [line for line in message.splitlines() if line.startswith("zsnap: error:")]
            assert "Traceback" not in message and len(errors) == 1, message
            print(errors[0])
            force_unmount(tmp_path / f"mnt{round_}")
            proxy.rate = 0.0
            m = start_mount(root, ref, tmp_path / f"mnt{round_}", *args)
        else:
            mounts["ok"] += 1
        try:
            proxy.rate = 0.5
            pending = set(files)
            for _ in range(3):
                ok, eio = _read_all_once(m.mountpoint, files, pending, slowest)
                totals["ok"] += ok
                totals["eio"] += eio
            proxy.rate = 0.0
            _read_all_once(m.mountpoint, files, pending, slowest)
            assert not pending, (
                f"reads still fail after the faults stopped: {sorted(pending)}\n{m.log_tail()}"
            )
            time.sleep(1.1)  # the stats file is written every second
            totals["fetch_errors"] += m.stats()["fetch_errors"]
        finally:
            proxy.rate = 0.0
            m.unmount()
        assert_store_consistent(root)
    print(
        f"faults injected {dict(proxy.injected)}; mounts under faults {mounts}; reads {totals}; "
        f"slowest read call {slowest[0]:.2f}s"
    )
    # the faults were really met by the mount's fetches (read-ahead fetches many files in one request, so
    # a failed one need not surface as a reader's EIO: the next read fetches again)
    assert sum(proxy.injected.values()) > 0 and totals["fetch_errors"] > 0


def _manifest_exists(host: str, repo: str, tag: str) -> bool:
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30):
            return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def test_conversion_through_a_faulty_registry_succeeds_or_fails_cleanly(
    proxy: FaultProxy, registry, test_images, tmp_path: Path
) -> None:
    src = push(test_images["features:gzip"], registry.host, "chaos/convsrc:v1")
    src_via_proxy = src.replace(registry.host, proxy.host, 1)
    outcomes = {"ok": 0, "failed": 0}
    for round_ in range(chaos_rounds(3)):
        proxy.rate, proxy.upload_rate = 0.4, 0.1
        tag = f"r{round_}"
        root = tmp_path / f"root{round_}"
        done = subprocess.run(
            [
                *zsnap_command(root),
                "convert",
                "-q",
                f"docker://{src_via_proxy}",
                f"docker://{proxy.host}/chaos/convdst:{tag}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
            check=False,
        )
        proxy.rate = proxy.upload_rate = 0.0
        if done.returncode == 0:
            outcomes["ok"] += 1
            assert_check_full_passes(root, f"docker://{registry.host}/chaos/convdst:{tag}", timeout=120)
        else:
            outcomes["failed"] += 1
            lines = done.stderr.strip().splitlines()
            assert "Traceback" not in done.stderr, done.stderr
            assert [line for line in lines if line.startswith("zsnap: error:")] == lines[-1:], done.stderr
            assert len(lines) == 1, done.stderr
            assert not _manifest_exists(registry.host, "chaos/convdst", tag)
        assert_store_consistent(root)
    print(f"faults injected {dict(proxy.injected)}; conversions {outcomes}")
