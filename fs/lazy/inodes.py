"""The inode table: layers' resolved entries -> one read-only tree whose top-level directories are layers.

Pure (no I/O, no FUSE): :class:`InodeTable` is built once at mount and never changes, so inode numbers are
stable for the life of the mount and ``forget`` has nothing to free.

Overlay semantics (DESIGN.md decision 2), applied per layer when ``overlay=True``:

* ``.wh.NAME`` becomes a character device ``NAME`` with device number 0/0 and mode 0 (uid/gid of the
  whiteout entry): what containerd's overlay unpacker creates, so overlayfs hides ``NAME`` of lower layers.
* ``.wh..wh..opq`` is hidden and sets ``trusted.overlay.opaque=y`` on its directory.

With ``overlay=False`` (a single-layer image, bind-mounted) whiteouts are dropped instead: there is nothing
below to hide. Hard links share one inode; its ``nlink`` counts the names. A directory's ``nlink`` is
2 + its subdirectories. Parents missing from a layer are created as ``0755 root:root`` directories (what
containerd's unpacker does); a later explicit entry fills in their real metadata. Later entries for the
same path replace earlier ones (tar semantics).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fs.errors import FormatError

__all__ = [
    "OPAQUE_MARKER",
    "OPAQUE_XATTR",
    "ROOT_INODE",
    "WHITEOUT_PREFIX",
    "InodeTable",
    "Item",
    "Node",
    "check_relative_path",
]

ROOT_INODE = 1
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"

_KIND_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


@dataclass(slots=True)
class Item:
    """One resolved layer entry, the input of :meth:`InodeTable.add_layer`.

    Attributes:
        path: normalized path relative to the layer root ("" = the root itself), ``/``-separated, no
            ``.``/``..``/empty components.
        kind: ``dir``, ``reg``, ``symlink``, ``hardlink``, ``char``, ``block`` or ``fifo``.
        mode: permission bits incl. setuid/setgid/sticky (type bits are ignored).
        target: symlink target, or for ``hardlink`` the path (same form as ``path``) of the linked entry.
        content: opaque to this module (the reader's description of a regular file's bytes).
    """

    path: str
    kind: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    ctime_ns: int | None = None
    dev_major: int = 0
    dev_minor: int = 0
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    content: Any = None


@dataclass(slots=True, eq=False)
class Node:
    """One inode. ``entries`` (name -> inode, insertion ordered) is set for directories only."""

    inode: int
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    nlink: int = 1
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    entries: dict[bytes, int] | None = None
    parent: int = ROOT_INODE
    layer: int = -1
    path: str = "/"
    content: Any = None

    @property
    def is_dir(self) -> bool:
        return self.entries is not None


def check_relative_path(path: str) -> None:
    """Raise :class:`FormatError` unless ``path`` is a normalized path inside the layer."""
    if path == "":
        return
    if path.startswith("/") or path.endswith("/") or "\x00" in path:
        raise FormatError(f"entry name {path!r} is not a normalized relative path")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise FormatError(f"entry name {path!r} escapes the layer or is not normalized")


def _makedev(major: int, minor: int) -> int:
    return (
        ((major & 0xFFFFF000) << 32) | ((major & 0xFFF) << 8) | ((minor & 0xFFFFFF00) << 12) | (minor & 0xFF)
    )


class InodeTable:
    """All inodes of one mount: the root directory (inode 1) holds one directory per layer.

    Args:
        now_ns: timestamp given to the synthetic root directory.
    """

    def __init__(self, *, now_ns: int = 0) -> None:
        root = Node(
            ROOT_INODE,
            stat.S_IFDIR | 0o755,
            nlink=2,
            entries={},
            parent=ROOT_INODE,
            mtime_ns=now_ns,
            atime_ns=now_ns,
            ctime_ns=now_ns,
        )
        self._nodes: list[Node | None] = [None, root]
        self.layer_names: list[str] = []

    # -- queries ----------------------------------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self.get(ROOT_INODE)

    def get(self, inode: int) -> Node:
        """The node for ``inode``; KeyError if there is none."""
        try:
            node = self._nodes[inode]
        except IndexError:
            node = None
        if node is None:
            raise KeyError(inode)
        return node

    def __len__(self) -> int:
        return len(self._nodes) - 1

    def __iter__(self) -> Iterator[Node]:
        return (n for n in self._nodes if n is not None)

    def lookup_path(self, path: str, start: int = ROOT_INODE) -> Node:
        """Resolve a ``/``-separated path (no symlinks followed) from ``start``; KeyError if missing."""
        node = self.get(start)
        for part in (p for p in path.split("/") if p):
            if node.entries is None:
                raise KeyError(path)
            node = self.get(node.entries[part.encode("utf-8", "surrogateescape")])
        return node

    # -- building ---------------------------------------------------------------------------------------

    def _new(self, **kw: Any) -> Node:
        node = Node(len(self._nodes), **kw)
        self._nodes.append(node)
        return node

    def add_layer(self, name: str, items: Iterable[Item], *, overlay: bool = True) -> Node:
        """Add one layer as directory ``name`` under the root; returns the layer's root node.

        Raises:
            FormatError: a path escaping the layer, a hardlink to a missing or non-file entry, an entry
                below a non-directory, or a duplicate layer name.
        """
        bname = name.encode()
        root = self.root
        assert root.entries is not None
        if not name or "/" in name or bname in root.entries:
            raise FormatError(f"bad or duplicate layer directory name {name!r}")
        layer_no = len(self.layer_names)
        self.layer_names.append(name)
        top = self._new(
            mode=stat.S_IFDIR | 0o755, nlink=2, entries={}, parent=ROOT_INODE, layer=layer_no, path=f"/{name}"
        )
        root.entries[bname] = top.inode
        root.nlink += 1
        builder = _LayerBuilder(self, top, layer_no, overlay)
        for item in items:
            builder.add(item)
        builder.finish()
        return top


class _LayerBuilder:
    def __init__(self, table: InodeTable, top: Node, layer_no: int, overlay: bool) -> None:
        self.t = table
        self.top = top
        self.layer_no = layer_no
        self.overlay = overlay
        self.by_path: dict[str, Node] = {"": top}

    def _dir(self, path: str) -> Node:
        """The directory node at ``path``, creating implicit parents."""
        node = self.by_path.get(path)
        if node is not None:
            if node.entries is None:
                raise FormatError(f"entry below non-directory {path!r}")
            return node
        parent_path, _, base = path.rpartition("/")
        parent = self._dir(parent_path)
        node = self.t._new(mode=stat.S_IFDIR | 0o755, nlink=2, entries={}, layer=self.layer_no)
        self._link(parent, base, node, path)
        return node

    def _link(self, parent: Node, base: str, node: Node, path: str) -> None:
        assert parent.entries is not None
        bname = base.encode("utf-8", "surrogateescape")
        old = parent.entries.get(bname)
        if old is not None:
            self._unlink(parent, bname, self.t.get(old), path)
        parent.entries[bname] = node.inode
        node.parent = parent.inode
        node.path = f"{self.top.path}/{path}"
        if node.entries is not None:
            parent.nlink += 1
        self.by_path[path] = node

    def _unlink(self, parent: Node, bname: bytes, old: Node, path: str) -> None:
        assert parent.entries is not None
        del parent.entries[bname]
        if old.entries is not None:
            parent.nlink -= 1
            prefix = path + "/"
            for p in [p for p in self.by_path if p.startswith(prefix)]:
                del self.by_path[p]
        else:
            old.nlink -= 1
        self.by_path.pop(path, None)

    def add(self, item: Item) -> None:
        check_relative_path(item.path)
        path = item.path
        parent_path, _, base = path.rpartition("/")
        if path == "":
            if item.kind == "dir":
                self._set_attrs(self.top, item)
            return
        if base == OPAQUE_MARKER:
            d = self._dir(parent_path)
            if self.overlay:
                d.xattrs[OPAQUE_XATTR] = b"y"
            return
        if base.startswith(WHITEOUT_PREFIX):
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
        parent = self._dir(parent_path)
        if item.kind == "hardlink":
            check_relative_path(item.target)
            target = self.by_path.get(item.target)
            if target is None or target.entries is not None:
                raise FormatError(f"hardlink {path!r} -> {item.target!r}: target missing or a directory")
            if target.inode == self.by_path.get(path, Node(-1, 0)).inode:
                return
            self._link(parent, base, target, path)
            target.nlink += 1
            return
        existing = self.by_path.get(path)
        if item.kind == "dir" and existing is not None and existing.entries is not None:
            self._set_attrs(existing, item)  # re-declared directory keeps its children
            return
        if item.kind not in _KIND_BITS:
            raise FormatError(f"entry {path!r} has unsupported type {item.kind!r}")
        node = self.t._new(
            mode=0,
            layer=self.layer_no,
            entries={} if item.kind == "dir" else None,
            nlink=2 if item.kind == "dir" else 1,
        )
        self._set_attrs(node, item)
        self._link(parent, base, node, path)

    def _set_attrs(self, node: Node, item: Item) -> None:
        node.mode = _KIND_BITS[item.kind] | (item.mode & 0o7777)
        node.uid, node.gid = item.uid, item.gid
        node.mtime_ns = item.mtime_ns
        node.atime_ns = item.mtime_ns if item.atime_ns is None else item.atime_ns
        node.ctime_ns = item.mtime_ns if item.ctime_ns is None else item.ctime_ns
        node.xattrs.update({k.encode("utf-8", "surrogateescape"): v for k, v in item.xattrs.items()})
        if item.kind == "reg":
            node.size = item.size
            node.content = item.content
        elif item.kind == "symlink":
            node.target = item.target.encode("utf-8", "surrogateescape")
            node.size = len(node.target)
        elif item.kind in ("char", "block"):
            node.rdev = _makedev(item.dev_major, item.dev_minor)

    def finish(self) -> None:
        self.by_path.clear()
