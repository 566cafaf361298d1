"""LayerIndex: the resolved, validated file tree of one layer, built from its TOC (FORMAT.md §4.3 step 2–3).

What :func:`build_index` guarantees to readers (everything else is a :class:`~fs.errors.FormatError`):

* **Paths** are normalized: leading ``./`` and ``/`` stripped, ``a//b`` and ``a/./b`` cleaned, trailing
  ``/`` dropped; the layer root is ``""``. A raw name with a ``..`` component, an empty name or a NUL byte
  is rejected (never "cleaned" into something else), as is a path under a non-directory.
* **Duplicates**: a non-chunk name appearing twice (after normalization) is rejected, as c/storage does
  (``ensureTOCMatchesTarSplit``); the one exception is an explicit directory entry for a directory that
  was earlier *implied* by a child path, which just supplies its metadata. Implied directories get mode
  0755, uid/gid 0, mtime 0.
* **Hardlinks** share the target's :class:`FileNode` (``nlink`` counts the names); the target must appear
  earlier and must not be a directory.
* **Chunks** of every non-empty regular file tile ``[0, size)`` without gaps, each with the compressed
  range that decodes to it, inside the blob's data region (``toc_offset - 8`` for zstd, ``toc_offset`` for
  gzip, else the blob size). Where each dialect's chunks end, and ``chunkType: "zeros"``
  (:attr:`Chunk.zeros`), are :mod:`fs.format.chunkranges`; for eStargz, decode, skip ``inner_offset``
  bytes, take ``size``.
* **eStargz** ``userName``/``groupName`` carry forward per uid/gid. ``.prefetch.landmark``/
  ``.no.prefetch.landmark`` (and a stray ``stargz.index.json``) are hidden from the tree;
  :attr:`LayerIndex.prefetch_landmark_offset`, :attr:`~LayerIndex.no_prefetch` and
  :attr:`~LayerIndex.prefetch_paths` record them.
* **Whiteouts** stay in the tree under their raw names; :func:`is_whiteout`/:func:`whiteout_target`/
  :data:`OPAQUE_WHITEOUT` let the FUSE layer map them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from fs.collector import collector_paused
from fs.digest import EMPTY_SHA256
from fs.errors import FormatError
from fs.format.chunkranges import check_tiling, cstorage_chunks, estargz_chunks, estargz_frame_ends
from fs.format.dialect import Dialect
from fs.format.frames import SKIPPABLE_HEADER_SIZE
from fs.format.paths import check_device, check_hardlink_target, check_path
from fs.format.toc import Toc, TocEntry, rfc3339_to_ns
from fs.format.tree import (
    NO_PREFETCH_LANDMARK,
    NO_XATTRS,
    OPAQUE_WHITEOUT,
    PREFETCH_LANDMARK,
    WHITEOUT_PREFIX,
    Chunk,
    FileNode,
    LayerIndex,
    is_whiteout,
    normalize_name,
    whiteout_target,
)
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "NO_PREFETCH_LANDMARK",
    "OPAQUE_WHITEOUT",
    "PREFETCH_LANDMARK",
    "WHITEOUT_PREFIX",
    "Chunk",
    "FileNode",
    "LayerIndex",
    "build_index",
    "is_whiteout",
    "normalize_name",
    "whiteout_target",
]

_HIDDEN_ESTARGZ = frozenset({PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK, "stargz.index.json"})
_GO_ZERO_TIME_NS = -62135596800 * 1_000_000_000  # "0001-01-01T00:00:00Z": Go's zero time = "unset"

_TYPE_BITS = {
    "reg": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}


class _Times(dict[str, int | None]):
    """RFC 3339 text -> ns (None for absent/Go's zero time), memoized: layers repeat a few times a lot.
    A dict whose misses parse, so a hit is one lookup in C (three per entry)."""

    def __init__(self) -> None:
        super().__init__({"": None})

    def __missing__(self, text: str) -> int | None:
        ns = rfc3339_to_ns(text)
        value = self[text] = None if ns == _GO_ZERO_TIME_NS else ns
        return value


class _Builder:
    def __init__(
        self, toc: Toc, dialect: Dialect, blob_size: int, toc_offset: int | None, limits: Limits
    ) -> None:
        self.toc = toc
        self.dialect = dialect
        self.estargz = dialect.is_estargz
        self.limits = limits
        self.blob_size = blob_size
        if toc_offset is None:
            self.data_end = blob_size
        elif dialect is Dialect.ESTARGZ_GZIP:
            self.data_end = toc_offset
        else:
            self.data_end = toc_offset - SKIPPABLE_HEADER_SIZE
        if not 0 <= self.data_end <= blob_size:
            raise FormatError(f"TOC offset {toc_offset} is outside the blob ({blob_size} bytes)")
        root = FileNode(path="", type="dir", mode=stat.S_IFDIR | 0o755, nlink=2, ino=1, implied=True)
        self.index = LayerIndex(dialect, blob_size, self.data_end, root, {"": root})
        self.nodes = self.index.nodes
        self.next_ino = 2
        self.unames: dict[int, str] = {}
        self.gnames: dict[int, str] = {}
        self.times = _Times()

    # -- tree -------------------------------------------------------------------------------------
    def _dir(self, path: str) -> FileNode:
        """The directory at ``path``, creating it and its missing ancestors as implied directories.

        Iterative (a path may have as many components as ``max_path_depth`` allows).
        """
        node = self.nodes.get(path)
        if node is not None:
            if node.type != "dir":
                raise FormatError(f"{path!r} is used as a directory but is a {node.type}", path=path)
            return node
        missing = [path]
        parent_path = path.rpartition("/")[0]
        parent = self.nodes.get(parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = parent_path.rpartition("/")[0]
            parent = self.nodes.get(parent_path)
        if parent.type != "dir":
            raise FormatError(
                f"{parent_path!r} is used as a directory but is a {parent.type}", path=parent_path
            )
        for p in reversed(missing):
            node = FileNode(path=p, type="dir", mode=stat.S_IFDIR | 0o755, nlink=2, implied=True)
            self._attach(parent, p, node)
            parent = node
        return parent

    def _attach(self, parent: FileNode, path: str, node: FileNode) -> None:
        if not node.ino:
            node.ino = self.next_ino
            self.next_ino += 1
        self.nodes[path] = node
        if node.type == "dir":
            parent.nlink += 1

    def _check_xattrs(self, xattrs: dict[str, bytes]) -> None:
        limits = self.limits
        if len(xattrs) > limits.max_xattr_count:
            raise FormatError(f"{len(xattrs)} xattrs, more than {limits.max_xattr_count} (max-xattr-count)")
        for key, value in xattrs.items():
            if not key or "\0" in key:
                raise FormatError(f"xattr name {key!r} is empty or contains NUL")
            if len(key.encode("utf-8")) > limits.max_xattr_name_length:
                raise FormatError(
                    f"xattr name {key[:40]!r}... is longer than {limits.max_xattr_name_length} bytes "
                    "(max-xattr-name-length)"
                )
            if len(value) > limits.max_xattr_size:
                raise FormatError(
                    f"xattr {key!r} is {len(value)} bytes, more than {limits.max_xattr_size} (max-xattr-size)"
                )

    def _node_from(self, e: TocEntry, path: str) -> FileNode:
        user_name, group_name = e.user_name, e.group_name
        if self.estargz:
            if user_name:
                self.unames[e.uid] = user_name
            else:
                user_name = self.unames.get(e.uid, "")
            if group_name:
                self.gnames[e.gid] = group_name
            else:
                group_name = self.gnames.get(e.gid, "")
        xattrs: Mapping[str, bytes] = NO_XATTRS
        if e.xattrs:
            self._check_xattrs(e.xattrs)
            xattrs = e.xattrs
        times = self.times
        node = FileNode(
            path,
            e.type,
            _TYPE_BITS[e.type] | (e.mode & 0o7777),
            e.uid,
            e.gid,
            0,
            times[e.modtime] or 0,
            times[e.accesstime],
            times[e.changetime],
            xattrs=xattrs,
            user_name=user_name,
            group_name=group_name,
        )
        if e.type == "symlink":
            if not e.link_name:
                raise FormatError(f"symlink {e.name!r} has no target", path=e.name)
            if "\0" in e.link_name:
                raise FormatError(f"symlink {e.name!r} target contains NUL", path=e.name)
            check_path(e.name, e.link_name, self.limits, "symlink target")
            node.link_target = e.link_name
            node.size = len(e.link_name.encode("utf-8"))
        elif e.type in ("char", "block"):
            check_device(e.dev_major, e.dev_minor)
            node.rdev = os.makedev(e.dev_major, e.dev_minor)
        elif e.type == "dir":
            node.nlink = 2
        return node

    # -- entries ----------------------------------------------------------------------------------
    def build(self) -> LayerIndex:
        entries = self.toc.entries
        self.ends = estargz_frame_ends(entries, self.data_end) if self.estargz else []
        i = 0
        while i < len(entries):
            e = entries[i]
            try:
                if e.type == "chunk":
                    raise FormatError(f"chunk entry {e.name!r} does not follow its regular file")
                j = i + 1
                while j < len(entries) and entries[j].type == "chunk":
                    j += 1
                self._entry(e, i, j)
            except FormatError as exc:
                if not exc.path:
                    exc.path = e.name
                raise
            i = j
        if self.index.prefetch_landmark_offset is None:
            self.index.prefetch_paths.clear()  # no landmark: nothing was prioritized
        if self.toc.prefetch:  # c/storage layers written by zsnap: an explicit, digest-covered list
            self.index.prefetch_paths = [
                p for p in (normalize_name(n) for n in self.toc.prefetch) if self.index.lookup(p)
            ]
        return self.index

    def _entry(self, e: TocEntry, i: int, j: int) -> None:
        """Add entry ``i`` and its chunk entries ``i+1 .. j-1``."""
        path = normalize_name(e.name)
        check_path(e.name, path, self.limits)
        if self.estargz and path in _HIDDEN_ESTARGZ:
            self._landmark(e, path)
            return
        kind = e.type
        if j > i + 1 and kind != "reg":
            raise FormatError(f"chunk entries follow a {kind} entry")
        # Every name is explicit once its entry is seen; only implied directories are not.
        nodes = self.nodes
        existing = nodes.get(path)
        if existing is not None and not existing.implied:
            raise FormatError(f"duplicate entry {path!r} in TOC", path=path)
        if path == "":
            if kind != "dir":
                raise FormatError(f"the layer root is given as a {kind}")
            self._update_dir(self.index.root, e)
            return
        parent_path = path.rpartition("/")[0]
        parent = nodes.get(parent_path)
        if parent is None or parent.type != "dir":
            parent = self._dir(parent_path)
        if kind == "hardlink":
            self._hardlink(e, parent, path)
            return
        if existing is not None:  # only an implied directory can exist here
            if kind != "dir":
                raise FormatError(f"{path!r} is both a directory and a {kind}")
            self._update_dir(existing, e)
            return
        node = self._node_from(e, path)
        self._attach(parent, path, node)
        if kind == "reg":
            self._file(node, e, i, self.toc.entries[i + 1 : j] if j > i + 1 else [])
            if self.estargz and self.index.prefetch_landmark_offset is None:
                self.index.prefetch_paths.append(path)

    def _hardlink(self, e: TocEntry, parent: FileNode, path: str) -> None:
        """Give the earlier entry ``e.link_name`` (same layer, not a directory) the name ``path`` too.

        The converter applies the same rule to tar hardlinks (:mod:`fs.format.paths`).
        """
        node = check_hardlink_target(e.name, e.link_name, self.nodes)
        assert isinstance(node, FileNode)
        node.nlink += 1
        self._attach(parent, path, node)

    def _update_dir(self, node: FileNode, e: TocEntry) -> None:
        fresh = self._node_from(e, node.path)
        node.mode, node.uid, node.gid = fresh.mode, fresh.uid, fresh.gid
        node.mtime_ns, node.atime_ns, node.ctime_ns = fresh.mtime_ns, fresh.atime_ns, fresh.ctime_ns
        node.xattrs, node.user_name, node.group_name = fresh.xattrs, fresh.user_name, fresh.group_name
        node.implied = False

    def _landmark(self, e: TocEntry, path: str) -> None:
        if path == PREFETCH_LANDMARK:
            self.index.prefetch_landmark_offset = e.offset
        elif path == NO_PREFETCH_LANDMARK:
            self.index.no_prefetch = True

    def _file(self, node: FileNode, e: TocEntry, i: int, chunk_entries: list[TocEntry]) -> None:
        node.size = e.size
        node.digest = e.digest or (EMPTY_SHA256 if e.size == 0 else "")
        if e.size == 0:
            if chunk_entries:
                raise FormatError("empty file has chunk entries")
            return
        if not self.estargz:
            node.chunks = cstorage_chunks(e, chunk_entries, self.data_end)
        else:
            ends = self.ends[i : i + 1 + len(chunk_entries)]
            node.chunks = estargz_chunks(e, chunk_entries, ends, self.data_end)
        check_tiling(node.chunks, e.size, self.limits)


def build_index(
    toc: Toc,
    dialect: Dialect,
    blob_size: int,
    *,
    toc_offset: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> LayerIndex:
    """Resolve and validate ``toc`` into a :class:`LayerIndex` (see the module docstring for the rules).

    Args:
        toc: a parsed TOC of ``dialect``'s schema.
        dialect: the layer's dialect (decides chunk-end rules and landmark handling).
        blob_size: compressed blob size; no compressed range may reach past it.
        toc_offset: the TOC payload offset, when known: caps the data region (``toc_offset - 8`` for zstd,
            ``toc_offset`` for gzip) so no chunk range includes the TOC.
        limits: entries, path length/depth/component length, xattr count/size/name length and chunk sizes
            beyond these are refused.

    Raises:
        FormatError: any inconsistency (names escaping the layer, duplicates, chunk gaps/overlaps, missing
            hardlink targets, ranges outside the data region, a limit exceeded, ...); ``exc.path``
            names the entry.
    """
    if len(toc.entries) > limits.max_toc_entries:
        raise FormatError(
            f"TOC has {len(toc.entries)} entries, more than the limit of {limits.max_toc_entries} "
            "(max-toc-entries)"
        )
    with collector_paused():  # millions of new acyclic objects: the cycle collector would only re-scan them
        return _Builder(toc, dialect, blob_size, toc_offset, limits).build()
