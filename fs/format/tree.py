"""The layer tree model: :class:`LayerIndex`, :class:`FileNode`, :class:`Chunk`, path and whiteout helpers.

Built and validated by :func:`fs.format.index.build_index`; see there for the guarantees.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping
from types import MappingProxyType

import msgspec

from fs.errors import FormatError
from fs.format.dialect import Dialect

__all__ = [
    "NO_PREFETCH_LANDMARK",
    "NO_XATTRS",
    "OPAQUE_WHITEOUT",
    "PREFETCH_LANDMARK",
    "WHITEOUT_PREFIX",
    "Chunk",
    "FileNode",
    "LayerIndex",
    "is_whiteout",
    "normalize_name",
    "whiteout_target",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"


def is_whiteout(name: str) -> bool:
    """True if the last component of ``name`` is a whiteout (``.wh.*``, including the opaque marker)."""
    return name.rsplit("/", 1)[-1].startswith(WHITEOUT_PREFIX)


def whiteout_target(name: str) -> str | None:
    """Path hidden by whiteout ``name`` (``a/.wh.b`` → ``a/b``); None for the opaque marker or non-whiteouts.

    For ``a/.wh..wh..opq`` the whole directory ``a`` of lower layers is hidden instead.
    """
    head, _, base = name.rpartition("/")
    if not base.startswith(WHITEOUT_PREFIX) or base == OPAQUE_WHITEOUT:
        return None
    target = base[len(WHITEOUT_PREFIX) :]
    if not target:
        return None
    return f"{head}/{target}" if head else target


def normalize_name(name: str) -> str:
    """Normalize a raw TOC/tar name to a layer-relative path ("" = root).

    Raises:
        FormatError: empty, contains NUL, or has a ``..`` component.
    """
    if not name:
        raise FormatError("empty file name in TOC")
    if "\0" in name:
        raise FormatError(f"file name {name!r} contains NUL")
    split = name.split("/")
    if "" not in split and "." not in split and ".." not in split:
        return name  # already normal: the common case, decided in C
    parts = []
    for part in split:
        if part == "..":
            raise FormatError(f"file name {name!r} escapes the layer ('..' component)", path=name)
        if part and part != ".":
            parts.append(part)
    return "/".join(parts)


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """A piece of a regular file and the compressed blob range that decodes to it.

    Decoding ``blob[compressed_offset:compressed_end]`` as a multi-frame zstd (gzip for eStargz-gzip)
    stream, skipping ``inner_offset`` bytes and taking ``size`` bytes yields file bytes
    ``[file_offset, file_offset + size)``, whose sha256 must equal ``digest``. ``zeros`` chunks are
    synthesized without fetching, once ``digest`` is checked to be that of ``size`` zero bytes.
    (A compact struct: a layer may have millions.)
    """

    file_offset: int
    size: int
    compressed_offset: int
    compressed_end: int
    digest: str
    inner_offset: int = 0
    zeros: bool = False


#: The (immutable, shared) xattrs of every node that has none.
NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


class FileNode(msgspec.Struct, eq=False, gc=False):
    """One inode of the layer. Hardlinked names share one node (``nlink`` > 1, ``path`` = first name).

    ``mode`` includes the ``S_IF*`` type bits; ``type`` is ``reg/dir/symlink/char/block/fifo``.
    ``mtime_ns`` is 0 when the TOC has no (or Go's zero) time; ``atime_ns``/``ctime_ns`` are None then.
    ``size`` is the content length for files and the target length for symlinks. ``ino`` is a
    layer-local number (root = 1) assigned in TOC order. ``xattrs`` is read-only (nodes without xattrs
    share :data:`NO_XATTRS`); copy it to change it. A compact struct: a layer may have millions.
    """

    path: str
    type: str
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int | None = None
    ctime_ns: int | None = None
    link_target: str = ""
    rdev: int = 0
    xattrs: Mapping[str, bytes] = NO_XATTRS
    digest: str = ""
    nlink: int = 1
    chunks: list[Chunk] = []
    user_name: str = ""
    group_name: str = ""
    ino: int = 0
    implied: bool = False

    @property
    def is_dir(self) -> bool:
        """True for directories."""
        return self.type == "dir"


@dataclasses.dataclass(slots=True, eq=False)
class LayerIndex:
    """The resolved tree of one layer. Built by :func:`build_index`; read-only by convention."""

    dialect: Dialect
    blob_size: int
    data_end: int
    root: FileNode
    nodes: dict[str, FileNode]
    prefetch_landmark_offset: int | None = None
    no_prefetch: bool = False
    prefetch_paths: list[str] = dataclasses.field(default_factory=list)
    _children: dict[str, dict[str, FileNode]] = dataclasses.field(default_factory=dict)
    _sorted: dict[str, list[tuple[str, FileNode]]] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[tuple[str, FileNode]]:
        """(path, node) for every name, root (``""``) included, in TOC order (implied dirs first seen)."""
        return iter(self.nodes.items())

    def lookup(self, path: str) -> FileNode | None:
        """The node at ``path`` (any of the accepted spellings: ``/a/b``, ``./a/b``, ``a/b/``), or None."""
        try:
            return self.nodes.get(normalize_name(path) if path else "")
        except FormatError:
            return None

    def children(self, directory: str | FileNode) -> list[tuple[str, FileNode]]:
        """``(name, node)`` entries of a directory, sorted by name; [] for non-directories/unknown paths.

        The directory maps are built on the first call (one pass over all names): readers that walk the
        index themselves (the mount builds its own inode table) never pay for them.
        """
        if not self._children:
            self._build_children()
        if isinstance(directory, FileNode):
            key = directory.path
        else:
            try:
                key = normalize_name(directory) if directory else ""
            except FormatError:
                return []
        cached = self._sorted.get(key)
        if cached is None:
            cached = sorted(self._children.get(key, {}).items())
            self._sorted[key] = cached
        return cached

    def _build_children(self) -> None:
        children: dict[str, dict[str, FileNode]] = {p: {} for p, node in self.nodes.items() if node.is_dir}
        for path, node in self.nodes.items():
            if path:
                head, _, name = path.rpartition("/")
                children[head][name] = node
        self._children = children

    def chunks_for(self, node: FileNode, offset: int, length: int) -> list[Chunk]:
        """The chunks of ``node`` overlapping file bytes ``[offset, offset + length)`` (clipped to size)."""
        if length <= 0 or offset >= node.size or not node.chunks:
            return []
        chunks = node.chunks
        first = max(0, bisect.bisect_right(chunks, offset, key=_file_offset) - 1)
        last = bisect.bisect_left(chunks, min(offset + length, node.size), key=_file_offset)
        return chunks[first:last]


def _file_offset(chunk: Chunk) -> int:
    return chunk.file_offset
