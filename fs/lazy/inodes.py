"""The inode table: one read-only tree whose top-level directories are layers, added and removed at run time.

Pure (no I/O, no FUSE). A layer is built into a :class:`LayerTree` (:func:`build_layer_tree`, pure, so it can
run in a worker thread) and then linked under the root by :meth:`InodeTable.insert` in O(1).

Inode numbers are ``(slot << 32) | index``: ``slot`` is a per-layer number the caller allocates (the host
keeps a persistent digest -> slot map, so the same layer gets the same numbers after a restart) and
``index`` is the entry's position in the layer's build order (0 = the layer directory). The build order is
the order of the layer's entries, so the numbers are a function of (layer digest, entry index). Slot 0 holds
only the synthetic root (inode 1).

Removal follows the kernel's lookup counts, counted as pyfuse3's ``examples/passthroughfs.py`` counts them
(every ``lookup`` reply and every ``readdir_reply`` other than ``.``/``..`` adds one; ``forget`` subtracts):
:meth:`InodeTable.unlink` takes the layer out of the root directory at once, and the layer's nodes are
freed when the sum of its lookup counts drops to zero (the kernel forgot all of them). Until then its
inodes keep answering ``getattr``/``read`` for files that are still open. Counts are kept per layer, not
per inode: a layer is only ever freed as a whole.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fs.errors import FormatError

__all__ = [
    "INDEX_BITS",
    "OPAQUE_MARKER",
    "OPAQUE_XATTR",
    "ROOT_INODE",
    "WHITEOUT_PREFIX",
    "InodeTable",
    "Item",
    "LayerTree",
    "Node",
    "build_layer_tree",
    "check_relative_path",
]

ROOT_INODE = 1
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"
#: an inode number is ``slot << INDEX_BITS | index``
INDEX_BITS = 32
_INDEX_MASK = (1 << INDEX_BITS) - 1
_MAX_SLOT = (1 << (64 - INDEX_BITS)) - 1
_NO_XATTRS: dict[bytes, bytes] = {}  # shared, never mutated: most nodes have none

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
    """One resolved layer entry, the input of :func:`build_layer_tree`.

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
    """One inode. ``entries`` (name -> inode, insertion ordered) is set for directories only.

    ``layer`` is the slot of the layer the node belongs to (0 for the root). Nodes carry no name (a
    million of them would cost ~140 MB): :meth:`InodeTable.path_of` finds one when a log needs it.
    """

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
    xattrs: dict[bytes, bytes] = field(default_factory=lambda: _NO_XATTRS)
    entries: dict[bytes, int] | None = None
    parent: int = ROOT_INODE
    layer: int = -1
    content: Any = None

    @property
    def is_dir(self) -> bool:
        return self.entries is not None


@dataclass(eq=False)
class LayerTree:
    """The nodes of one layer (``nodes[i]`` has inode ``slot << 32 | i``; ``nodes[0]`` is its directory).

    ``lookups`` is the sum of the kernel's lookup counts over the layer's inodes (``dir_lookups`` the
    same per directory inode); ``linked`` is False once the layer was taken out of the root directory;
    ``file_bytes`` sums its regular files' sizes (statfs).
    """

    slot: int
    name: str
    nodes: list[Node | None]
    payload: Any = None
    lookups: int = 0
    linked: bool = False
    file_bytes: int = 0
    dir_lookups: dict[int, int] = field(default_factory=dict)

    def known_dirs(self) -> list[Node]:
        """Directories of this layer the kernel holds (deepest first, roughly): every entry it holds is
        a child of one of them, so invalidating their children reaches everything it cached."""
        return [n for i in sorted(self.dir_lookups, reverse=True) if (n := self.nodes[i & _INDEX_MASK])]

    @property
    def top(self) -> Node:
        node = self.nodes[0]
        assert node is not None
        return node

    def __len__(self) -> int:
        return len(self.nodes)


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
    if not 1 <= slot <= _MAX_SLOT:
        raise FormatError(f"layer slot {slot} out of range")
    tree = LayerTree(slot=slot, name=name, nodes=[], payload=payload)
    builder = _LayerBuilder(tree, overlay)
    for item in items:
        builder.add(item)
    builder.finish()
    tree.file_bytes = sum(n.size for n in tree.nodes if n is not None and stat.S_ISREG(n.mode))
    if len(tree.nodes) > _INDEX_MASK:
        raise FormatError(f"layer has {len(tree.nodes)} entries, more than one layer can hold")
    return tree


class InodeTable:
    """All inodes of the FUSE session: the root directory (inode 1) holds one directory per layer.

    Args:
        now_ns: timestamp given to the synthetic root directory.
    """

    def __init__(self, *, now_ns: int = 0) -> None:
        self._root = Node(
            ROOT_INODE,
            stat.S_IFDIR | 0o755,
            nlink=2,
            entries={},
            parent=ROOT_INODE,
            layer=0,
            mtime_ns=now_ns,
            atime_ns=now_ns,
            ctime_ns=now_ns,
        )
        self._trees: dict[int, LayerTree] = {}

    # -- queries ----------------------------------------------------------------------------------------

    @property
    def root(self) -> Node:
        return self._root

    def get(self, inode: int) -> Node:
        """The node for ``inode``; KeyError if there is none (or its layer was freed)."""
        if inode == ROOT_INODE:
            return self._root
        tree = self._trees.get(inode >> INDEX_BITS)
        if tree is None:
            raise KeyError(inode)
        try:
            node = tree.nodes[inode & _INDEX_MASK]
        except IndexError:
            node = None
        if node is None:
            raise KeyError(inode)
        return node

    def tree(self, slot: int) -> LayerTree:
        """The layer tree in ``slot`` (linked or still waiting for the kernel to forget it); KeyError."""
        return self._trees[slot]

    def trees(self) -> list[LayerTree]:
        """Every layer tree still in memory."""
        return list(self._trees.values())

    @property
    def layer_names(self) -> list[str]:
        """Names of the linked layers, in the order they were added."""
        assert self._root.entries is not None
        return [n.decode() for n in self._root.entries]

    def __len__(self) -> int:
        return 1 + sum(len(t) for t in self._trees.values())

    def __iter__(self) -> Iterator[Node]:
        yield self._root
        for t in list(self._trees.values()):
            yield from (n for n in t.nodes if n is not None)

    def path_of(self, node: Node) -> str:
        """A path of ``node`` from the root (``/<layer>/a/b``), for logs: O(size of each parent dir)."""
        parts: list[str] = []
        while node.inode != ROOT_INODE:
            try:
                parent = self.get(node.parent)
            except KeyError:
                return "?/" + "/".join(reversed(parts))
            assert parent.entries is not None
            name = next((n for n, i in parent.entries.items() if i == node.inode), b"?")
            parts.append(name.decode("utf-8", "surrogateescape"))
            node = parent
        return "/" + "/".join(reversed(parts))

    def lookup_path(self, path: str, start: int = ROOT_INODE) -> Node:
        """Resolve a ``/``-separated path (no symlinks followed) from ``start``; KeyError if missing."""
        node = self.get(start)
        for part in (p for p in path.split("/") if p):
            if node.entries is None:
                raise KeyError(path)
            node = self.get(node.entries[part.encode("utf-8", "surrogateescape")])
        return node

    # -- lookup counts ----------------------------------------------------------------------------------

    def remember(self, inode: int, n: int = 1) -> None:
        """The kernel learned ``inode`` ``n`` more times (a lookup or readdirplus reply)."""
        tree = self._trees.get(inode >> INDEX_BITS)
        if tree is not None:
            tree.lookups += n
            node = tree.nodes[inode & _INDEX_MASK]
            if node is not None and node.entries is not None:
                tree.dir_lookups[inode] = tree.dir_lookups.get(inode, 0) + n

    def forget(self, inode: int, n: int) -> LayerTree | None:
        """The kernel forgot ``inode`` ``n`` times; returns the layer tree if this freed it."""
        tree = self._trees.get(inode >> INDEX_BITS)
        if tree is None:
            return None
        tree.lookups = max(0, tree.lookups - n)
        left = tree.dir_lookups.get(inode)
        if left is not None:
            if left > n:
                tree.dir_lookups[inode] = left - n
            else:
                del tree.dir_lookups[inode]
        return self._maybe_free(tree)

    def _maybe_free(self, tree: LayerTree) -> LayerTree | None:
        if tree.linked or tree.lookups > 0:
            return None
        del self._trees[tree.slot]
        return tree

    # -- layers -----------------------------------------------------------------------------------------

    def insert(self, tree: LayerTree) -> Node:
        """Link a built layer under the root (or re-link one that was unlinked but not yet freed).

        Raises:
            FormatError: the name or the slot is already in use by another layer.
        """
        root = self._root
        assert root.entries is not None
        bname = tree.name.encode()
        held = self._trees.get(tree.slot)
        if held is not None and held is not tree:
            raise FormatError(f"layer slot {tree.slot} is already in use by {held.name}")
        if bname in root.entries:
            raise FormatError(f"bad or duplicate layer directory name {tree.name!r}")
        self._trees[tree.slot] = tree
        root.entries[bname] = tree.top.inode
        root.nlink += 1
        tree.linked = True
        return tree.top

    def unlink(self, name: str) -> LayerTree:
        """Take layer ``name`` out of the root directory; its nodes stay until the kernel forgets them.

        Returns the tree (already freed from the table when the kernel holds none of its inodes).
        Raises KeyError when no such layer is linked.
        """
        root = self._root
        assert root.entries is not None
        inode = root.entries.pop(name.encode())
        root.nlink -= 1
        tree = self._trees[inode >> INDEX_BITS]
        tree.linked = False
        self._maybe_free(tree)
        return tree

    def find(self, name: str) -> LayerTree | None:
        """The linked layer named ``name``, else None."""
        assert self._root.entries is not None
        inode = self._root.entries.get(name.encode())
        return None if inode is None else self._trees[inode >> INDEX_BITS]

    def add_layer(self, name: str, items: Iterable[Item], *, overlay: bool = True, slot: int = 0) -> Node:
        """Build and link one layer as directory ``name`` (``slot`` 0 = the next free one); its root node.

        Raises:
            FormatError: as :func:`build_layer_tree` and :meth:`insert`.
        """
        assert self._root.entries is not None
        if name.encode() in self._root.entries:
            raise FormatError(f"bad or duplicate layer directory name {name!r}")
        slot = slot or max(self._trees, default=0) + 1
        return self.insert(build_layer_tree(slot, name, items, overlay=overlay))


class _LayerBuilder:
    """Builds one layer's nodes. Only directories are indexed by path (files are found through their
    parent's entries), which keeps the builder's peak memory small for layers of a million files."""

    def __init__(self, tree: LayerTree, overlay: bool) -> None:
        self.tree = tree
        self.base = tree.slot << INDEX_BITS
        self.overlay = overlay
        self.top = self._new(mode=stat.S_IFDIR | 0o755, nlink=2, entries={}, parent=ROOT_INODE)
        self.dirs: dict[str, Node] = {"": self.top}

    def _new(self, **kw: Any) -> Node:
        nodes = self.tree.nodes
        node = Node(self.base | len(nodes), layer=self.tree.slot, **kw)
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
        return None if inode is None else self.tree.nodes[inode & _INDEX_MASK]

    def _dir(self, path: str) -> Node:
        """The directory node at ``path``, creating implicit parents."""
        node = self.dirs.get(path)
        if node is not None:
            return node
        parent_path, _, base = path.rpartition("/")
        parent = self._dir(parent_path)
        assert parent.entries is not None
        if base.encode("utf-8", "surrogateescape") in parent.entries:
            raise FormatError(f"entry below non-directory {path!r}")
        node = self._new(mode=stat.S_IFDIR | 0o755, nlink=2, entries={})
        self._link(parent, base, node, path)
        return node

    def _link(self, parent: Node, base: str, node: Node, path: str) -> None:
        assert parent.entries is not None
        bname = base.encode("utf-8", "surrogateescape")
        old = parent.entries.get(bname)
        if old is not None:
            self._unlink(parent, bname, self.tree.nodes[old & _INDEX_MASK], path)  # type: ignore[arg-type]
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
                d.xattrs = {**d.xattrs, OPAQUE_XATTR: b"y"}
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
        existing = self._get(path)
        if item.kind == "hardlink":
            check_relative_path(item.target)
            target = self._get(item.target)
            if target is None or target.entries is not None:
                raise FormatError(f"hardlink {path!r} -> {item.target!r}: target missing or a directory")
            if existing is target:
                return
            self._link(parent, base, target, path)
            target.nlink += 1
            return
        if item.kind == "dir" and existing is not None and existing.entries is not None:
            self._set_attrs(existing, item)  # re-declared directory keeps its children
            return
        if item.kind not in _KIND_BITS:
            raise FormatError(f"entry {path!r} has unsupported type {item.kind!r}")
        node = self._new(
            mode=0,
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
