"""What containerd's snapshotter conformance suite (``snapshots/testsuite``) checks, driven through the gRPC
API of a running ``zsnap serve`` (a subprocess), with the returned mounts mounted for real."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from snapshotter.proto import snapshots_pb2 as pb
from tests.snapshotter.daemon import Daemon, running_daemon

pytestmark = pytest.mark.needs_root
Code = grpc.StatusCode


def code_of(call, *args, **kw) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kw)
    return info.value.code()


@contextlib.contextmanager
def mounted(mounts: Sequence[pb.__class__], target: Path) -> Iterator[Path]:
    """Mount what the snapshotter returned at ``target`` (as containerd's mount.All would)."""
    target.mkdir(parents=True, exist_ok=True)
    assert len(mounts) == 1
    m = mounts[0]
    options = [o for o in m.options if o != "rbind"]
    if m.type == "bind":
        cmd = ["mount", "--rbind", m.source, str(target)]
        subprocess.run(cmd, check=True, capture_output=True)
        if "ro" in options:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
    else:
        cmd = ["mount", "-t", m.type, "-o", ",".join(options), m.source, str(target)]
        subprocess.run(cmd, check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True, capture_output=True)


def prepare(d: Daemon, key: str, parent: str = "", **labels: str):
    return d.stub().Prepare(pb.PrepareSnapshotRequest(key=key, parent=parent, labels=labels)).mounts


def commit(d: Daemon, name: str, key: str, **labels: str) -> None:
    d.stub().Commit(pb.CommitSnapshotRequest(name=name, key=key, labels=labels))


def names(d: Daemon, *filters: str) -> list[str]:
    replies = d.stub().List(pb.ListSnapshotsRequest(filters=list(filters)))
    return sorted(info.name for reply in replies for info in reply.info)


def layer(d: Daemon, tmp: Path, key: str, name: str, parent: str, files: dict[str, bytes | None]) -> None:
    """Prepare, write ``files`` (None: delete), commit — one layer as an unpacker makes it."""
    with mounted(prepare(d, key, parent), tmp / f"mnt-{key}") as root:
        for path, data in files.items():
            if data is None:
                os.unlink(root / path)
            else:
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
    commit(d, name, key)


def test_prepare_commit_view_chain(daemon: Daemon, short_tmp: Path) -> None:
    layer(daemon, short_tmp, "a", "A", "", {"base.txt": b"base", "dir/gone.txt": b"x"})
    layer(daemon, short_tmp, "b", "B", "A", {"top.txt": b"top", "dir/gone.txt": None, "base.txt": b"over"})
    layer(daemon, short_tmp, "c", "C", "B", {"c.txt": b"c"})

    single = daemon.stub().View(pb.ViewSnapshotRequest(key="view-a", parent="A")).mounts
    assert [(m.type, list(m.options)) for m in single] == [("bind", ["ro", "rbind"])]
    with mounted(single, short_tmp / "va") as root:
        assert (root / "base.txt").read_bytes() == b"base"
        assert (root / "dir/gone.txt").exists()
        with pytest.raises(OSError):
            (root / "new").write_bytes(b"x")  # read-only

    view = daemon.stub().View(pb.ViewSnapshotRequest(key="view-c", parent="C")).mounts
    assert view[0].type == "overlay"
    lower = next(o for o in view[0].options if o.startswith("lowerdir="))
    assert len(lower.removeprefix("lowerdir=").split(":")) == 3  # C, B, A: topmost first
    assert not any(o.startswith("upperdir=") for o in view[0].options)
    with mounted(view, short_tmp / "vc") as root:
        assert (root / "base.txt").read_bytes() == b"over"
        assert (root / "top.txt").read_bytes() == b"top"
        assert (root / "c.txt").read_bytes() == b"c"
        assert not (root / "dir/gone.txt").exists()  # deleted in B: a whiteout
    assert daemon.stub().Mounts(pb.MountsRequest(key="view-c")).mounts == view

    info = daemon.stub().Stat(pb.StatSnapshotRequest(key="B")).info
    assert (info.name, info.parent, info.kind) == ("B", "A", pb.COMMITTED)
    assert daemon.stub().Stat(pb.StatSnapshotRequest(key="view-c")).info.kind == pb.VIEW

    active = prepare(daemon, "work", "C")
    assert any(o.startswith("upperdir=") for o in active[0].options)
    assert daemon.stub().Stat(pb.StatSnapshotRequest(key="work")).info.kind == pb.ACTIVE


def test_error_codes(daemon: Daemon) -> None:
    s = daemon.stub()
    prepare(daemon, "a")
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="a")) == Code.ALREADY_EXISTS
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="x", parent="nope")) == Code.NOT_FOUND
    # a parent must be committed
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="x", parent="a")) == Code.INVALID_ARGUMENT
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="")) == Code.INVALID_ARGUMENT
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="k" * 600)) == Code.INVALID_ARGUMENT
    too_long = {"l": "v" * 5000}
    assert code_of(s.Prepare, pb.PrepareSnapshotRequest(key="y", labels=too_long)) == Code.INVALID_ARGUMENT
    assert code_of(s.Stat, pb.StatSnapshotRequest(key="missing")) == Code.NOT_FOUND
    assert code_of(s.Mounts, pb.MountsRequest(key="missing")) == Code.NOT_FOUND
    assert code_of(s.Remove, pb.RemoveSnapshotRequest(key="missing")) == Code.NOT_FOUND
    assert code_of(s.Usage, pb.UsageRequest(key="missing")) == Code.NOT_FOUND
    assert code_of(s.Commit, pb.CommitSnapshotRequest(name="A", key="missing")) == Code.NOT_FOUND

    commit(daemon, "A", "a")
    assert code_of(s.Mounts, pb.MountsRequest(key="A")) == Code.FAILED_PRECONDITION
    assert code_of(s.Commit, pb.CommitSnapshotRequest(name="A2", key="A")) == Code.FAILED_PRECONDITION
    prepare(daemon, "b", "A")
    assert code_of(s.Commit, pb.CommitSnapshotRequest(name="A", key="b")) == Code.ALREADY_EXISTS
    s.View(pb.ViewSnapshotRequest(key="v", parent="A"))
    assert code_of(s.Commit, pb.CommitSnapshotRequest(name="V", key="v")) == Code.FAILED_PRECONDITION


def test_remove_parent_with_children_refused(daemon: Daemon) -> None:
    s = daemon.stub()
    prepare(daemon, "a")
    commit(daemon, "A", "a")
    prepare(daemon, "b", "A")
    s.View(pb.ViewSnapshotRequest(key="v", parent="A"))
    assert code_of(s.Remove, pb.RemoveSnapshotRequest(key="A")) == Code.FAILED_PRECONDITION
    s.Remove(pb.RemoveSnapshotRequest(key="b"))
    assert code_of(s.Remove, pb.RemoveSnapshotRequest(key="A")) == Code.FAILED_PRECONDITION
    s.Remove(pb.RemoveSnapshotRequest(key="v"))
    s.Remove(pb.RemoveSnapshotRequest(key="A"))
    assert names(daemon) == []
    assert sorted(os.listdir(daemon.root / "snapshots")) == []  # the directories went with them


def test_usage(daemon: Daemon, short_tmp: Path) -> None:
    s = daemon.stub()
    mounts = prepare(daemon, "a")
    empty = s.Usage(pb.UsageRequest(key="a"))
    assert empty.inodes == 1  # the upper directory itself
    with mounted(mounts, short_tmp / "m") as root:
        (root / "one").write_bytes(os.urandom(1 << 20))
        os.link(root / "one", root / "hardlink")  # counted once
        (root / "d").mkdir()
        (root / "d" / "two").write_bytes(b"x" * 10)
    usage = s.Usage(pb.UsageRequest(key="a"))
    assert usage.inodes == 4
    assert (1 << 20) + 4096 <= usage.size <= (1 << 20) + 4 * 4096 + empty.size
    commit(daemon, "A", "a")
    assert s.Usage(pb.UsageRequest(key="A")) == usage  # recorded at commit
    s.View(pb.ViewSnapshotRequest(key="v", parent="A"))
    assert s.Usage(pb.UsageRequest(key="v")).size == 0


def test_list_filters(daemon: Daemon) -> None:
    prepare(daemon, "a", color="red")
    commit(daemon, "A", "a", color="red", **{"containerd.io/snapshot.ref": "sha256:aaa"})
    prepare(daemon, "b", "A")
    commit(daemon, "B", "b", color="blue")
    prepare(daemon, "c", "B", color="red")
    daemon.stub().View(pb.ViewSnapshotRequest(key="v", parent="B"))

    assert names(daemon) == ["A", "B", "c", "v"]
    assert names(daemon, "name==B") == ["B"]
    assert names(daemon, "parent==B") == ["c", "v"]
    assert names(daemon, 'parent==""') == ["A"]
    assert names(daemon, "kind==committed") == ["A", "B"]
    assert names(daemon, "kind==active") == ["c"]
    assert names(daemon, "kind==view") == ["v"]
    assert names(daemon, 'labels."color"==red') == ["A", "c"]
    assert names(daemon, "labels.color==red,kind==committed") == ["A"]
    assert names(daemon, "labels.color") == ["A", "B", "c"]
    assert names(daemon, "labels.color!=red") == ["B", "v"]
    assert names(daemon, "name~=^[AB]$") == ["A", "B"]
    assert names(daemon, "name==A", "name==v") == ["A", "v"]  # alternatives
    # what containerd sends after a remote snapshotter answered ALREADY_EXISTS
    assert names(daemon, 'labels."containerd.io/snapshot.ref"==sha256:aaa,parent==""') == ["A"]
    assert names(daemon, 'labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="B"') == []
    assert names(daemon, 'labels."containerd.io/snapshot.ref"==sha256:aaa') == ["A"]
    assert names(daemon, "something.unknown==x") == ["A", "B", "c", "v"]  # ignored: containerd re-checks
    code = code_of(lambda: list(daemon.stub().List(pb.ListSnapshotsRequest(filters=['name=="unterminated']))))
    assert code == Code.INVALID_ARGUMENT


def test_update_labels(daemon: Daemon) -> None:
    s = daemon.stub()
    prepare(daemon, "a")
    commit(daemon, "A", "a", keep="1", change="old")
    before = s.Stat(pb.StatSnapshotRequest(key="A")).info

    def update(labels: dict[str, str], *paths: str):
        mask = field_mask_pb2.FieldMask(paths=list(paths))
        request = pb.UpdateSnapshotRequest(info=pb.Info(name="A", labels=labels), update_mask=mask)
        return s.Update(request).info

    info = update({"change": "new", "add": "x"}, "labels.change", "labels.add", "labels.keep-not-sent")
    assert dict(info.labels) == {"keep": "1", "change": "new", "add": "x"}
    assert info.created_at == before.created_at
    assert info.updated_at.ToNanoseconds() > before.updated_at.ToNanoseconds()
    assert dict(s.Stat(pb.StatSnapshotRequest(key="A")).info.labels) == dict(info.labels)
    assert dict(update({}, "labels.keep").labels) == {"change": "new", "add": "x"}  # absent: deleted
    assert dict(update({"only": "1"}, "labels").labels) == {"only": "1"}
    assert dict(update({"all": "2"}).labels) == {"all": "2"}  # no mask: every mutable field (labels)
    mask = field_mask_pb2.FieldMask(paths=["parent"])
    code = code_of(s.Update, pb.UpdateSnapshotRequest(info=pb.Info(name="A"), update_mask=mask))
    assert code == Code.INVALID_ARGUMENT
    assert code_of(s.Update, pb.UpdateSnapshotRequest(info=pb.Info(name="nope"))) == Code.NOT_FOUND


def test_keys_are_never_paths_and_cleanup_removes_orphans(daemon: Daemon, short_tmp: Path) -> None:
    s = daemon.stub()
    for key in ("../../escape", "/abs/path", "k8s.io/7/extract-1 sha256:abc", "a\nb"):
        mounts = prepare(daemon, key)
        assert Path(mounts[0].source).parent.parent == daemon.root / "snapshots"
    assert not (short_tmp / "escape").exists() and not Path("/abs/path").exists()
    ids = sorted(os.listdir(daemon.root / "snapshots"))
    assert all(name.isdigit() for name in ids) and len(ids) == 4

    orphan = daemon.root / "snapshots" / "999"
    (orphan / "fs").mkdir(parents=True)
    (orphan / "fs" / "junk").write_bytes(b"junk")
    s.Cleanup(pb.CleanupRequest())
    assert sorted(os.listdir(daemon.root / "snapshots")) == ids
    assert len(names(daemon)) == 4


def test_snapshots_survive_a_restart(short_tmp: Path) -> None:
    config = "lazy = false\n"
    with running_daemon(short_tmp, config=config) as d:
        prepare(d, "a")
        commit(d, "A", "a", keep="me")
        prepare(d, "b", "A")
        assert d.terminate() == 0
    with running_daemon(short_tmp, config=config) as d:
        assert names(d) == ["A", "b"]
        assert dict(d.stub().Stat(pb.StatSnapshotRequest(key="A")).info.labels) == {"keep": "me"}
        options = d.stub().Mounts(pb.MountsRequest(key="b")).mounts[0].options
        lower = next(o for o in options if "lowerdir" in o)
        assert lower == f"lowerdir={d.root}/snapshots/1/fs"
