"""Open one layer for serving: lazily (TOC fetched + verified) or, failing that, whole from the store.

Lazy layers (zstd:chunked of either dialect, gzip eStargz) are opened with at most two small requests:

1. the TOC position comes from the descriptor annotations (``manifest-position``) or, when they name a TOC
   digest but no position (eStargz), from the blob footer (one tail request of 16 KiB, which contains
   small TOCs as well);
2. the TOC bytes are verified against the digest **in the manifest annotations** before a single byte is
   parsed (:func:`fs.format.verify.decode_and_verify_toc`), then :func:`fs.format.index.build_index` resolves
   and validates the tree (names escaping the layer are a :class:`~fs.errors.FormatError`).

Every other layer (plain gzip / zstd / uncompressed tar, or zstd:chunked without a TOC digest in the
manifest: nothing vouches for its TOC) is downloaded whole into the store, decompressed once and indexed
(:mod:`fs.lazy.wholelayer`); its files are then served by ``pread`` from the uncompressed tar.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from fs.errors import FormatError, UnsupportedFormat, error_context
from fs.format.annotations import (
    TocLocation,
    toc_location_from_annotations,
)
from fs.format.dialect import Dialect
from fs.format.footer import FOOTER_FETCH_SIZE, parse_footer
from fs.format.index import build_index
from fs.format.tree import Chunk, LayerIndex
from fs.format.verify import decode_and_verify_toc
from fs.lazy.early import EarlyRanges
from fs.lazy.fetcher import BlobSource, ChunkFetcher, RangeClient
from fs.lazy.inodes import Item
from fs.lazy.stats import MountStats
from fs.lazy.wholelayer import fetch_whole_layer
from fs.limits import DEFAULT_LIMITS, Limits
from fs.registry.manifests import Descriptor

__all__ = ["LayerDescriptor", "OpenedLayer", "index_items", "open_layer", "reads_lazily"]

log = logging.getLogger(__name__)

#: Blob tail fetched when the footer must locate the TOC: the footer plus, often, a small TOC with it.
TAIL_SIZE = max(FOOTER_FETCH_SIZE, 16 * 1024)
#: Files the container runtime itself reads from the image before the container runs, whatever the
#: workload: containerd's CRI resolves the user and its supplementary groups from ``/etc/passwd`` and
#: ``/etc/group`` while it creates the container (``WithUser``, ``WithAdditionalGIDs``; nerdctl through the
#: same client options). Prefetched in every layer that has them: the create need not wait for a round trip.
RUNTIME_READS = ("etc/passwd", "etc/group")
#: ... unless the image makes them bigger than this (they are a few kB): the image does not choose what
#: the host fetches beyond its own prefetch list.
RUNTIME_READ_MAX_SIZE = 1 << 20


@dataclass(frozen=True)
class LayerDescriptor(Descriptor):
    """A layer descriptor of the (verified) manifest plus its DiffID from the (verified) config."""

    diff_id: str | None = None

    @classmethod
    def from_descriptor(cls, d: Descriptor, *, diff_id: str | None = None) -> LayerDescriptor:
        return cls(d.media_type, d.digest, d.size, dict(d.annotations), d.platform, dict(d.extra), diff_id)

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]

    @property
    def short(self) -> str:
        return self.digest[:19]


@dataclass
class OpenedLayer:
    """A layer ready to serve; it owns its read path (:meth:`read`).

    Exactly one of ``source`` (lazy: chunks fetched from the blob through the host's fetcher) and
    ``tar_digest`` (whole: the uncompressed tar is a store object, read by ``pread``) is set. A regular
    file's ``content`` is its chunk list (lazy) or the offset of its bytes in the tar (whole).
    """

    desc: LayerDescriptor
    items: list[Item]
    source: BlobSource | None = None
    index: LayerIndex | None = None
    tar_digest: str | None = None
    dialect: Dialect | None = None
    early: EarlyRanges | None = None  # stands in for source.client until the prefetch phase ends
    _plan: tuple[list[Chunk], list[Chunk]] | None = None

    def use_early(self, early: EarlyRanges) -> None:
        """Read through ``early`` (the hinted prefetch bytes, :mod:`fs.lazy.early`) until
        :meth:`drop_early`."""
        assert self.source is not None
        self.early = early
        self.source = dataclasses.replace(self.source, client=early)

    def drop_early(self) -> None:
        """Back to the registry client alone; the early bytes are released (idempotent)."""
        if self.early is not None:
            assert self.source is not None
            self.source = dataclasses.replace(self.source, client=self.early.client)
            self.early.release()
            self.early = None

    def iter_items(self) -> Iterator[Item]:
        """The layer's entries as inode-table items (made one at a time from the index when lazy)."""
        if self.items or self.index is None:
            return iter(self.items)
        return iter_index_items(self.index)

    def seal(self) -> None:
        """Keep only what serving needs once the inode tree is built: the fill plan (prefetch and
        background chunk lists), not the items or the :class:`LayerIndex` (a million-entry layer's index
        costs hundreds of MB; the tree's files share its chunk lists)."""
        self._plan = (self.prefetch_chunks(), self.chunks_by_offset())
        self.items = []
        self.index = None

    async def read(
        self, fetcher: ChunkFetcher, store: Any, content: Any, file_size: int, off: int, size: int
    ) -> bytes:
        """Bytes ``[off, off+size)`` of a file of this layer (short at EOF).

        Raises:
            VerificationError, RegistryError, FormatError: fetching a lazy layer's chunk failed.
            NotInStore: a whole layer's tar was evicted from the store.
        """
        if self.source is not None:
            blob_chunks = self._plan[1] if self._plan is not None else ()
            return await fetcher.read(self.source, content, file_size, off, size, blob_chunks)
        assert self.tar_digest is not None
        fetcher.stats.cache_hits += 1
        return bytes(store.pread(self.tar_digest, content + off, max(0, min(size, file_size - off))))

    @property
    def lazy(self) -> bool:
        return self.source is not None

    def chunks_by_offset(self) -> list[Chunk]:
        """Every fetchable (non-zeros) chunk of the layer once per digest, in blob order."""
        if self._plan is not None:
            return self._plan[1]
        if self.index is None:
            return []
        seen: set[str] = set()
        out: list[Chunk] = []
        for _, node in self.index:
            for c in node.chunks:
                if not c.zeros and c.digest not in seen:
                    seen.add(c.digest)
                    out.append(c)
        out.sort(key=lambda c: c.compressed_offset)
        return out

    def prefetch_chunks(self) -> list[Chunk]:
        """Chunks needed first: everything before ``.prefetch.landmark`` (eStargz), the files prioritized
        before it, the TOC's prefetch list (``zsnapPrefetch`` in c/storage layers written by ``zsnap
        convert --prefetch-list``), and the :data:`RUNTIME_READS` files the layer has; [] with
        ``.no.prefetch.landmark``."""
        if self._plan is not None:
            return self._plan[0]
        idx = self.index
        if idx is None or idx.no_prefetch:
            return []
        chosen: dict[str, Chunk] = {}
        if idx.prefetch_landmark_offset is not None:
            for c in self.chunks_by_offset():
                if c.compressed_offset < idx.prefetch_landmark_offset:
                    chosen.setdefault(c.digest, c)
        runtime = [p for p in RUNTIME_READS if getattr(idx.nodes.get(p), "size", 0) <= RUNTIME_READ_MAX_SIZE]
        for path in [*idx.prefetch_paths, *runtime]:
            node = idx.nodes.get(path)
            for c in node.chunks if node is not None else ():
                if not c.zeros:
                    chosen.setdefault(c.digest, c)
        return sorted(chosen.values(), key=lambda c: c.compressed_offset)


def index_items(index: LayerIndex) -> list[Item]:
    """Convert a :class:`LayerIndex` to inode-table items (content = the file's chunk list)."""
    return list(iter_index_items(index))


def iter_index_items(index: LayerIndex) -> Iterator[Item]:
    """:func:`index_items`, one at a time (a big layer never has all its items in memory at once)."""
    major, minor = os.major, os.minor
    for path, node in index:
        if node.path != path:  # a second name of a hardlinked file
            yield Item(path, "hardlink", target=node.path)
            continue
        kind = node.type
        rdev = node.rdev
        yield Item(  # positional: built once per entry of every layer, the fields in Item's order
            path,
            kind,
            node.mode & 0o7777,
            node.uid,
            node.gid,
            node.size,
            node.mtime_ns,
            node.atime_ns,
            node.ctime_ns,
            major(rdev) if rdev else 0,
            minor(rdev) if rdev else 0,
            node.link_target,
            node.xattrs,  # read, never changed, by the inode builder
            node.chunks if kind == "reg" else None,
        )


def reads_lazily(desc: LayerDescriptor) -> bool:
    """True if :func:`open_layer` would serve ``desc`` lazily: its annotations or media type say where its
    TOC is (a TOC that then fails to verify still fails the open). Malformed annotations count as not
    lazy: the layer can still be unpacked whole."""
    try:
        location = toc_location_from_annotations(desc.annotations, desc.media_type, blob_size=desc.size)
    except FormatError:
        return False
    return location is not None


async def open_layer(
    client: Any,
    repository: str,
    desc: LayerDescriptor,
    *,
    store: Any,
    stats: MountStats,
    holder: str,
    scratch: Path,
    limits: Limits = DEFAULT_LIMITS,
    cpu_limiter: trio.CapacityLimiter | None = None,
    on_toc: Callable[[], None] | None = None,
) -> OpenedLayer:
    """Open ``desc`` for serving (see the module docstring).

    Args:
        scratch: a directory for download/decompression temp files (same file system as the store).
        limits: bounds on the layer's TOC or tar (entries, names, sizes); past them the layer is refused.
        cpu_limiter: the worker threads that decode and index the TOC (or the tar) take a token of it
            (None: trio's default), so that many layers can fetch at once while few parse at once.
        on_toc: called once a lazy layer's compressed TOC has arrived, before it is verified and parsed
            (the link is free from then on).

    Raises:
        FormatError: malformed annotations/footer/TOC, or names escaping the layer.
        VerificationError: TOC, blob or DiffID digest mismatch.
        RegistryError: fetching failed.
    """
    with error_context(layer=desc.digest):
        loc = toc_location_from_annotations(desc.annotations, desc.media_type, blob_size=desc.size)
        if loc is None:
            tar_digest, items = await fetch_whole_layer(
                client, repository, desc, store=store, stats=stats, holder=holder, scratch=scratch,
                limits=limits, cpu_limiter=cpu_limiter,
            )  # fmt: skip
            return OpenedLayer(desc=desc, items=items, tar_digest=tar_digest)
        return await _open_lazy(client, repository, desc, loc, stats, holder, limits, cpu_limiter, on_toc)


async def _fetch(
    client: RangeClient, repository: str, digest: str, rng: tuple[int, int], stats: MountStats
) -> bytes:
    t0 = trio.current_time()
    data = (await client.get_ranges(repository, digest, [rng]))[0]
    stats.record_fetch(len(data), trio.current_time() - t0)
    stats.toc_bytes += len(data)
    return data


async def _open_lazy(
    client: Any,
    repository: str,
    desc: LayerDescriptor,
    loc: TocLocation,
    stats: MountStats,
    holder: str,
    limits: Limits,
    cpu_limiter: trio.CapacityLimiter | None,
    on_toc: Callable[[], None] | None,
) -> OpenedLayer:
    size = desc.size
    tail_start = size
    tail = b""
    if loc.needs_footer:
        tail_start = max(0, size - TAIL_SIZE)
        tail = await _fetch(client, repository, desc.digest, (tail_start, size), stats)
        footer = parse_footer(tail, size)
        if footer.dialect is Dialect.ESTARGZ_GZIP:
            if loc.dialect is not Dialect.ESTARGZ_GZIP:
                raise FormatError(f"a {loc.dialect.value} layer has a gzip eStargz footer")
            toc_range = (footer.toc_offset, footer.toc_offset + footer.toc_length)  # 51- or 47-byte footer
        else:
            loc = loc.with_footer(footer)
            toc_range = (loc.offset, loc.offset + loc.length)
    else:
        toc_range = (loc.offset, loc.offset + loc.length)
    if not 0 <= toc_range[0] < toc_range[1] <= size:
        raise FormatError(f"TOC range {toc_range} lies outside the blob ({size} bytes)")
    if toc_range[1] - toc_range[0] > limits.max_toc_compressed_size:  # refused before it is fetched
        raise UnsupportedFormat(
            f"compressed TOC of {toc_range[1] - toc_range[0]} bytes exceeds the "
            f"{limits.max_toc_compressed_size}-byte cap (max-toc-compressed-size)"
        )
    if toc_range[0] >= tail_start and tail:
        compressed = tail[toc_range[0] - tail_start : toc_range[1] - tail_start]
    else:
        compressed = await _fetch(client, repository, desc.digest, toc_range, stats)
    if on_toc is not None:
        on_toc()

    def parse() -> LayerIndex:  # worker thread: a big TOC is seconds of CPU
        toc = decode_and_verify_toc(compressed, loc, limits=limits)
        return build_index(toc, loc.dialect, size, toc_offset=toc_range[0], limits=limits)

    index = await trio.to_thread.run_sync(parse, limiter=cpu_limiter)
    source = BlobSource(
        client=client,
        repository=repository,
        digest=desc.digest,
        codec="gzip" if loc.dialect is Dialect.ESTARGZ_GZIP else "zstd",
        label=desc.digest,
        holder=holder,
    )
    return OpenedLayer(desc=desc, items=[], source=source, index=index, dialect=loc.dialect)
