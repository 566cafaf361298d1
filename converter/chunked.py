"""Uncompressed tar stream → zstd:chunked blob, streaming and in parallel (FORMAT.md §1.1–1.6, §5).

:func:`write_zstd_chunked` is the layer writer. For the c/storage dialect (``Dialect.CSTORAGE``, the
default) it produces exactly the layout c/storage's ``writeZstdChunkedStream`` does:

* the raw bytes before each entry's payload (padding, extension headers, header) go, verbatim, into a
  "header" frame that is closed when a payload starts;
* every payload chunk is its own zstd frame (content-defined ~64 KiB chunks, zero runs ≥ 1024 bytes as
  ``zeros`` chunks, see :mod:`converter.chunker`);
* the bytes after the last entry (end-of-archive blocks, record padding) close the data region;
* then SF(zstd TOC JSON), SF(zstd tar-split JSON lines), SF(64-byte footer ``GNUlInUx``).

So ``zstd -d`` of the blob is the input tar byte for byte and the diff_id does not change. TOC entries
are what c/storage writes: a ``reg`` entry carries chunk 0's ``chunkSize``/``chunkDigest``/``chunkType``
only when the file has more than one chunk, ``chunk`` entries follow it, ``endOffset`` closes the file,
``digest`` covers the whole file and is omitted for empty files. ``Dialect.CSTORAGE_V1`` writes the old
c/storage ≤ 1.46 layout (no tar-split, 40-byte footer, ``io.containers.*`` keys). ``Dialect.STARGZ_ZSTD``
(stargz-snapshotter's ``--zstdchunked``) is written by :mod:`converter.stargz_writer`.

Threads (2 cores, the GIL): the calling thread parses the tar, cuts chunks, hashes them (sha256 per chunk
and per file, CRC-64 for tar-split) and builds the TOC model and tar-split lines; a
:class:`~converter.frames_pipeline.FramePipeline` compresses ~1 MiB batches of frames on ``threads``
workers (one GIL release per batch) and a writer thread writes them in order, filling in offsets and
hashing the output; helper threads hash the input (diff_id), compress the tar-split and serialize the
TOC in slices. Memory stays bounded: ≤ 32 MiB of queued frame data, one 8 MiB chunker window, the TOC
model (~0.5 KiB per entry) and the compressed TOC and tar-split. While a conversion runs, the
interpreter's switch interval is lowered to 1 ms (:func:`converter.workers.short_switch_interval`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import zstandard

from converter.chunker import SINGLE_CHUNK_MAX, Chunker
from converter.frames_pipeline import FramePipeline
from converter.tarsplit import TarSplitPacker, crc64_iso
from converter.tarstream import TarEntry, TarStreamReader
from converter.tocstream import TimeText, TocStreamer, go_text
from converter.workers import InputHasher, OrderedCompressor, short_switch_interval
from fs.errors import ConversionError, ZsnapError
from fs.format import Dialect, Footer, Toc, TocEntry, footer_bytes, skippable_frame
from fs.format.annotations import annotations_for
from fs.format.hints import prefetch_hint
from fs.format.paths import LayerNames
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "LAYER_MEDIA_TYPE",
    "ChunkedLayer",
    "write_zstd_chunked",
]

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"

_HEADER_FRAME_LIMIT = 4 << 20
_PROGRESS_STEP = 8 << 20
#: Entries handed to the background TOC serializer at a time.
_TOC_SLICE = 4096


@dataclasses.dataclass(frozen=True)
class ChunkedLayer:
    """The result of converting one layer.

    Attributes:
        digest: ``sha256:`` of the blob written to ``dst``; ``size`` its length.
        diff_id: ``sha256:`` of the blob's decompressed stream (for c/storage dialects: the input tar's);
            ``uncompressed_size`` its length.
        toc_digest: the dialect's trust anchor (c/storage: sha256 of the compressed TOC; stargz: of the
            TOC JSON).
        annotations: the layer-descriptor annotations the dialect's writer emits.
        toc: the TOC model as written.
        media_type: the layer media type (plain ``tar+zstd``; zstd:chunked has no own type).
        prefetch: the prefetch list passed in (c/storage dialects record it in the TOC as
            ``zsnapPrefetch``; the stargz dialect by entry order and ``.prefetch.landmark``).
        dialect: the dialect written.
    """

    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    toc_digest: str
    annotations: dict[str, str]
    toc: Toc
    media_type: str
    prefetch: tuple[str, ...]
    dialect: Dialect = Dialect.CSTORAGE


def _go_key(key: str) -> str:
    return key if key.isascii() else go_text(key.encode("utf-8", "surrogateescape"))


def _on_frame(tag: tuple[TocEntry, TocEntry | None], start: int, end: int, _digest: str | None) -> None:
    """Writer-thread callback: a payload frame's compressed offset; ``reg`` set on a file's last frame."""
    entry, reg = tag
    entry.offset = start
    if reg is not None:
        reg.end_offset = end


class _Writer:
    """One Dialect A / CSTORAGE_V1 conversion (see module docstring)."""

    def __init__(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        *,
        level: int,
        dialect: Dialect,
        threads: int,
        progress: Callable[[int, int], None] | None,
        prefetch: Sequence[str] = (),
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.prefetch = list(prefetch)
        self.input_hash = InputHasher()
        self.reader = TarStreamReader(src, on_read=self.input_hash, names=LayerNames(limits))
        self.dialect = dialect
        self.level = level
        self.progress = progress
        self.pipe = FramePipeline(dst, level=level, threads=threads, on_frame=_on_frame)
        self.packer = TarSplitPacker() if dialect is Dialect.CSTORAGE else None
        self.tar_split = OrderedCompressor(level) if self.packer else None
        self.toc_stream = TocStreamer(dialect, level, background=True)
        self.chunker = Chunker()
        self.entries: list[TocEntry] = []
        self._toc_fed = 0
        self.header: list[bytes] = []
        self.header_len = 0
        self.time = TimeText()
        self._next_progress = _PROGRESS_STEP

    # ---------------------------------------------------------------------------------------- data

    def run(self) -> ChunkedLayer:
        reader = self.reader
        for entry in reader:
            try:
                self._entry(entry)
            except ZsnapError as exc:  # error_context(path=...), without a generator per entry
                if not exc.path:
                    exc.path = entry.name
                raise
            if len(self.entries) - self._toc_fed >= _TOC_SLICE:
                self._feed_toc()
            if reader.offset >= self._next_progress and self.progress:
                self._next_progress = reader.offset + _PROGRESS_STEP
                self.progress(reader.offset, self.pipe.written)
        for piece in reader.trailer():
            self._header(piece)
            if self.packer:
                self.tar_split.add(self.packer.segment(piece))  # type: ignore[union-attr]
        self._flush_header()
        data_size = self.pipe.drain()
        layer, tail = self._finish(data_size, reader.offset)
        for piece in tail:
            self.pipe.raw(piece)
        totals = self.pipe.close()
        if totals.uncompressed_size != reader.offset:
            raise ConversionError(
                f"internal error: wrote {totals.uncompressed_size} of {reader.offset} input bytes"
            )
        if self.progress:
            self.progress(reader.offset, totals.compressed_size)
        diff_id = self.input_hash.close()
        if self.input_hash.size != reader.offset:
            raise ConversionError(f"internal error: hashed {self.input_hash.size} of {reader.offset} bytes")
        return dataclasses.replace(
            layer, digest=totals.compressed_sha256, size=totals.compressed_size, diff_id=diff_id
        )

    def _feed_toc(self) -> None:
        """Hand the entries queued so far to the TOC serializer once the writer has filled their offsets
        (the callback runs on the writer thread after their frames)."""
        pending = self.entries[self._toc_fed :]
        self._toc_fed = len(self.entries)
        self.pipe.call(lambda: self.toc_stream.add(pending))

    def _header(self, raw: bytes) -> None:
        self.header.append(raw)
        self.header_len += len(raw)
        if self.header_len >= _HEADER_FRAME_LIMIT:
            self._flush_header()

    def _flush_header(self) -> None:
        if self.header_len:
            header = self.header
            self.pipe.frame(header[0] if len(header) == 1 else b"".join(header))
            self.header, self.header_len = [], 0

    def _entry(self, e: TarEntry) -> None:
        self._header(e.raw)
        time = self.time
        toc = TocEntry(
            type=e.type,
            name=e.name if e.name.isascii() else go_text(e.name_raw),
            link_name=e.link_name if e.link_name.isascii() else go_text(e.link_name_raw),
            mode=e.mode,
            size=e.size,
            uid=e.uid,
            gid=e.gid,
            modtime=time(e.mtime_ns),
            accesstime=time(e.atime_ns) if e.atime_ns is not None else "",
            changetime=time(e.ctime_ns) if e.ctime_ns is not None else "",
            dev_major=e.dev_major,
            dev_minor=e.dev_minor,
            xattrs={_go_key(k): v for k, v in e.xattrs.items()} if e.xattrs else {},
        )
        self.entries.append(toc)
        crc = None
        if e.payload_size:
            self._flush_header()
            crc = self._payload(e, toc)
        elif e.size:
            crc = 0  # header-only type with a size field: tar-split checksums the (empty) payload
        if self.packer:
            packer = self.packer
            self.tar_split.add(packer.segment(e.raw) + packer.file(e.name_raw, e.size, crc))  # type: ignore[union-attr]

    def _payload(self, e: TarEntry, reg: TocEntry) -> int:
        """Chunk, hash and queue the payload of ``reg``; return its CRC-64/ISO.

        Digests are computed on this thread, not on the compression pool: a pool thread that released
        the GIL for every chunk would wait for this thread's Python stretches to get it back (up to the
        interpreter's switch interval each time), while this thread gets it back from the other threads
        within microseconds. The pool then needs the GIL once per batch.
        """
        frame = self.pipe.frame
        sha256 = hashlib.sha256
        size = e.payload_size
        if size <= SINGLE_CHUNK_MAX:  # small file: one read, usually one chunk
            payload = self.reader.read_payload(size)
            bounds = self.chunker.split(payload)
            if len(bounds) == 1:
                reg.digest = "sha256:" + sha256(payload).hexdigest()
                frame(payload, (reg, reg))
                return crc64_iso(payload)
            view = memoryview(payload)
            pieces: Iterator[tuple[bytes | memoryview, bool]] = iter(
                [(view[start:end], zeros) for start, end, zeros in bounds]
            )
        else:
            pieces = self.chunker.stream(self.reader.read_payload, size)
        prev, prev_zeros = next(pieces)
        crc = crc64_iso(prev)
        position = 0
        file_hash = None
        entry = reg
        for data, zeros in pieces:
            size = len(prev)
            if file_hash is None:  # the first chunk of a multi-chunk file
                file_hash = sha256(prev)
                reg.chunk_size = size
                reg.chunk_type = "zeros" if prev_zeros else ""
            else:
                file_hash.update(prev)
            entry.chunk_digest = "sha256:" + sha256(prev).hexdigest()
            frame(prev, (entry, None))
            position += size
            entry = TocEntry(
                type="chunk",
                name=reg.name,
                chunk_offset=position,
                chunk_size=len(data),
                chunk_type="zeros" if zeros else "",
            )
            self.entries.append(entry)
            crc = crc64_iso(data, crc)
            prev, prev_zeros = data, zeros
        if file_hash is None:
            reg.digest = "sha256:" + sha256(prev).hexdigest()
        else:
            file_hash.update(prev)
            entry.chunk_digest = "sha256:" + sha256(prev).hexdigest()
            reg.digest = "sha256:" + file_hash.hexdigest()
        frame(prev, (entry, reg))
        return crc

    # ------------------------------------------------------------------------------------- trailer

    def _finish(self, data_size: int, uncompressed_size: int) -> tuple[ChunkedLayer, list[bytes]]:
        """Build TOC, tar-split and footer for a data region of ``data_size`` bytes; return the layer
        (digest/size/diff_id still to fill) and the tail to append."""
        tar_split_c = self.tar_split.finish() if self.tar_split else b""
        tar_split_len = self.tar_split.size if self.tar_split else 0
        tar_split_digest = "sha256:" + hashlib.sha256(tar_split_c).hexdigest() if self.tar_split else ""
        toc = Toc(version=1, entries=self.entries, tar_split_digest=tar_split_digest, prefetch=self.prefetch)
        self.toc_stream.add(self.entries[self._toc_fed :])
        toc_c, toc_len, _ = self.toc_stream.finish(tar_split_digest, self.entries, self.prefetch)
        toc_digest = "sha256:" + hashlib.sha256(toc_c).hexdigest()
        toc_offset = data_size + 8
        tail = [skippable_frame(toc_c)]
        if self.tar_split:
            ts_offset = toc_offset + len(toc_c) + 8
            tail.append(skippable_frame(tar_split_c))
            footer = Footer(
                Dialect.CSTORAGE, toc_offset, len(toc_c), toc_len, ts_offset, len(tar_split_c),
                tar_split_len,
            )  # fmt: skip
        else:
            footer = Footer(self.dialect, toc_offset, len(toc_c), toc_len)
        tail.append(footer_bytes(footer))
        annotations = annotations_for(self.dialect, footer, toc_digest)
        annotations = dict(sorted((annotations | prefetch_hint(self.entries, self.prefetch)).items()))
        layer = ChunkedLayer(
            digest="",
            size=0,
            diff_id="",
            uncompressed_size=uncompressed_size,
            toc_digest=toc_digest,
            annotations=annotations,
            toc=toc,
            media_type=LAYER_MEDIA_TYPE,
            prefetch=(),
            dialect=self.dialect,
        )
        return layer, tail

    def abort(self) -> None:
        self.pipe.abort()
        self.input_hash.close()
        self.toc_stream.close()
        if self.tar_split:
            self.tar_split.abort()


def write_zstd_chunked(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    level: int = 3,
    dialect: Dialect = Dialect.CSTORAGE,
    prefetch: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    threads: int = 2,
    src_factory: Callable[[], BinaryIO] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ChunkedLayer:
    """Convert the uncompressed tar read from ``src`` into a zstd:chunked blob written to ``dst``.

    Args:
        src: the layer as an uncompressed tar stream, read sequentially once (need not be seekable).
        dst: binary writable, written sequentially; not closed.
        level: zstd level for data, TOC and tar-split frames.
        dialect: ``CSTORAGE`` (default, c/storage ≥ 1.50), ``CSTORAGE_V1`` (c/storage ≤ 1.46) or
            ``STARGZ_ZSTD`` (stargz-snapshotter ``--zstdchunked``; rewrites the tar, see
            :mod:`converter.stargz_writer`).
        prefetch: paths a workload reads first. c/storage dialects record them in the TOC
            (``zsnapPrefetch``, see :class:`fs.format.Toc`) and keep the tar order (the diff_id must not
            change); ``STARGZ_ZSTD`` puts them first, then ``.prefetch.landmark`` (needs ``src_factory``).
        progress: called on this thread as ``progress(input_bytes_read, output_bytes_written)`` every
            few MiB.
        threads: compression threads.
        src_factory: opens the source again from the start (``STARGZ_ZSTD`` with a prefetch list reads
            the source twice).
        limits: bounds on the source's names (a name past them is refused with the entry named).

    Returns:
        :class:`ChunkedLayer` describing the blob; for c/storage dialects ``diff_id`` equals the sha256 of
        the input.

    Raises:
        FormatError: the tar stream is malformed (the message names the entry and the offset);
            UnsupportedFormat for entries that cannot be represented (sparse files, duplicates, ...).
        ConversionError: compression or writing failed (``__cause__`` holds the reason).
    """
    if dialect is Dialect.STARGZ_ZSTD:
        from converter.stargz_writer import write_stargz_zstd

        return write_stargz_zstd(
            src, dst, level=level, prefetch=prefetch, progress=progress, threads=threads,
            src_factory=src_factory, limits=limits,
        )  # fmt: skip
    if dialect not in (Dialect.CSTORAGE, Dialect.CSTORAGE_V1):
        raise ConversionError(f"write_zstd_chunked cannot write the {dialect.value} dialect")
    with short_switch_interval():
        writer = _Writer(
            src,
            dst,
            level=level,
            dialect=dialect,
            threads=threads,
            progress=progress,
            prefetch=prefetch,
            limits=limits,
        )
        try:
            layer = writer.run()
        except BaseException as exc:
            writer.abort()
            if isinstance(exc, zstandard.ZstdError):
                raise ConversionError(f"zstd compression failed: {exc}") from exc
            raise
    return dataclasses.replace(layer, prefetch=tuple(prefetch))
