"""``zsnap mount`` end to end on the peer vectors in tests/data/vectors, served by a real registry.

Every mount runs as a subprocess (``zsnap_mount`` fixture); this process only reads the mount.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from fs.lazy.system import pid_alive
from tests.fixtures.fuse import LazyMount, start_mount, zsnap_command

pytestmark = pytest.mark.needs_root

VECTORS = {
    "skopeo": ("skopeo-1.9.3-zstd-chunked", 4168 + 414 + 5633),
    "ctr-remote": ("ctr-remote-0.12-zstdchunked", 2197 + 490 + 1791),
}
FEAT_B_SKOPEO = "sha256:058cfdd58f8daac15818b18473ff2907d9a38fda1d6eae52bb84a0645867c3ac"
FEAT_B_SIZE = 4455890
LAZY_ONLY = ("--no-prefetch", "--no-background-fetch")


@pytest.fixture(scope="module")
def vector_refs(registry, vectors_dir: Path) -> dict[str, str]:
    """Both vector layouts pushed (unchanged) to the session registry."""
    refs = {}
    for key, (name, _) in VECTORS.items():
        registry.push_oci_layout(vectors_dir / name, f"lazy/{key}:features")
        refs[key] = f"docker://{registry.host}/lazy/{key}:features"
    return refs


def _sums_relative(vectors_dir: Path, dest: Path) -> Path:
    """features.SHA256SUMS with paths made relative, for ``sha256sum -c`` run inside the mount."""
    text = (vectors_dir / "features.SHA256SUMS").read_text()
    dest.write_text("".join(line.replace("  /", "  ./", 1) + "\n" for line in text.splitlines()))
    return dest


def _sha256sum_check(m: LazyMount, sums: Path) -> None:
    done = subprocess.run(
        ["sha256sum", "-c", "--quiet", str(sums)],
        cwd=m.mountpoint,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{m.log_tail()}"


@pytest.mark.parametrize("vector", sorted(VECTORS))
def test_vector_mounts_lazily_and_matches_checksums(
    vector: str, vector_refs: dict[str, str], vectors_dir: Path, zsnap_mount, tmp_path: Path
) -> None:
    m = zsnap_mount(vector_refs[vector], *LAZY_ONLY)
    assert m.ready_line.startswith("zsnap: mounted ") and "3 layers, 3 lazy" in m.ready_line
    toc_total = VECTORS[vector][1]
    at_mount = m.wait_stats(lambda s: "bytes_fetched" in s)
    # only the TOCs were fetched to mount (positions come from the annotations: no footer requests)
    assert at_mount["bytes_fetched"] == at_mount["toc_bytes"] == toc_total
    assert at_mount["requests"] == 3

    _sha256sum_check(m, _sums_relative(vectors_dir, tmp_path / "sums"))
    mp = m.mountpoint
    a, b = (mp / "feat/regular.txt").stat(), (mp / "feat/hardlink-to-regular").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    assert os.readlink(mp / "feat/symlink-rel") == "regular.txt"
    assert os.readlink(mp / "feat/symlink-abs") == "/etc/os-release"
    dev = (mp / "feat/null-chardev").lstat()
    assert stat.S_ISCHR(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (1, 3)
    assert stat.S_ISFIFO((mp / "feat/fifo").lstat().st_mode)
    assert os.getxattr(mp / "feat/xattr-file", "user.lazyh") == b"hello"
    assert stat.S_IMODE((mp / "feat/setuid").stat().st_mode) & stat.S_ISUID
    assert (mp / "feat/owned-1000").stat().st_uid == 1000
    # whiteouts and opaque directories as containerd's unpacker would leave them
    assert not (mp / "feat/to-delete").exists() and not (mp / "etc/to-be-deleted").exists()
    assert sorted(os.listdir(mp / "feat/opaque")) == ["c"]
    assert sorted(os.listdir(mp / "etc/opaque-me")) == ["upper-only"]
    assert ".no.prefetch.landmark" not in os.listdir(mp)
    # a second pass is served from the store and the kernel's cache
    time.sleep(1.1)  # the stats file is refreshed every second
    before = m.stats()
    _sha256sum_check(m, tmp_path / "sums")
    time.sleep(1.1)
    after = m.stats()
    assert after["bytes_fetched"] == before["bytes_fetched"] and after["verify_failures"] == 0


def test_reading_one_small_file_fetches_about_that_file(vector_refs: dict[str, str], zsnap_mount) -> None:
    m = zsnap_mount(vector_refs["skopeo"], *LAZY_ONLY)
    base = m.wait_stats(lambda s: "bytes_fetched" in s)["bytes_fetched"]
    assert (m.mountpoint / "feat/regular.txt").read_bytes().startswith(b"")
    s = m.wait_stats(lambda s: s["chunks_verified"] >= 1)
    fetched = s["bytes_fetched"] - base
    # regular.txt is 39 compressed bytes of a 4.4 MB layer; neighbours within the coalescing gap may come
    assert 0 < fetched < 64 * 1024 + 64, s
    assert fetched < FEAT_B_SIZE / 50
    assert s["bytes_by_priority"] == {"on_demand": fetched}


def test_chroot_busybox(vector_refs: dict[str, str], zsnap_mount) -> None:
    m = zsnap_mount(vector_refs["ctr-remote"], *LAZY_ONLY)
    done = subprocess.run(
        ["chroot", str(m.mountpoint), "/bin/sh", "-c", "cat /etc/passwd; ls /feat | wc -l"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("root:x:0:0:")


def test_prefetch_and_background_fill_the_store(
    vector_refs: dict[str, str], zsnap_mount, vectors_dir, tmp_path: Path
) -> None:
    m = zsnap_mount(vector_refs["skopeo"])
    s = m.wait_stats(lambda s: s["background_done"], timeout=30)
    assert (
        s["prefetch_done"] and s["verify_failures"] == 0 and s["bytes_by_priority"].get("background", 0) > 0
    )
    _sha256sum_check(m, _sums_relative(vectors_dir, tmp_path / "sums"))
    time.sleep(1.1)
    after = m.stats()
    assert after["bytes_fetched"] == s["bytes_fetched"]  # everything was already in the store
    assert after["cache_misses"] == s["cache_misses"]


def test_daemon_mode_and_umount(vector_refs: dict[str, str], tmp_path: Path) -> None:
    root, mp = tmp_path / "root", tmp_path / "mnt"
    mp.mkdir()
    cmd = zsnap_command(root, "mount", "--daemon", "--no-background-fetch", vector_refs["skopeo"], str(mp))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("\n") == 1 and done.stdout.startswith("zsnap: mounted ")
        assert (mp / "etc/passwd").read_bytes().startswith(b"root:")
        records = list((root / "mounts").glob("*.json"))
        assert len(records) == 1
        pid = json.loads(records[0].read_text())["pid"]
        done = subprocess.run(
            zsnap_command(root, "umount", str(mp)), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mp) and os.listdir(mp) == []
        assert not pid_alive(pid)  # gone (or a zombie nobody reaps: init here may not)
        assert list((root / "mounts").glob("*.json")) == [] and list((root / "mnt").iterdir()) == []
        again = subprocess.run(
            zsnap_command(root, "umount", str(mp)), capture_output=True, text=True, timeout=60, check=False
        )
        assert again.returncode == 1 and "no zsnap mount" in again.stderr
    finally:
        subprocess.run(["umount", "-l", str(mp)], capture_output=True, check=False)


def test_mount_errors_are_reported(registry, tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    cmd = zsnap_command(
        tmp_path / "root", "mount", "--daemon", f"docker://{registry.host}/no/such:image", str(mp)
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and "error" in done.stderr
    assert not os.path.ismount(mp)


# -- faults --------------------------------------------------------------------------------------------


def _blob_data_path(server, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return server.root / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def _tamper_chunk(path: Path, start: int, end: int, size: int) -> None:
    """Replace blob bytes [start, end) by a valid zstd frame of ``size`` WRONG bytes, padded with a
    skippable frame: it decodes fine, but does not hash to the chunk digest."""
    frame = zstandard.ZstdCompressor(level=19).compress(b"\xee" * size)
    pad = end - start - len(frame) - 8
    assert pad >= 0
    replacement = frame + b"\x50\x2a\x4d\x18" + pad.to_bytes(4, "little") + b"\0" * pad
    assert len(replacement) == end - start
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(replacement)


def test_tampered_chunk_is_eio_for_that_file_only(
    registry_factory, vectors_dir: Path, zsnap_mount, tmp_path: Path
) -> None:
    server = registry_factory(name="tamper")
    server.push_oci_layout(vectors_dir / VECTORS["skopeo"][0], "lazy/tampered:features")
    # second chunk of feat/random-3M: compressed [5132, 17049), 11903 bytes (see the vector's TOC)
    _tamper_chunk(_blob_data_path(server, FEAT_B_SKOPEO), 5132, 17049, 11903)
    m = zsnap_mount(f"docker://{server.host}/lazy/tampered:features", *LAZY_ONLY)
    mp = m.mountpoint
    with pytest.raises(OSError) as info:
        (mp / "feat/random-3M").read_bytes()
    assert info.value.errno == errno.EIO
    assert (mp / "feat/regular.txt").read_bytes().startswith(b"")
    assert len((mp / "feat/text-2M").read_bytes()) == 2 * 1024 * 1024
    with pytest.raises(OSError) as info, open(mp / "feat/random-3M", "rb") as f:  # never cached: still EIO
        f.seek(3010)
        f.read(100)
    assert info.value.errno == errno.EIO
    s = m.wait_stats(lambda s: s["verify_failures"] >= 2)
    assert s["eio"] >= 2
    assert "digest mismatch" in m.log_tail() and "feat/random-3M" in m.log_tail()


def test_registry_outage_gives_bounded_eio_then_recovers(
    registry_factory, vectors_dir: Path, zsnap_mount
) -> None:
    server = registry_factory(name="outage")
    server.push_oci_layout(vectors_dir / VECTORS["skopeo"][0], "lazy/outage:features")
    m = zsnap_mount(f"docker://{server.host}/lazy/outage:features", *LAZY_ONLY, "--fetch-timeout", "4")
    mp = m.mountpoint
    cached = (mp / "etc/passwd").read_bytes()
    server.stop()
    try:
        fd = os.open(mp / "etc/passwd", os.O_RDONLY)
        try:  # drop the kernel's copy of this file only: the bytes must come from the store again
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.read(fd, 1 << 20) == cached
        finally:
            os.close(fd)
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (mp / "feat/text-2M").read_bytes()
        elapsed = time.monotonic() - t0
        assert info.value.errno == errno.EIO
        assert elapsed < 4 + 2, elapsed
        # the reader gives up after fetch-timeout; the fetch itself may still be retrying: the registry
        # comes back only once it has failed (else a retry may succeed and the outage go uncounted)
        m.wait_stats(lambda s: s["fetch_errors"] >= 1, timeout=30)
    finally:
        server.start()
    data = (mp / "feat/text-2M").read_bytes()
    assert len(data) == 2 * 1024 * 1024
    assert m.stats()["fetch_errors"] >= 1


def test_sigterm_cleans_up_everything(vector_refs: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    m = start_mount(root, vector_refs["skopeo"], tmp_path / "a", *LAZY_ONLY)
    try:
        assert (tmp_path / "a/etc/passwd").exists()
        assert len(list((root / "mnt").iterdir())) == 1
        assert len(list((root / "mounts").glob("*.json"))) == 1
    finally:
        code = m.unmount()
    assert code == 0, m.log_tail()
    assert not os.path.ismount(tmp_path / "a")
    assert list((root / "mnt").iterdir()) == [] and list((root / "mounts").glob("*.json")) == []
    assert m.stats()["done"] is True


def test_umount_cleans_up_after_a_killed_server(vector_refs: dict[str, str], tmp_path: Path) -> None:
    root, mp = tmp_path / "root", tmp_path / "mnt"
    mp.mkdir()
    try:
        cmd = zsnap_command(
            root, "mount", "--daemon", "--no-background-fetch", vector_refs["skopeo"], str(mp)
        )
        assert subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
        (record,) = (root / "mounts").glob("*.json")
        os.kill(json.loads(record.read_text())["pid"], 9)
        time.sleep(0.2)
        with pytest.raises(OSError) as info:
            os.listdir(mp)
        assert info.value.errno == errno.ENOTCONN
        done = subprocess.run(zsnap_command(root, "umount", str(mp)), capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not os.path.ismount(mp) and os.listdir(mp) == []
        assert list((root / "mounts").glob("*.json")) == [] and list((root / "mnt").iterdir()) == []
        # the dead mount's store refs are reclaimed by the next open
        listing = subprocess.run(zsnap_command(root, "store", "stats"), capture_output=True, text=True,
                                 timeout=60, check=False)  # fmt: skip
        assert "holder:mount:" in listing.stdout + listing.stderr
    finally:
        subprocess.run(["umount", "-l", str(mp)], capture_output=True, check=False)
