"""Hostile images end to end: pushed to the real registry, mounted over FUSE (served by a subprocess),
checked and converted with the real ``zsnap`` command.

* (3) a data chunk relabelled ``zeros`` is EIO at the mount and fails ``zsnap check --full``;
* (4) a file declared as one huge chunk is read in bounded memory (and refused, still bounded, when its
  digest is wrong);
* (5) TOCs with lone surrogates, 10,000-component paths or impossible device numbers fail the mount with
  one ``zsnap: error:`` line naming the layer and the entry;
* (6) a gzip layer with ``../`` names or hardlinks out of the layer or to nothing is refused by
  ``zsnap convert`` naming the entry, and nothing is pushed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fs.digest import sha256_digest
from tests.converter.tarfactory import Member, build_tar
from tests.fixtures.fuse import zsnap_command
from tests.fs.hostile_images import DATA_START, chunked_layout, gzip_layout, push_layout, zstd_frame

pytestmark = pytest.mark.needs_root

LAZY_ONLY = ("--no-prefetch", "--no-background-fetch")


def _toc(*entries: dict) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries)}, separators=(",", ":")).encode()


def _zsnap(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        zsnap_command(root, *args), capture_output=True, text=True, timeout=timeout, check=False
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "ExceptionGroup" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("zsnap: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_data_chunk_relabelled_as_zeros_is_eio_and_fails_check(registry, zsnap_mount, tmp_path: Path) -> None:
    secret = os.urandom(70_000)
    honest = b"honest file\n"
    frame_ok, frame_secret = zstd_frame(honest), zstd_frame(secret)
    data = frame_ok + frame_secret
    s = DATA_START
    toc = _toc(
        {"type": "reg", "name": "ok", "mode": 0o644, "size": len(honest), "digest": sha256_digest(honest),
         "offset": s, "endOffset": s + len(frame_ok)},
        {"type": "reg", "name": "secret", "mode": 0o644, "size": len(secret), "digest": sha256_digest(secret),
         "offset": s + len(frame_ok), "endOffset": s + len(data), "chunkType": "zeros"},
    )  # fmt: skip
    ref = push_layout(chunked_layout(tmp_path / "layout", toc, data), registry.host, "hostile/zeros:1")
    m = zsnap_mount(ref, *LAZY_ONLY)
    assert (m.mountpoint / "ok").read_bytes() == honest
    with pytest.raises(OSError) as info:
        (m.mountpoint / "secret").read_bytes()
    assert info.value.errno == errno.EIO
    assert (m.mountpoint / "ok").read_bytes() == honest  # the mount stays healthy
    line = _one_error_line(_zsnap(tmp_path / "check-root", "check", "--full", ref))
    assert "zero bytes" in line and "secret" in line


@pytest.mark.slow
@pytest.mark.parametrize("honest", [True, False], ids=["right-digest", "wrong-digest"])
def test_huge_declared_chunk_is_read_in_bounded_memory(
    honest: bool, registry, zsnap_mount, tmp_path: Path
) -> None:
    size = 256 << 20  # 16x the default max-read-materialize
    frame = zstd_frame(bytes(size))  # a few KB of blob declaring 256 MiB
    digest = sha256_digest(bytes(size)) if honest else sha256_digest(b"something else")
    toc = _toc({"type": "reg", "name": "big", "mode": 0o644, "size": size, "digest": digest,
                "offset": DATA_START, "endOffset": DATA_START + len(frame)})  # fmt: skip
    ref = push_layout(chunked_layout(tmp_path / "layout", toc, frame), registry.host, f"hostile/big:{honest}")
    m = zsnap_mount(ref, *LAZY_ONLY)
    before = _vm_hwm_kib(m.proc.pid)
    if honest:
        with open(m.mountpoint / "big", "rb") as f:
            assert f.read(1) == b"\0"
            f.seek(size - 3)
            assert f.read() == b"\0\0\0"
    else:
        with pytest.raises(OSError) as info, open(m.mountpoint / "big", "rb") as f:
            f.read(1)
        assert info.value.errno == errno.EIO
    grown = _vm_hwm_kib(m.proc.pid) - before
    assert grown < 100 * 1024, f"peak RSS grew by {grown} KiB reading a {size}-byte chunk"
    assert list((m.root / "wip").iterdir()) == []


SURROGATE_NAME = '{"type":"reg","name":"a\\ud800","mode":420}'
SURROGATE_LINK = '{"type":"symlink","name":"l","linkName":"\\udc00x","mode":511}'
SURROGATE_XATTR = '{"type":"dir","name":"x","mode":493,"xattrs":{"user.\\ud800":"YQ=="}}'


@pytest.mark.parametrize(
    "entry,expected",
    [
        (SURROGATE_NAME, "surrogate"),
        (SURROGATE_LINK, "surrogate"),
        (SURROGATE_XATTR, "surrogate"),
        (json.dumps({"type": "dir", "name": "/".join(["d"] * 10_000), "mode": 493}), "max-path"),
        (json.dumps({"type": "char", "name": "dev/x", "devMajor": 1 << 62, "mode": 420}), "device number"),
    ],
    ids=["surrogate-name", "surrogate-symlink-target", "surrogate-xattr-name", "10k-components",
         "devmajor-2^62"],
)  # fmt: skip
def test_malformed_tocs_fail_the_mount_with_one_error_line(
    entry: str, expected: str, registry, tmp_path: Path
) -> None:
    toc = ('{"version":1,"entries":[{"type":"dir","name":"etc","mode":493},' + entry + "]}").encode()
    layout_ref = chunked_layout(tmp_path / "layout", toc, b"")
    ref = push_layout(layout_ref, registry.host, "hostile/toc:1")
    layer = json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"][0]["digest"]
    mp = tmp_path / "mnt"
    mp.mkdir()
    line = _one_error_line(_zsnap(tmp_path / "root", "mount", "--daemon", ref, str(mp)))
    assert expected in line and f"image {ref}" in line and "layer sha256:" in line, line
    assert "entry 1" in line or "path " in line, line
    assert len(line) < 1500, line
    assert layer  # the manifest exists: the error came from the TOC, not from a missing image
    assert not os.path.ismount(mp)


def _manifest_exists(host: str, repo: str, tag: str) -> bool:
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD")
    req.add_header("Accept", "application/vnd.oci.image.manifest.v1+json")
    try:
        with urllib.request.urlopen(req, timeout=30):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


@pytest.mark.parametrize(
    "members,entry,message",
    [
        ([Member("etc/passwd", data=b"root:x:0:0\n"), Member("../evil", data=b"x")], "../evil",
         "escapes the layer"),
        ([Member("etc/passwd", data=b"x"), Member("shadow", tarfile.LNKTYPE, linkname="../../etc/shadow")],
         "shadow", "escapes the layer"),
        ([Member("a", data=b"x"), Member("b", tarfile.LNKTYPE, linkname="missing")], "b", "missing"),
    ],
    ids=["dotdot-name", "hardlink-to-etc-shadow", "hardlink-to-missing"],
)  # fmt: skip
def test_convert_refuses_layers_the_mount_would_refuse(
    members, entry: str, message: str, registry, tmp_path: Path
) -> None:
    src = push_layout(
        gzip_layout(tmp_path / "layout", build_tar(members).data), registry.host, "hostile/src:1"
    )
    done = _zsnap(tmp_path / "root", "convert", src, f"docker://{registry.host}/hostile/out:1")
    line = _one_error_line(done)
    assert message in line and f"path {entry}" in line and "image " in line and "layer sha256:" in line, line
    assert not _manifest_exists(registry.host, "hostile/out", "1")


def test_oci_layout_with_a_non_string_digest_is_one_error_line(registry, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": 12345, "size": 10,
         "annotations": {"org.opencontainers.image.ref.name": "bad"}}]}  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    done = _zsnap(tmp_path / "root", "convert", f"oci:{layout}:bad", f"docker://{registry.host}/hostile/x:1")
    line = _one_error_line(done)
    assert "index.json" in line and "digest" in line, line
