"""The pyfuse3 ``Operations`` of a mount: a read-only view of the :class:`~fs.lazy.inodes.InodeTable`.

Handlers follow pyfuse3's examples (``examples/passthroughfs.py``): one method per FUSE op, only
:class:`pyfuse3.FUSEError` escapes. Errors stop here (stargz ``node.go``): any failure of a read is answered
with ``EIO`` and logged once per file and error kind, naming the layer and the path (later repeats of the
same failure log at DEBUG). Nothing here blocks the trio thread on the network: reads of missing chunks
await the :class:`~fs.lazy.fetcher.ChunkFetcher`.

Layers are immutable, so the kernel may cache everything: entries and attributes carry long timeouts and
files are opened with ``keep_cache`` (DESIGN.md decision 12). The root directory is the one thing that
changes (layers come and go): it is never cached here and the kernel keeps its attributes briefly.

Lookup counts are kept per layer by the :class:`~fs.lazy.inodes.InodeTable` (every ``lookup`` reply and
every ``readdir_reply`` but ``.``/``..`` counts one, ``forget`` subtracts); a removed layer's nodes are
freed, and ``on_free`` called, once the kernel forgot all of them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3

from fs.errors import ZsnapError
from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.inodes import INDEX_BITS, ROOT_INODE, InodeTable, LayerTree, Node
from fs.lazy.layer import OpenedLayer
from fs.lazy.stats import MountStats

__all__ = ["CACHE_TIMEOUT", "LazyOperations"]

log = logging.getLogger(__name__)

#: entry/attribute cache lifetime given to the kernel, seconds (layers never change while mounted)
CACHE_TIMEOUT = 24 * 3600.0
#: the root directory lists the attached layers, which change: the kernel re-asks after this long
ROOT_TIMEOUT = 1.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT


class LazyOperations(pyfuse3.Operations):
    """Serve ``table``; a regular file's bytes come from its layer (``table.tree(node.layer).payload``,
    an :class:`~fs.lazy.layer.OpenedLayer`: lazy chunks or the store).

    Args:
        table: the session's inodes (layers are inserted and unlinked by the host while serving).
        fetcher: reads chunks of lazy layers.
        store: serves whole (non-lazy) layers' uncompressed tars by ``pread`` (a read: inline).
        on_free: called with a layer tree the kernel no longer references (after it was unlinked).
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        table: InodeTable,
        fetcher: ChunkFetcher,
        store: Any,
        stats: MountStats,
        on_free: Callable[[LayerTree], None] | None = None,
    ) -> None:
        super().__init__()
        self.table = table
        self.fetcher = fetcher
        self.store = store
        self.stats = stats
        self.on_free = on_free
        #: bytes of regular files over the linked layers (statfs), kept by the host
        self.total_size = 0
        self._attrs: dict[int, pyfuse3.EntryAttributes] = {}
        self._dirlists: dict[int, list[tuple[bytes, int]]] = {}
        self._failed: set[tuple[int, str]] = set()
        #: slots of layers a previous process served that could not be attached again (a restart):
        #: the kernel may still ask for their inodes, which then get EIO (not ENOENT: the file exists)
        self.lost_slots: set[int] = set()

    def layer_of(self, node: Node) -> OpenedLayer | None:
        """The opened layer serving ``node`` (None for the root)."""
        try:
            return self.table.tree(node.layer).payload  # type: ignore[no-any-return]
        except KeyError:
            return None

    def _forgotten(self, tree: LayerTree) -> None:
        """Drop what this object cached about a freed layer's inodes."""
        for node in tree.nodes:
            if node is not None:
                self._attrs.pop(node.inode, None)
                self._dirlists.pop(node.inode, None)
        self._failed = {k for k in self._failed if k[0] >> INDEX_BITS != tree.slot}
        if self.on_free is not None:
            self.on_free(tree)

    # -- helpers ----------------------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.table.get(inode)
        except KeyError:
            if inode >> INDEX_BITS in self.lost_slots:
                raise pyfuse3.FUSEError(errno.EIO) from None
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = self._attrs.get(node.inode)
        if attrs is None:
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = node.inode
            attrs.generation = 0
            timeout = ROOT_TIMEOUT if node.inode == ROOT_INODE else CACHE_TIMEOUT
            attrs.entry_timeout = timeout
            attrs.attr_timeout = timeout
            attrs.st_mode = node.mode
            attrs.st_nlink = node.nlink
            attrs.st_uid = node.uid
            attrs.st_gid = node.gid
            attrs.st_rdev = node.rdev
            attrs.st_size = node.size
            attrs.st_blksize = 4096
            attrs.st_blocks = (node.size + 511) // 512
            attrs.st_atime_ns = node.atime_ns
            attrs.st_mtime_ns = node.mtime_ns
            attrs.st_ctime_ns = node.ctime_ns
            if node.inode != ROOT_INODE:  # the root's link count changes with the layers
                self._attrs[node.inode] = attrs
        return attrs

    def _reply(self, node: Node) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that makes the kernel hold one more lookup of ``node``."""
        self.table.remember(node.inode)
        return self._entry(node)

    def _fail(self, node: Node, exc: BaseException) -> pyfuse3.FUSEError:
        """Account and log a failed request once per (file, error kind); return the EIO to raise."""
        self.stats.eio += 1
        opened = self.layer_of(node)
        layer = opened.desc.digest if opened is not None else "-"
        key = (node.inode, type(exc).__name__)
        path = self.table.path_of(node)
        if key in self._failed:
            log.debug("EIO again: layer %s path %s: %s", layer, path, exc)
        else:
            self._failed.add(key)
            if isinstance(exc, ZsnapError):
                log.warning("EIO: layer %s path %s: %s", layer, path, exc)
            else:
                log.error("EIO: layer %s path %s: unexpected %r", layer, path, exc, exc_info=exc)
        return pyfuse3.FUSEError(errno.EIO)

    # -- metadata ---------------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if parent.entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self._reply(parent)
        if name == b"..":
            return self._reply(self._node(parent.parent))
        inode = parent.entries.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._reply(self.table.get(inode))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._entry(self._node(inode))

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if not stat.S_ISLNK(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self._node(inode).xattrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (self.total_size + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self.table)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            freed = self.table.forget(inode, nlookup)
            if freed is not None:
                self._forgotten(freed)

    # -- directories ------------------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self._node(inode).entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries are ``.``, ``..``, then the children in layer order; ``start_id`` is the index."""
        listing = self._dirlists.get(fh)
        if listing is None:
            node = self._node(fh)
            assert node.entries is not None
            listing = [(b".", fh), (b"..", node.parent), *node.entries.items()]
            if fh != ROOT_INODE:  # the root's listing changes with the layers
                self._dirlists[fh] = listing
        for i in range(start_id, len(listing)):
            name, inode = listing[i]
            try:
                child = self.table.get(inode)
            except KeyError:  # a layer freed between two readdir calls of the root
                continue
            if not pyfuse3.readdir_reply(token, name, self._entry(child), i + 1):
                break
            if i >= 2:  # the kernel counts a lookup for every entry but "." and ".."
                self.table.remember(inode)

    async def releasedir(self, fh: int) -> None:
        return None

    # -- files ------------------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR if node.entries is not None else errno.EACCES)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self._node(fh)
        if off >= node.size or size <= 0:
            return b""
        layer = self.layer_of(node)
        if layer is None:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            data = await layer.read(self.fetcher, self.store, node.content, node.size, off, size)
            self.stats.reads += 1
            self.stats.read_bytes += len(data)
            return data
        except ZsnapError as exc:
            raise self._fail(node, exc) from None
        except Exception as exc:  # never let a bug take the mount down: EIO for this read
            raise self._fail(node, exc) from None

    async def release(self, fh: int) -> None:
        return None
