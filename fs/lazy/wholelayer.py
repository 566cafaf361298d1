"""Layers that cannot be read lazily: downloaded whole into the store, decompressed once, indexed.

Plain gzip / zstd / uncompressed tar layers, and zstd:chunked ones whose TOC nothing in the manifest vouches
for, are downloaded into the store and verified against the descriptor digest, decompressed once into the
store under their DiffID (checked against the image config), and indexed (:func:`fs.lazy.tarindex.index_tar`);
their files are then served by ``pread`` from the uncompressed tar (:class:`fs.lazy.layer.OpenedLayer`).
"""

from __future__ import annotations

import gzip
import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import trio
import zstandard

from fs.errors import FormatError, VerificationError
from fs.format.annotations import GZIP_LAYER_MEDIA_TYPES, ZSTD_LAYER_MEDIA_TYPES
from fs.lazy.inodes import Item
from fs.lazy.stats import MountStats
from fs.lazy.storeio import StoreIO
from fs.lazy.tarindex import index_tar
from fs.limits import Limits

if TYPE_CHECKING:
    from fs.lazy.layer import LayerDescriptor  # which imports this module

__all__ = ["fetch_whole_layer"]

#: whole-layer downloads are written to scratch in pieces of about this size
_WRITE_BATCH = 1 << 20

_UNCOMPRESSED_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)


def _decompressor(media_type: str) -> Callable[[BinaryIO], BinaryIO] | None:
    if media_type in GZIP_LAYER_MEDIA_TYPES or media_type.endswith("+gzip") or media_type.endswith(".gzip"):
        return lambda f: gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if media_type in ZSTD_LAYER_MEDIA_TYPES or media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return lambda f: zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    if media_type in _UNCOMPRESSED_TYPES:
        return None
    raise FormatError(f"unsupported layer media type {media_type!r}")


async def fetch_whole_layer(
    client: Any,
    repository: str,
    desc: LayerDescriptor,
    *,
    store: Any,
    stats: MountStats,
    holder: str,
    scratch: Path,
    limits: Limits,
    cpu_limiter: trio.CapacityLimiter | None,
) -> tuple[str, list[Item]]:
    """Download ``desc`` whole into the store (verified against its digest), decompress it once into the
    store under its DiffID (checked against the image config's), and index the tar.

    Args:
        store: the store, or a :class:`~fs.lazy.storeio.StoreIO` whose write threads it uses.
        scratch: a directory for the download and decompression temp files (same file system as the store).
        cpu_limiter: the worker threads that index the tar take a token of it.

    Returns:
        The store digest of the uncompressed tar (the blob's own for an uncompressed layer), and its items
        (a regular file's ``content`` is the offset of its bytes in the tar).

    Raises:
        VerificationError: blob size or digest, or DiffID mismatch.
        FormatError: unsupported media type, a tar that does not decompress or parse.
        RegistryError: fetching failed.
    """
    decompress = _decompressor(desc.media_type)
    sio = store if isinstance(store, StoreIO) else StoreIO(store)
    store = sio.store
    await trio.to_thread.run_sync(lambda: scratch.mkdir(parents=True, exist_ok=True))
    if not sio.has(desc.digest):
        tmp = scratch / f"download-{desc.hex}.{secrets.token_hex(4)}"
        try:
            t0 = trio.current_time()
            n = 0
            # file writes run in the store's write threads (DESIGN.md 9), about 1 MiB at a time
            out = await sio.run(open, tmp, "wb")
            try:
                pending: list[bytes] = []
                buffered = 0
                async with client.stream_blob(repository, desc.digest) as chunks:
                    async for piece in chunks:  # the iterator raises VerificationError on a bad digest
                        pending.append(piece)
                        buffered += len(piece)
                        n += len(piece)
                        if buffered >= _WRITE_BATCH:
                            await sio.run(out.write, b"".join(pending))
                            pending, buffered = [], 0
                if pending:
                    await sio.run(out.write, b"".join(pending))
            finally:
                with trio.CancelScope(shield=True):
                    await sio.run(out.close)
            stats.record_fetch(n, trio.current_time() - t0)
            if n != desc.size:
                raise VerificationError(f"blob is {n} bytes, the manifest says {desc.size}")
            await sio.put_file(tmp, digest=desc.digest, holder=holder, move=True)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: tmp.unlink(missing_ok=True))
    else:
        await sio.ref(desc.digest, holder)
    if decompress is None:
        tar_digest = desc.digest
    else:
        # a long CPU-bound pass (its one put at the end included): a worker thread, but not one of the
        # store's write slots, which it would hold for seconds
        tar_digest = await trio.to_thread.run_sync(
            _decompress_into_store, store, desc, decompress, scratch, holder
        )
    items = await trio.to_thread.run_sync(_index_store_tar, store, tar_digest, limits, limiter=cpu_limiter)
    return tar_digest, items


def _decompress_into_store(
    store: Any, desc: LayerDescriptor, decompress: Callable[[BinaryIO], BinaryIO], scratch: Path, holder: str
) -> str:
    """Worker thread: decompress the stored blob once into the store, keyed (and checked) by DiffID."""
    if desc.diff_id and store.has(desc.diff_id):
        store.ref(desc.diff_id, holder)
        return desc.diff_id
    tmp = scratch / f"uncompressed-{desc.hex}.{secrets.token_hex(4)}"
    try:
        h = hashlib.sha256()
        with store.open_blob(desc.digest) as raw, decompress(raw) as src, open(tmp, "wb") as out:
            while piece := src.read(1 << 20):
                h.update(piece)
                out.write(piece)
        diff_id = "sha256:" + h.hexdigest()
        if desc.diff_id and diff_id != desc.diff_id:
            raise VerificationError(
                f"layer decompresses to {diff_id}, the image config says {desc.diff_id}", layer=desc.digest
            )
        store.put_file(tmp, digest=diff_id, holder=holder, move=True)
        return diff_id
    except (OSError, EOFError, zstandard.ZstdError, gzip.BadGzipFile) as exc:
        raise FormatError(f"layer does not decompress: {exc}", layer=desc.digest) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _index_store_tar(store: Any, tar_digest: str, limits: Limits) -> list[Item]:
    with store.open_blob(tar_digest) as f:
        return index_tar(f, limits=limits)
