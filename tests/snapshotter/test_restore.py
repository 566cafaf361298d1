"""What a restarted daemon cleans up and decides before it serves (snapshotter.remote): store refs of
layers no committed snapshot needs are dropped; the FUSE session is kept in the fd store only when the
service manager has one."""

from __future__ import annotations

from pathlib import Path

from fs.store import Store
from snapshotter.remote import drop_unneeded_layer_refs, fd_store_available


def test_layer_refs_nothing_needs_are_dropped(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        kept = store.put(b"chunk of a layer a snapshot needs", holder="layer:sha256:aa")
        shared = store.put(b"chunk both layers fetched", holder="layer:sha256:aa")
        store.ref(shared, "layer:sha256:bb")
        leaked = store.put(b"chunk of a layer detached before a crash", holder="layer:sha256:bb")
        mine = store.put(b"a zsnap mount's chunk", holder="mount:1")
        assert store.holders("layer:") == ["layer:sha256:aa", "layer:sha256:bb"]
        assert drop_unneeded_layer_refs(store, {"sha256:aa"}) == ["layer:sha256:bb"]
        assert store.holders("layer:") == ["layer:sha256:aa"]
        assert store.refs(kept) == {"layer:sha256:aa"} and store.refs(shared) == {"layer:sha256:aa"}
        assert store.refs(leaked) == set()  # evictable now
        assert store.refs(mine) == {"mount:1"}  # other holders are not the daemon's to drop
        assert drop_unneeded_layer_refs(store, {"sha256:aa"}) == []
    finally:
        store.close()


def test_store_holders_by_prefix(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        for i, holder in enumerate(["layer:sha256:1", "layer:sha256:12", "layer:sha256:2", "layers", "m"]):
            store.put(bytes([i]) * 10, holder=holder)
            store.put(bytes([i]) * 20, holder=holder)  # two refs: listed once
        assert store.holders("layer:") == ["layer:sha256:1", "layer:sha256:12", "layer:sha256:2"]
        assert store.holders("layer:sha256:1") == ["layer:sha256:1", "layer:sha256:12"]
        assert store.holders() == ["layer:sha256:1", "layer:sha256:12", "layer:sha256:2", "layers", "m"]
        assert store.holders("x") == []
    finally:
        store.close()


def test_the_session_is_kept_only_with_a_store() -> None:
    assert fd_store_available({"NOTIFY_SOCKET": "/run/systemd/notify", "FDSTORE": "16"})
    assert not fd_store_available({"NOTIFY_SOCKET": "/run/systemd/notify"})  # no store: unmount at exit
    assert not fd_store_available({"NOTIFY_SOCKET": "/run/systemd/notify", "FDSTORE": "0"})
    assert not fd_store_available({"FDSTORE": "16"})  # nobody to send the fds to
    assert not fd_store_available({"NOTIFY_SOCKET": "/x", "FDSTORE": "many"})
