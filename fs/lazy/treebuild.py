"""Build one layer's inode tree from its entries (pure, no I/O: it runs in a worker thread).

Overlay semantics (DESIGN.md decisions 2 and 11), applied per layer when ``overlay=True``:

* ``.wh.NAME`` becomes a character device ``NAME`` with device number 0/0 and mode 0 (uid/gid of the
  whiteout entry): what containerd's overlay unpacker creates, so overlayfs hides ``NAME`` of lower layers.
* ``.wh..wh..opq`` is hidden and sets ``trusted.overlay.opaque=y`` on its directory.
* No other ``trusted.*`` xattr is served: an image must not decide overlay semantics (redirects, metacopy,
  origin, its own opaque flags), so TOC/tar ``trusted.*`` xattrs are dropped.

With ``overlay=False`` (a bind-mounted single layer) whiteouts are dropped instead: there is nothing
below to hide. Hard links share one inode; its ``nlink`` counts the names. A directory's ``nlink`` is
2 + its subdirectories. Parents missing from a layer are created as ``0755 root:root`` directories (what
containerd's unpacker does); a later explicit entry fills in their real metadata. Later entries for the
same path replace earlier ones (tar semantics).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from typing import Any

from fs.collector import collector_paused
from fs.errors import FormatError
from fs.lazy.inodes import (
    INDEX_BITS,
    INDEX_MASK,
    MAX_SLOT,
    OPAQUE_MARKER,
    OPAQUE_XATTR,
    WHITEOUT_PREFIX,
    Item,
    LayerTree,
    Node,
)

__all__ = ["build_layer_tree", "check_relative_path"]

_KIND_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


def check_relative_path(path: str) -> None:
    """Raise :class:`FormatError` unless ``path`` is a normalized path inside the layer."""
    if path == "":
        return
    # an empty, "." or ".." component, or a leading or trailing "/", shows as one of these once the path is
    # framed by slashes (three searches in C: this runs once per entry of every layer)
    framed = f"/{path}/"
    if "\x00" in path or "//" in framed or "/./" in framed or "/../" in framed:
        raise FormatError(f"entry name {path!r} escapes the layer or is not normalized")


def _makedev(major: int, minor: int) -> int:
    return (
        ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)
    )


def build_layer_tree(
    slot: int, name: str, items: Iterable[Item], *, overlay: bool = True, payload: Any = None
) -> LayerTree:
    """Build the nodes of one layer, to be shown as directory ``name`` (pure; may run in a worker thread).

    Raises:
        FormatError: a path escaping the layer, a hardlink to a missing or non-file entry, an entry
            below a non-directory, a bad layer name, or a slot out of range.
    """
    if not name or "/" in name or "\0" in name:
        raise FormatError(f"bad layer directory name {name!r}")
    if not 1 <= slot <= MAX_SLOT:
        raise FormatError(f"layer slot {slot} out of range")
    tree = LayerTree(slot=slot, name=name, nodes=[], payload=payload)
    builder = _LayerBuilder(tree, overlay)
    with collector_paused():  # a node, a dict per directory and an item per entry, none in a cycle
        for item in items:
            builder.add(item)
    builder.finish()
    tree.file_bytes = sum(n.size for n in tree.nodes if n is not None and stat.S_ISREG(n.mode))
    if len(tree.nodes) > INDEX_MASK:
        raise FormatError(f"layer has {len(tree.nodes)} entries, more than one layer can hold")
    return tree


class _LayerBuilder:
    """Builds one layer's nodes. Only directories are indexed by path (files are found through their
    parent's entries), which keeps the builder's peak memory small for layers of a million files."""

    def __init__(self, tree: LayerTree, overlay: bool) -> None:
        self.tree = tree
        self.base = tree.slot << INDEX_BITS
        self.overlay = overlay
        self.top = self._new(stat.S_IFDIR | 0o755, 2, {})  # its parent is the root (Node's default)
        self.dirs: dict[str, Node] = {"": self.top}

    def _new(self, mode: int, nlink: int, entries: dict[bytes, int] | None) -> Node:
        nodes = self.tree.nodes
        node = Node(self.base | len(nodes), mode, nlink=nlink, entries=entries, layer=self.tree.slot)
        nodes.append(node)
        return node

    def _get(self, path: str) -> Node | None:
        """The node at ``path`` in this layer, or None."""
        node = self.dirs.get(path)
        if node is not None:
            return node
        parent_path, _, base = path.rpartition("/")
        parent = self.dirs.get(parent_path)
        if parent is None:
            return None
        assert parent.entries is not None
        inode = parent.entries.get(base.encode("utf-8", "surrogateescape"))
        return None if inode is None else self.tree.nodes[inode & INDEX_MASK]

    def _dir(self, path: str) -> Node:
        """The directory node at ``path``, creating implicit parents."""
        node = self.dirs.get(path)
        if node is not None:
            return node
        parent_path, _, base = path.rpartition("/")
        parent = self._dir(parent_path)
        assert parent.entries is not None
        bname = base.encode("utf-8", "surrogateescape")
        if bname in parent.entries:
            raise FormatError(f"entry below non-directory {path!r}")
        node = self._new(stat.S_IFDIR | 0o755, 2, {})
        self._link(parent, bname, None, node, path)
        return node

    def _link(self, parent: Node, bname: bytes, old: Node | None, node: Node, path: str) -> None:
        """Enter ``node`` as ``bname`` (at ``path``) in ``parent``, in place of ``old``, its entry there."""
        assert parent.entries is not None
        if old is not None:
            self._unlink(parent, bname, old, path)
        parent.entries[bname] = node.inode
        node.parent = parent.inode
        if node.entries is not None:
            parent.nlink += 1
            self.dirs[path] = node

    def _unlink(self, parent: Node, bname: bytes, old: Node, path: str) -> None:
        assert parent.entries is not None
        del parent.entries[bname]
        if old.entries is not None:
            parent.nlink -= 1
            prefix = path + "/"
            for p in [p for p in self.dirs if p.startswith(prefix)]:
                del self.dirs[p]
            self.dirs.pop(path, None)
        else:
            old.nlink -= 1

    def add(self, item: Item) -> None:
        path = item.path
        check_relative_path(path)
        if path == "":
            if item.kind == "dir":
                self._set_attrs(self.top, item)
            return
        parent_path, _, base = path.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            if base == OPAQUE_MARKER:
                d = self._dir(parent_path)
                if self.overlay:
                    d.xattrs = {**d.xattrs, OPAQUE_XATTR: b"y"}
                return
            if not self.overlay:
                return
            hidden = base[len(WHITEOUT_PREFIX) :]
            if not hidden or hidden in (".", ".."):
                raise FormatError(f"malformed whiteout {path!r}")
            item = Item(
                path=f"{parent_path}/{hidden}" if parent_path else hidden,
                kind="char",
                mode=0,
                uid=item.uid,
                gid=item.gid,
                mtime_ns=item.mtime_ns,
                atime_ns=item.atime_ns,
                ctime_ns=item.ctime_ns,
            )
            path = item.path
            base = hidden
        parent = self.dirs.get(parent_path) or self._dir(parent_path)
        entries = parent.entries
        assert entries is not None
        bname = base.encode("utf-8", "surrogateescape")
        old = entries.get(bname)
        existing = None if old is None else self.tree.nodes[old & INDEX_MASK]
        kind = item.kind
        if kind == "hardlink":
            check_relative_path(item.target)
            target = self._get(item.target)
            if target is None or target.entries is not None:
                raise FormatError(f"hardlink {path!r} -> {item.target!r}: target missing or a directory")
            if existing is target:
                return
            self._link(parent, bname, existing, target, path)
            target.nlink += 1
            return
        if kind == "dir" and existing is not None and existing.entries is not None:
            self._set_attrs(existing, item)  # re-declared directory keeps its children
            return
        if kind not in _KIND_BITS:
            raise FormatError(f"entry {path!r} has unsupported type {kind!r}")
        node = self._new(0, 2, {}) if kind == "dir" else self._new(0, 1, None)
        self._set_attrs(node, item)
        self._link(parent, bname, existing, node, path)

    def _set_attrs(self, node: Node, item: Item) -> None:
        node.mode = _KIND_BITS[item.kind] | (item.mode & 0o7777)
        node.uid, node.gid = item.uid, item.gid
        node.mtime_ns = item.mtime_ns
        node.atime_ns = item.mtime_ns if item.atime_ns is None else item.atime_ns
        node.ctime_ns = item.mtime_ns if item.ctime_ns is None else item.ctime_ns
        if item.xattrs:
            served = {
                k.encode("utf-8", "surrogateescape"): v
                for k, v in item.xattrs.items()
                if not k.startswith("trusted.")  # DESIGN.md 11: never let an image steer overlayfs
            }
            if served:
                node.xattrs = {**node.xattrs, **served}
        if item.kind == "reg":
            node.size = item.size
            node.content = item.content
        elif item.kind == "symlink":
            node.target = item.target.encode("utf-8", "surrogateescape")
            node.size = len(node.target)
        elif item.kind in ("char", "block"):
            node.rdev = _makedev(item.dev_major, item.dev_minor)

    def finish(self) -> None:
        self.dirs.clear()
