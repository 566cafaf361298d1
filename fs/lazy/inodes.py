"""The inode table: one read-only tree whose top-level directories are layers, added and removed at run time.

Pure (no I/O, no FUSE). A layer is built into a :class:`LayerTree`
(:func:`fs.lazy.treebuild.build_layer_tree`, pure, so it can run in a worker thread) and then linked
under the root by :meth:`InodeTable.insert` in O(1).

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

How a layer's entries become nodes (whiteouts, opaque directories, hard links, image xattrs) is
:mod:`fs.lazy.treebuild`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fs.errors import FormatError

__all__ = [
    "INDEX_BITS",
    "INDEX_MASK",
    "MAX_SLOT",
    "OPAQUE_MARKER",
    "OPAQUE_XATTR",
    "ROOT_INODE",
    "WHITEOUT_PREFIX",
    "InodeTable",
    "Item",
    "LayerTree",
    "Node",
]

ROOT_INODE = 1
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = b"trusted.overlay.opaque"
#: an inode number is ``slot << INDEX_BITS | index``
INDEX_BITS = 32
INDEX_MASK = (1 << INDEX_BITS) - 1
MAX_SLOT = (1 << (64 - INDEX_BITS)) - 1
_NO_XATTRS: dict[bytes, bytes] = {}  # shared, never mutated: most nodes have none


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
    xattrs: Mapping[str, bytes] = field(default_factory=dict)  # read only
    content: Any = None


class Node(msgspec.Struct, eq=False, gc=False):
    """One inode. ``entries`` (name -> inode, insertion ordered) is set for directories only.

    ``layer`` is the slot of the layer the node belongs to (0 for the root). Nodes carry no name (a
    million of them would cost ~140 MB): :meth:`InodeTable.path_of` finds one when a log needs it.

    Not tracked by the cycle collector: a node refers only to ints, bytes, its dicts and its layer's
    chunk list, never back to a node, and a full collection would otherwise walk every node of every
    attached layer on the thread that answers FUSE (330k nodes: ~0.3 s here).
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
    xattrs: dict[bytes, bytes] = msgspec.field(default_factory=lambda: _NO_XATTRS)
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
        return [n for i in sorted(self.dir_lookups, reverse=True) if (n := self.nodes[i & INDEX_MASK])]

    @property
    def top(self) -> Node:
        node = self.nodes[0]
        assert node is not None
        return node

    def __len__(self) -> int:
        return len(self.nodes)


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
            node = tree.nodes[inode & INDEX_MASK]
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
            node = tree.nodes[inode & INDEX_MASK]
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
        from fs.lazy.treebuild import build_layer_tree  # the builder depends on this module

        slot = slot or max(self._trees, default=0) + 1
        return self.insert(build_layer_tree(slot, name, items, overlay=overlay))
