"""Pure parts of the daemon: mounts, Prepare labels -> lazy request, config validation, sd_notify."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from snapshotter.config import ServeConfig, config_from_mapping, parse_metrics_address
from snapshotter.errors import ConfigError
from snapshotter.metastore import Kind, Record
from snapshotter.notify import notify
from snapshotter.overlay import Mount, mounts
from snapshotter.remote import LayerRequest, layer_request


def record(key: str, id: int, kind: Kind = Kind.COMMITTED, lazy: bool = False) -> Record:
    return Record(key=key, id=id, kind=kind, lazy={"digest": f"sha256:{key}"} if lazy else None)


def layer_dir(r: Record) -> Path:
    return Path(f"/mnt/{r.lazy['digest'].removeprefix('sha256:')}") if r.lazy else Path(f"/s/{r.id}/fs")


def test_mounts_as_overlay_go() -> None:
    assert mounts(record("a", 1, Kind.ACTIVE), [], layer_dir) == [Mount("bind", "/s/1/fs", ("rw", "rbind"))]
    assert mounts(record("v", 1, Kind.VIEW), [], layer_dir) == [Mount("bind", "/s/1/fs", ("ro", "rbind"))]
    one = [record("p", 2, lazy=True)]
    assert mounts(record("v", 3, Kind.VIEW), one, layer_dir) == [Mount("bind", "/mnt/p", ("ro", "rbind"))]
    chain = [record("top", 5), record("mid", 4, lazy=True), record("base", 2, lazy=True)]
    assert mounts(record("v", 6, Kind.VIEW), chain, layer_dir) == [
        Mount("overlay", "overlay", ("lowerdir=/s/5/fs:/mnt/mid:/mnt/base",))
    ]
    assert mounts(record("c", 7, Kind.ACTIVE), chain[1:], layer_dir) == [
        Mount("overlay", "overlay", ("workdir=/s/7/work", "upperdir=/s/7/fs", "lowerdir=/mnt/mid:/mnt/base"))
    ]


def test_a_layer_named_twice_is_a_lowerdir_once() -> None:
    """Lazily, a layer an image names twice is one host directory: overlayfs refuses it twice (ELOOP); its
    topmost place alone gives the same tree."""
    same = {"digest": "sha256:x"}  # the same layer digest at two places of the chain
    dup = [
        Record("x2", 5, Kind.COMMITTED, lazy=same),
        record("b", 4, lazy=True),
        Record("x1", 3, Kind.COMMITTED, lazy=same),
    ]
    assert mounts(record("c", 7, Kind.ACTIVE), dup, layer_dir) == [
        Mount("overlay", "overlay", ("workdir=/s/7/work", "upperdir=/s/7/fs", "lowerdir=/mnt/x:/mnt/b"))
    ]
    assert mounts(record("v", 8, Kind.VIEW), [dup[0], dup[2]], layer_dir) == [
        Mount("bind", "/mnt/x", ("ro", "rbind"))
    ]


def test_layer_request_from_labels() -> None:
    target = {"containerd.io/snapshot.ref": "sha256:chain"}
    cri = {
        **target,
        "containerd.io/snapshot/cri.image-ref": "127.0.0.1:5000/demo/app:zstd",
        "containerd.io/snapshot/cri.layer-digest": "sha256:layer",
        "containerd.io/snapshot/cri.manifest-digest": "sha256:manifest",
        "containerd.io/snapshot/cri.image-layers": "sha256:layer,sha256:next",
    }
    assert layer_request(cri) == LayerRequest(
        "sha256:chain", "docker://127.0.0.1:5000/demo/app:zstd", "sha256:layer", "sha256:manifest"
    )
    stargz = {
        **target,
        "containerd.io/snapshot/remote/stargz.reference": "127.0.0.1:5000/demo/app:estargz",
        "containerd.io/snapshot/remote/stargz.digest": "sha256:layer",
    }
    assert layer_request(stargz) == LayerRequest(
        "sha256:chain", "docker://127.0.0.1:5000/demo/app:estargz", "sha256:layer", None
    )
    assert layer_request(target) is None  # ctr pull: target only
    assert layer_request({k: v for k, v in cri.items() if k != "containerd.io/snapshot.ref"}) is None


def test_config_values() -> None:
    config = config_from_mapping(
        {"cache_max_size": "1G", "metrics_address": "[::1]:9155", "registry": {"plain_http": ["r:5000"],
         "auth": {"r:5000": {"username": "u", "password": "p"}}, "mirrors": {"docker.io": ["m:1"]}}},
        "test",
    )  # fmt: skip
    assert config.cache_max_size == 1 << 30
    assert config.metrics_address == ("::1", 9155)
    assert config.registry.auth == {"r:5000": ("u", "p")}
    assert config.registry.mirrors == {"docker.io": ("m:1",)}
    assert config_from_mapping({}, "test") == ServeConfig()
    assert config_from_mapping({"prefetch_wait": 0}, "test").prefetch_wait == 0.0  # 0: do not wait
    assert parse_metrics_address("") is None
    for bad in ({"grpc_threads": 0}, {"lazy": 1}, {"registry": {"auth": {"h": {"username": "u"}}}},
                {"registry": {"plain_http": "r:5000"}}, {"root": "rel"}, {"prefetch_wait": -1},
                {"prefetch_wait": True}):  # fmt: skip
        with pytest.raises(ConfigError):
            config_from_mapping(bad, "test")


def test_notify_path_and_abstract(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(tmp_path / "n.sock"))
        assert notify("READY=1\nSTATUS=x", environ={"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        assert server.recv(100) == b"READY=1\nSTATUS=x"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(f"\0zsnap-notify-test-{id(server)}")
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": f"@zsnap-notify-test-{id(server)}"})
        assert server.recv(100) == b"STOPPING=1"


@pytest.mark.allow_warnings
def test_notify_to_nobody_is_logged_not_raised(tmp_path: Path) -> None:
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}) is False


def test_metastore_shares_the_store_environment(tmp_path: Path) -> None:
    """Snapshot records live in a sub-database of the store's own LMDB, survive reopening, and the
    store's own sub-databases cannot be taken."""
    from fs.errors import StoreError
    from fs.store import Store
    from snapshotter.errors import SnapshotPrecondition
    from snapshotter.metastore import MetaStore

    with Store.open(tmp_path / "root") as store:
        with pytest.raises(StoreError):
            store.index.sub_database("blobs")
        meta = MetaStore(store.index)
        with meta.write() as txn:
            txn.create("a", Kind.ACTIVE)
            base = txn.commit("a", "A", labels={"l": "1"}, size=10, inodes=2)
            txn.create("b", Kind.ACTIVE, parent="A")
        with meta.write() as txn, pytest.raises(SnapshotPrecondition):
            txn.remove("A")
    with Store.open(tmp_path / "root") as store, MetaStore(store.index).read() as txn:
        assert txn.get("A") == base
        assert [r.key for r in txn.chain(txn.get("b"))] == ["A"]
        assert txn.has_children(base)
