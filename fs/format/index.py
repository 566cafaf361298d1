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
  range that decodes to it, inside the blob's data region:

  - c/storage dialects: chunk *i* ends at chunk *i+1*'s ``offset``, the last one at the reg
    ``endOffset``; a single-chunk file's chunk is verified with the whole-file ``digest``;
    ``chunkType: "zeros"`` sets :attr:`Chunk.zeros` (the range may be skipped and zeros synthesized,
    still hashing to ``digest``).
  - eStargz dialects: each data entry ends at the next entry's non-zero ``offset`` with ``innerOffset``
    0 (stargz ``initFields``), the last one at the end of the data region (``toc_offset - 8`` for zstd,
    ``toc_offset`` for gzip, else the blob size); decode, skip ``inner_offset`` bytes, take ``size``.
    ``userName``/``groupName`` carry forward per uid/gid; ``chunkSize`` 0 means "to end of file".
    ``.prefetch.landmark``/``.no.prefetch.landmark`` (and a stray ``stargz.index.json``) are hidden from
    the tree; :attr:`LayerIndex.prefetch_landmark_offset`, :attr:`~LayerIndex.no_prefetch` and
    :attr:`~LayerIndex.prefetch_paths` record them.
* **Whiteouts** stay in the tree under their raw names; :func:`is_whiteout`/:func:`whiteout_target`/
  :data:`OPAQUE_WHITEOUT` let the FUSE layer map them.
"""

from __future__ import annotations

import os
import stat

from fs.digest import EMPTY_SHA256
from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.frames import SKIPPABLE_HEADER_SIZE
from fs.format.toc import CHUNK_TYPE_ZEROS, Toc, TocEntry, rfc3339_to_ns
from fs.format.tree import (
    NO_PREFETCH_LANDMARK,
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


def _time_ns(text: str) -> int | None:
    if not text:
        return None
    ns = rfc3339_to_ns(text)
    return None if ns == _GO_ZERO_TIME_NS else ns


class _Builder:
    def __init__(self, toc: Toc, dialect: Dialect, blob_size: int, toc_offset: int | None) -> None:
        self.toc = toc
        self.dialect = dialect
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
        self.children = self.index._children
        self.children[""] = {}
        self.next_ino = 2
        self.explicit: set[str] = set()
        self.unames: dict[int, str] = {}
        self.gnames: dict[int, str] = {}

    # -- tree -------------------------------------------------------------------------------------
    def _dir(self, path: str) -> FileNode:
        node = self.index.nodes.get(path)
        if node is None:
            parent = self._dir(path.rpartition("/")[0])
            node = FileNode(path=path, type="dir", mode=stat.S_IFDIR | 0o755, nlink=2, implied=True)
            self._attach(parent, path, node)
            self.children[path] = {}
        elif not node.is_dir:
            raise FormatError(f"{path!r} is used as a directory but is a {node.type}", path=path)
        return node

    def _attach(self, parent: FileNode, path: str, node: FileNode) -> None:
        if not node.ino:
            node.ino = self.next_ino
            self.next_ino += 1
        self.index.nodes[path] = node
        self.children[parent.path][path.rpartition("/")[2]] = node
        if node.is_dir:
            parent.nlink += 1

    def _node_from(self, e: TocEntry, path: str) -> FileNode:
        if self.dialect.is_estargz:
            if e.user_name:
                self.unames[e.uid] = e.user_name
            if e.group_name:
                self.gnames[e.gid] = e.group_name
        node = FileNode(
            path=path,
            type=e.type,
            mode=_TYPE_BITS[e.type] | (e.mode & 0o7777),
            uid=e.uid,
            gid=e.gid,
            mtime_ns=_time_ns(e.modtime) or 0,
            atime_ns=_time_ns(e.accesstime),
            ctime_ns=_time_ns(e.changetime),
            xattrs=dict(e.xattrs),
            user_name=e.user_name or self.unames.get(e.uid, ""),
            group_name=e.group_name or self.gnames.get(e.gid, ""),
        )
        if e.type == "symlink":
            if not e.link_name:
                raise FormatError(f"symlink {e.name!r} has no target", path=e.name)
            node.link_target = e.link_name
            node.size = len(e.link_name.encode("utf-8"))
        elif e.type in ("char", "block"):
            node.rdev = os.makedev(e.dev_major, e.dev_minor)
        elif e.type == "dir":
            node.nlink = 2
        return node

    # -- entries ----------------------------------------------------------------------------------
    def _compressed_ends(self) -> list[int]:
        # stargz initFields: walking backwards, each data entry ends at the next non-zero offset whose
        # innerOffset is 0 (the start of the next frame); the last one at the end of the data region.
        ends = [0] * len(self.toc.entries)
        last = self.data_end
        for k in range(len(self.toc.entries) - 1, -1, -1):
            e = self.toc.entries[k]
            ends[k] = last
            if e.offset and not e.inner_offset:
                last = e.offset
        return ends

    def build(self) -> LayerIndex:
        entries = self.toc.entries
        self.ends = self._compressed_ends() if self.dialect.is_estargz else []
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
        chunk_entries = self.toc.entries[i + 1 : j]
        path = normalize_name(e.name)
        if self.dialect.is_estargz and path in _HIDDEN_ESTARGZ:
            self._landmark(e, path)
            return
        if chunk_entries and e.type != "reg":
            raise FormatError(f"chunk entries follow a {e.type} entry")
        if path in self.explicit:
            raise FormatError(f"duplicate entry {path!r} in TOC", path=path)
        self.explicit.add(path)
        if path == "":
            if e.type != "dir":
                raise FormatError(f"the layer root is given as a {e.type}")
            self._update_dir(self.index.root, e)
            return
        parent = self._dir(path.rpartition("/")[0])
        existing = self.index.nodes.get(path)
        if e.type == "hardlink":
            target = normalize_name(e.link_name) if e.link_name else ""
            node = self.index.nodes.get(target) if target else None
            if node is None or target not in self.explicit:
                raise FormatError(f"hardlink {e.name!r} points to missing {e.link_name!r}")
            if node.is_dir:
                raise FormatError(f"hardlink {e.name!r} points to directory {e.link_name!r}")
            node.nlink += 1
            self._attach(parent, path, node)
            return
        if existing is not None:  # only an implied directory can exist here
            if e.type != "dir":
                raise FormatError(f"{path!r} is both a directory and a {e.type}")
            self._update_dir(existing, e)
            return
        node = self._node_from(e, path)
        self._attach(parent, path, node)
        if e.type == "dir":
            self.children[path] = {}
        elif e.type == "reg":
            self._file(node, e, i, chunk_entries)
            if self.dialect.is_estargz and self.index.prefetch_landmark_offset is None:
                self.index.prefetch_paths.append(path)

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
        if self.dialect.is_cstorage:
            self._cstorage_chunks(node, e, chunk_entries)
        else:
            self._estargz_chunks(node, e, i, chunk_entries)
        expected = 0
        for c in node.chunks:
            if c.file_offset != expected:
                what = "gap" if c.file_offset > expected else "overlap"
                raise FormatError(
                    f"chunk {what} at file offset {expected} (next chunk starts at {c.file_offset})"
                )
            if c.size <= 0:
                raise FormatError(f"empty chunk at file offset {c.file_offset}")
            expected += c.size
        if expected != e.size:
            raise FormatError(f"chunks cover {expected} bytes of a {e.size}-byte file")

    def _check_range(self, start: int, end: int) -> None:
        if not 0 < start < end <= self.data_end:
            raise FormatError(
                f"compressed range [{start}, {end}) is outside the data region [0, {self.data_end})"
            )

    def _cstorage_chunks(self, node: FileNode, e: TocEntry, chunk_entries: list[TocEntry]) -> None:
        if not chunk_entries:
            digest = e.digest or e.chunk_digest
            if not digest:
                raise FormatError("non-empty regular file without a digest")
            self._check_range(e.offset, e.end_offset)
            node.chunks = [
                Chunk(0, e.size, e.offset, e.end_offset, digest, zeros=e.chunk_type == CHUNK_TYPE_ZEROS)
            ]
            return
        parts = [e, *chunk_entries]
        for k, c in enumerate(parts):
            if c.name != e.name:
                raise FormatError(f"chunk entry named {c.name!r} follows regular file {e.name!r}")
            end = parts[k + 1].offset if k + 1 < len(parts) else e.end_offset
            self._check_range(c.offset, end)
            if not c.chunk_digest:
                raise FormatError(f"chunk at file offset {c.chunk_offset} has no chunkDigest")
            node.chunks.append(
                Chunk(
                    c.chunk_offset,
                    c.chunk_size,
                    c.offset,
                    end,
                    c.chunk_digest,
                    zeros=c.chunk_type == CHUNK_TYPE_ZEROS,
                )
            )

    def _estargz_chunks(self, node: FileNode, e: TocEntry, i: int, chunk_entries: list[TocEntry]) -> None:
        only = not chunk_entries
        for k, c in enumerate((e, *chunk_entries)):
            if c.name != e.name:
                raise FormatError(f"chunk entry named {c.name!r} follows regular file {e.name!r}")
            size = c.chunk_size or (e.size - c.chunk_offset)
            digest = c.chunk_digest or (e.digest if only else "")
            if not digest:
                raise FormatError(f"chunk at file offset {c.chunk_offset} has no chunkDigest")
            if not c.offset:
                raise FormatError(f"chunk at file offset {c.chunk_offset} has no offset")
            end = self.ends[i + k]
            self._check_range(c.offset, end)
            node.chunks.append(
                Chunk(c.chunk_offset, size, c.offset, end, digest, inner_offset=c.inner_offset)
            )


def build_index(toc: Toc, dialect: Dialect, blob_size: int, *, toc_offset: int | None = None) -> LayerIndex:
    """Resolve and validate ``toc`` into a :class:`LayerIndex` (see the module docstring for the rules).

    Args:
        toc: a parsed TOC of ``dialect``'s schema.
        dialect: the layer's dialect (decides chunk-end rules and landmark handling).
        blob_size: compressed blob size; no compressed range may reach past it.
        toc_offset: the TOC payload offset, when known: caps the data region (``toc_offset - 8`` for zstd,
            ``toc_offset`` for gzip) so no chunk range includes the TOC.

    Raises:
        FormatError: any inconsistency (names escaping the layer, duplicates, chunk gaps/overlaps, missing
            hardlink targets, ranges outside the data region, ...); ``exc.path`` names the entry.
    """
    return _Builder(toc, dialect, blob_size, toc_offset).build()
