"""Index an uncompressed tar (a layer that cannot be read lazily) into inode-table items.

Used for plain gzip/zstd/uncompressed layers: the blob is downloaded whole and verified, decompressed once
into the store, and its files are then served by ``pread`` at the offsets recorded here. Whiteouts are left
under their raw names for :class:`~fs.lazy.inodes.InodeTable` to map. A regular file's
:attr:`~fs.lazy.inodes.Item.content` is the absolute offset of its data in the tar.
"""

from __future__ import annotations

import tarfile
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from fs.errors import FormatError, UnsupportedFormat, error_context
from fs.format.paths import LayerNames, check_device
from fs.format.tree import normalize_name
from fs.lazy.inodes import Item
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = ["index_tar"]

_XATTR_PREFIX = "SCHILY.xattr."


def _pax_time_ns(pax: Mapping[str, str], key: str) -> int | None:
    value = pax.get(key)
    if value is None:
        return None
    try:
        return int(Decimal(value) * 1_000_000_000)
    except (InvalidOperation, ValueError):
        return None


def index_tar(f: BinaryIO, *, limits: Limits = DEFAULT_LIMITS) -> list[Item]:
    """Read every member header of the tar in ``f`` (seekable) and return the layer's items in tar order.

    Names, link targets and device numbers follow the same rules as a TOC's (:mod:`fs.format.paths`).

    Raises:
        FormatError: a malformed tar, a member name escaping the layer, a hardlink out of the layer or to
            a missing or directory entry, a path over the limits, an impossible device number.
        UnsupportedFormat: GNU sparse members or unknown member types.
    """
    items: list[Item] = []
    names = LayerNames(limits)
    try:
        with tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                items.append(_item(m, names))
    except tarfile.TarError as exc:
        raise FormatError(f"layer is not a valid tar: {exc}") from exc
    return items


def _kind(m: tarfile.TarInfo) -> str:
    if m.isreg():
        return "reg"
    if m.isdir():
        return "dir"
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.ischr():
        return "char"
    if m.isblk():
        return "block"
    return "fifo" if m.isfifo() else "other"


def _item(m: tarfile.TarInfo, names: LayerNames) -> Item:
    path = names.add(m.name, _kind(m), m.linkname)
    pax = m.pax_headers
    mtime = _pax_time_ns(pax, "mtime")
    item = Item(
        path=path,
        kind="reg",
        mode=m.mode & 0o7777,
        uid=m.uid,
        gid=m.gid,
        mtime_ns=mtime if mtime is not None else int(m.mtime) * 1_000_000_000,
        atime_ns=_pax_time_ns(pax, "atime"),
        ctime_ns=_pax_time_ns(pax, "ctime"),
        xattrs={
            k[len(_XATTR_PREFIX) :]: v.encode("utf-8", "surrogateescape")
            for k, v in pax.items()
            if k.startswith(_XATTR_PREFIX)
        },
    )
    if m.issparse():
        raise UnsupportedFormat(f"GNU sparse tar member {m.name!r} is not supported", path=m.name)
    if m.isreg():
        item.size = m.size
        item.content = m.offset_data
    elif m.isdir():
        item.kind = "dir"
    elif m.issym():
        item.kind, item.target = "symlink", m.linkname
    elif m.islnk():
        item.kind, item.target = "hardlink", normalize_name(m.linkname)
    elif m.ischr() or m.isblk():
        item.kind = "char" if m.ischr() else "block"
        with error_context(path=m.name):
            check_device(m.devmajor, m.devminor)
        item.dev_major, item.dev_minor = m.devmajor, m.devminor
    elif m.isfifo():
        item.kind = "fifo"
    else:
        raise UnsupportedFormat(f"tar member {m.name!r} has unsupported type {m.type!r}", path=m.name)
    return item
