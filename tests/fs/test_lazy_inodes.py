"""InodeTable: layer entries -> inodes, whiteouts/opaque dirs, hardlinks, implicit parents, escapes."""

from __future__ import annotations

import stat

import pytest

from fs.errors import FormatError
from fs.lazy.inodes import OPAQUE_XATTR, ROOT_INODE, InodeTable, Item


def _layer(table: InodeTable, name: str, items: list[Item], **kw: object):
    return table.add_layer(name, items, **kw)


def _names(table: InodeTable, path: str) -> list[str]:
    node = table.lookup_path(path)
    assert node.entries is not None
    return sorted(n.decode() for n in node.entries)


def test_layers_are_top_level_directories() -> None:
    t = InodeTable()
    a = _layer(t, "aa", [Item("etc", "dir", 0o755), Item("etc/passwd", "reg", size=5, content="C")])
    b = _layer(t, "bb", [])
    assert _names(t, "/") == ["aa", "bb"]
    assert t.root.nlink == 4
    assert a.parent == ROOT_INODE and b.parent == ROOT_INODE
    f = t.lookup_path("aa/etc/passwd")
    assert stat.S_ISREG(f.mode) and f.size == 5 and f.content == "C" and t.path_of(f) == "/aa/etc/passwd"
    assert t.get(f.parent) is t.lookup_path("aa/etc")
    with pytest.raises(FormatError):
        _layer(t, "aa", [])
    with pytest.raises(KeyError):
        t.get(10_000)


def test_whiteouts_become_char_devices_and_opaque_xattr() -> None:
    t = InodeTable()
    _layer(
        t,
        "l",
        [
            Item("etc", "dir", 0o755),
            Item("etc/.wh.gone", "reg", uid=3, gid=4, mtime_ns=7),
            Item("feat/opaque/.wh..wh..opq", "reg"),
            Item("feat/opaque/c", "reg", size=1),
        ],
    )
    wh = t.lookup_path("l/etc/gone")
    assert stat.S_ISCHR(wh.mode) and stat.S_IMODE(wh.mode) == 0 and wh.rdev == 0
    assert (wh.uid, wh.gid, wh.mtime_ns) == (3, 4, 7)
    assert _names(t, "l/etc") == ["gone"]
    opq = t.lookup_path("l/feat/opaque")
    assert opq.xattrs == {OPAQUE_XATTR: b"y"}
    assert _names(t, "l/feat/opaque") == ["c"]
    # implicit parent created as 0755 root dir
    feat = t.lookup_path("l/feat")
    assert stat.S_ISDIR(feat.mode) and stat.S_IMODE(feat.mode) == 0o755 and feat.uid == 0


def test_single_layer_drops_whiteouts() -> None:
    t = InodeTable()
    _layer(t, "l", [Item("a/.wh.x", "reg"), Item("a/.wh..wh..opq", "reg"), Item("a/y", "reg")], overlay=False)
    assert _names(t, "l/a") == ["y"]
    assert t.lookup_path("l/a").xattrs == {}


def test_hardlinks_share_inode_and_count_links() -> None:
    t = InodeTable()
    _layer(
        t,
        "l",
        [
            Item("f/regular.txt", "reg", size=3, content="X"),
            Item("f/hl", "hardlink", target="f/regular.txt"),
            Item("f/hl2", "hardlink", target="f/hl"),
        ],
    )
    a, b, c = (t.lookup_path(f"l/f/{n}") for n in ("regular.txt", "hl", "hl2"))
    assert a is b is c
    assert a.nlink == 3
    with pytest.raises(FormatError):
        _layer(t, "m", [Item("x", "hardlink", target="missing")])
    with pytest.raises(FormatError):
        _layer(t, "n", [Item("d", "dir"), Item("x", "hardlink", target="d")])


def test_directory_link_counts_and_redeclaration() -> None:
    t = InodeTable()
    _layer(
        t,
        "l",
        [
            Item("a/b/c", "reg"),
            Item("a", "dir", 0o700, uid=5, mtime_ns=9),
            Item("a/d", "dir"),
            Item("a/e", "symlink", target="../x", mode=0o777),
            Item("", "dir", 0o751),
        ],
    )
    a = t.lookup_path("l/a")
    assert stat.S_IMODE(a.mode) == 0o700 and a.uid == 5 and a.mtime_ns == 9
    assert a.nlink == 4  # 2 + b + d
    assert _names(t, "l/a") == ["b", "d", "e"]
    e = t.lookup_path("l/a/e")
    assert stat.S_ISLNK(e.mode) and e.target == b"../x" and e.size == 4
    assert stat.S_IMODE(t.lookup_path("l").mode) == 0o751


def test_later_entry_replaces_earlier() -> None:
    t = InodeTable()
    _layer(t, "l", [Item("x", "dir"), Item("x/y", "reg"), Item("x", "reg", size=2), Item("z", "reg")])
    x = t.lookup_path("l/x")
    assert stat.S_ISREG(x.mode) and x.size == 2
    assert t.lookup_path("l").nlink == 2


def test_devices_fifos_xattrs_and_modes() -> None:
    t = InodeTable()
    _layer(
        t,
        "l",
        [
            Item("dev/null", "char", 0o666, dev_major=1, dev_minor=3),
            Item("dev/big", "block", 0o600, dev_major=259, dev_minor=300),
            Item("p", "fifo", 0o644),
            Item("s", "reg", 0o4755, xattrs={"user.lazyh": b"hello"}),
        ],
    )
    null = t.lookup_path("l/dev/null")
    assert stat.S_ISCHR(null.mode) and null.rdev == (1 << 8) | 3
    import os

    big = t.lookup_path("l/dev/big")
    assert stat.S_ISBLK(big.mode) and (os.major(big.rdev), os.minor(big.rdev)) == (259, 300)
    assert stat.S_ISFIFO(t.lookup_path("l/p").mode)
    s = t.lookup_path("l/s")
    assert stat.S_IMODE(s.mode) == 0o4755 and s.xattrs == {b"user.lazyh": b"hello"}


@pytest.mark.parametrize(
    "bad", ["../etc", "..", ".", "./a", "a/.", "a/..", "/abs", "a/../../b", "a//b", "a/./b", "a/", "a\0b"]
)
def test_escaping_names_rejected(bad: str) -> None:
    with pytest.raises(FormatError):
        InodeTable().add_layer("l", [Item(bad, "reg")])
    with pytest.raises(FormatError):  # nor as a hard link's target
        InodeTable().add_layer("l", [Item("f", "reg"), Item("g", "hardlink", target=bad)])


@pytest.mark.parametrize("good", ["a", "a.b/..c/...", ".a/b.", "a/.wh.x/b"])
def test_dotted_names_that_stay_inside_are_accepted(good: str) -> None:
    t = InodeTable()
    t.add_layer("l", [Item(good, "reg", size=1)])
    assert t.lookup_path(f"l/{good}").size == 1


def test_entry_below_file_rejected() -> None:
    with pytest.raises(FormatError):
        InodeTable().add_layer("l", [Item("f", "reg"), Item("f/x", "reg")])


def test_layers_come_and_go_and_are_freed_when_the_kernel_forgets() -> None:
    from fs.lazy.inodes import INDEX_BITS
    from fs.lazy.treebuild import build_layer_tree

    t = InodeTable()
    a = build_layer_tree(5, "aa", [Item("etc", "dir"), Item("etc/passwd", "reg", size=3)])
    t.insert(a)
    t.add_layer("bb", [Item("x", "reg", size=4)], slot=9)
    passwd = t.lookup_path("aa/etc/passwd")
    assert passwd.inode == (5 << INDEX_BITS) | 2 and a.top.inode == 5 << INDEX_BITS  # slot, entry index
    assert t.path_of(passwd) == "/aa/etc/passwd" and t.layer_names == ["aa", "bb"]
    t.remember(a.top.inode)
    t.remember(passwd.inode, 2)
    assert a.lookups == 3 and a.dir_lookups == {a.top.inode: 1}
    assert t.unlink("aa") is a and t.layer_names == ["bb"] and t.root.nlink == 3
    assert t.get(passwd.inode) is passwd  # the kernel still holds it: still served
    assert t.forget(passwd.inode, 2) is None
    assert t.forget(a.top.inode, 1) is a  # the last lookup forgotten: freed
    with pytest.raises(KeyError):
        t.get(passwd.inode)
    # rebuilt from the same entries in the same slot: the same numbers
    again = build_layer_tree(5, "aa", [Item("etc", "dir"), Item("etc/passwd", "reg", size=3)])
    t.insert(again)
    assert t.lookup_path("aa/etc/passwd").inode == passwd.inode
    with pytest.raises(FormatError):
        t.insert(build_layer_tree(5, "cc", []))  # slot taken
    with pytest.raises(FormatError):
        t.insert(build_layer_tree(6, "bb", []))  # name taken


def test_unlinked_layer_without_kernel_references_is_freed_at_once() -> None:
    t = InodeTable()
    t.add_layer("aa", [Item("f", "reg")], slot=1)
    tree = t.unlink("aa")
    assert t.trees() == [] and not tree.linked
    with pytest.raises(KeyError):
        t.unlink("aa")


def test_image_trusted_xattrs_are_dropped_but_whiteout_opaque_kept() -> None:
    t = InodeTable()
    t.add_layer(
        "l",
        [
            Item("d", "dir", xattrs={"trusted.overlay.opaque": b"y", "user.a": b"1"}),
            Item("e", "dir", xattrs={"trusted.overlay.redirect": b"/d"}),
            Item("f", "reg", xattrs={"trusted.overlay.metacopy": b"", "security.capability": b"\x01"}),
            Item("o/.wh..wh..opq", "reg"),
        ],
    )
    assert t.lookup_path("l/d").xattrs == {b"user.a": b"1"}
    assert t.lookup_path("l/e").xattrs == {}
    assert t.lookup_path("l/f").xattrs == {b"security.capability": b"\x01"}
    assert t.lookup_path("l/o").xattrs == {OPAQUE_XATTR: b"y"}


def test_nodes_stay_out_of_the_cycle_collector_and_a_build_leaves_it_as_it_was() -> None:
    """A host holds every node of every attached layer: were they tracked, each full collection would
    walk them all on the thread that answers FUSE. A build turns the collector off while it runs and
    back on after, also when the layer is refused."""
    import gc

    from fs.lazy.treebuild import build_layer_tree

    items = [Item("usr", "dir"), Item("usr/bin", "dir"), Item("usr/bin/sh", "reg", size=3, content=[1, 2])]
    items += [Item(f"usr/lib/f{i}", "reg", size=i, xattrs={"user.k": b"v"}) for i in range(100)]
    assert gc.isenabled()
    tree = build_layer_tree(1, "layer", items)
    assert gc.isenabled()
    assert len(tree.nodes) == 105 and not any(gc.is_tracked(n) for n in tree.nodes)
    with pytest.raises(FormatError):
        build_layer_tree(2, "bad", [Item("a", "reg"), Item("a/b", "reg")])  # below a file
    assert gc.isenabled()
    gc.disable()
    try:
        build_layer_tree(3, "again", items)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
