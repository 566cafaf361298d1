"""Pure helpers of fs/lazy: tar indexing, LayerIndex -> items, prefetch batching, kernel-facing helpers."""

from __future__ import annotations

import io
import stat
import tarfile

import pytest

from fs.errors import FormatError
from fs.format.tree import Chunk
from fs.lazy import system
from fs.lazy.inodes import InodeTable
from fs.lazy.prefetch import batches
from fs.lazy.stats import MountStats, percentile
from fs.lazy.tarindex import index_tar


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def test_index_tar_all_types_and_offsets() -> None:
    data = b"hello world"
    reg = _info("./etc/hello", size=len(data), mode=0o4755, uid=7, gid=8, mtime=1700000000)
    reg.pax_headers = {"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5"}
    buf = _tar(
        [
            (_info("./", tarfile.DIRTYPE, mode=0o755), None),
            (_info("etc", tarfile.DIRTYPE, mode=0o700), None),
            (reg, data),
            (_info("etc/hl", tarfile.LNKTYPE, linkname="etc/hello"), None),
            (_info("etc/sl", tarfile.SYMTYPE, linkname="../x"), None),
            (_info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
            (_info("p", tarfile.FIFOTYPE), None),
            (_info("etc/.wh.gone"), b""),
        ]
    )
    raw = buf.getvalue()
    items = index_tar(buf)
    by = {i.path: i for i in items}
    assert [i.path for i in items][:3] == ["", "etc", "etc/hello"]
    h = by["etc/hello"]
    assert h.kind == "reg" and h.size == len(data) and raw[h.content : h.content + h.size] == data
    assert h.mode == 0o4755 and (h.uid, h.gid) == (7, 8) and h.mtime_ns == 1_700_000_000_500_000_000
    assert h.xattrs == {"user.k": b"v"}
    assert (by["etc/hl"].kind, by["etc/hl"].target) == ("hardlink", "etc/hello")
    assert (by["etc/sl"].kind, by["etc/sl"].target) == ("symlink", "../x")
    assert (by["dev/null"].kind, by["dev/null"].dev_major, by["dev/null"].dev_minor) == ("char", 1, 3)
    assert by["p"].kind == "fifo"
    t = InodeTable()
    t.add_layer("l", items)
    assert t.lookup_path("l/etc/hl") is t.lookup_path("l/etc/hello")
    assert stat.S_ISCHR(t.lookup_path("l/etc/gone").mode)


def test_index_tar_rejects_escapes_and_garbage() -> None:
    with pytest.raises(FormatError):
        index_tar(_tar([(_info("../evil", size=0), b"")]))
    with pytest.raises(FormatError):
        index_tar(io.BytesIO(b"\x01" * 1024))


def _chunk(off: int, end: int) -> Chunk:
    return Chunk(0, 1, off, end, "sha256:" + "0" * 64)


def test_prefetch_batches_by_compressed_span() -> None:
    chunks = [_chunk(0, 100), _chunk(100, 200), _chunk(200, 1000), _chunk(1000, 1100)]
    assert [[c.compressed_offset for c in b] for b in batches(chunks, 300)] == [[0, 100], [200], [1000]]
    assert batches([], 10) == []


def test_overlay_command_and_options() -> None:
    assert system.overlay_mount_command(["a"], "/m") == [
        "mount",
        "--bind",
        "-o",
        "ro,nosuid,nodev",
        "a",
        "/m",
    ]
    assert system.overlay_mount_command(["top", "bottom"], "/m") == [
        "mount", "-t", "overlay", "overlay", "-o", "ro,nosuid,nodev,lowerdir=top:bottom", "/m"
    ]  # fmt: skip
    assert system.overlay_mount_command(["top", "bottom"], "/m", allow_suid_dev=True)[5] == (
        "ro,suid,dev,lowerdir=top:bottom"
    )
    for bad in ([], ["a:b", "c"], ["a,b", "c"]):
        with pytest.raises(ValueError):
            system.overlay_mount_command(bad, "/m")


def test_mountpoints_inside_or_above_the_root_are_refused(tmp_path) -> None:
    from fs.errors import ZsnapError

    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert system.check_mountpoint(tmp_path / "elsewhere", root) == str(tmp_path / "elsewhere")
    for bad in (root, root / "mnt", tmp_path, tmp_path / "elsewhere" / ".."):
        with pytest.raises(ZsnapError, match="zsnap root"):
            system.check_mountpoint(bad, root)
    (tmp_path / "link").symlink_to(root / "mnt")  # a symlink into the root is just as bad
    with pytest.raises(ZsnapError, match="inside the zsnap root"):
        system.check_mountpoint(tmp_path / "link", root)


def test_mount_source_dev_from_mountinfo() -> None:
    info = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:55 / /tmp/with\\040space rw - fuse.zsnap zsnap ro\n"
        "41 22 0:56 / /tmp/with\\040space rw - overlay overlay ro\n"
    )
    assert system.mount_source_dev("/tmp/with space", mountinfo=info) == "0:56"
    assert system.mount_source_dev("/nope", mountinfo=info) is None


def test_mounts_under_lists_deepest_first_and_only_below(tmp_path) -> None:
    top = str(tmp_path / "root")
    info = (
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        f"50 22 0:60 / {top}/proc rw - proc proc rw\n"
        f"51 50 0:61 / {top}/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n"
        f"52 22 0:62 / {top}-other rw - tmpfs t rw\n"  # a sibling whose name only starts the same
        f"53 22 0:63 / {top}/dev\\040pts rw - devpts d rw\n"
    )
    assert system.mounts_under(top, mountinfo=info) == [
        f"{top}/proc/sys/fs/binfmt_misc", f"{top}/dev pts", f"{top}/proc",
    ]  # fmt: skip
    assert system.mounts_under(tmp_path / "elsewhere", mountinfo=info) == []


def test_mount_records_roundtrip(tmp_path) -> None:
    import os

    rec = system.MountRecord(
        "abc",
        os.getpid(),
        system.process_start_time(os.getpid()),
        str(tmp_path / "m"),
        "/f",
        "docker://x/y:z",
    )
    rec.write(tmp_path)
    (tmp_path / "mounts" / "junk.json").write_text("{")
    assert system.find_record(tmp_path, tmp_path / "m") == rec
    assert rec.alive
    assert not system.MountRecord("d", os.getpid(), 1, "/x", "/f", "i").alive
    rec.remove(tmp_path)
    assert system.find_record(tmp_path, tmp_path / "m") is None


def test_stats_percentiles_and_json(tmp_path) -> None:
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    s = MountStats()
    for i in range(1, 101):
        s.record_fetch(10, i / 1000)
    d = s.to_dict()
    assert d["bytes_fetched"] == 1000 and d["requests"] == 100
    assert d["fetch_latency"]["p50"] == 0.05 and d["fetch_latency"]["p95"] == 0.095
    assert d["fetch_latency"]["max"] == 0.1
    s.write(tmp_path / "s.json", extra=1)
    import json

    assert json.loads((tmp_path / "s.json").read_text())["extra"] == 1
