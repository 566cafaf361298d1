"""Uncompressed tar → stargz-snapshotter "zstdchunked" blob (Dialect B, FORMAT.md §2.1–2.5).

What ``ctr-remote images convert --zstdchunked`` / ``nerdctl image convert --zstdchunked`` write, and what
this module writes:

* The decompressed stream is a *new* tar: a landmark file first (``.no.prefetch.landmark``), or, with a
  prefetch list, the prioritized entries (plus their parent directories and hardlink targets) followed by
  ``.prefetch.landmark``; then every other entry; **no end-of-archive blocks**. Landmarks already in the
  input are dropped. So the diff_id changes: :attr:`ChunkedLayer.diff_id` is the new one and the caller
  must rewrite the image config's ``rootfs.diff_ids``.
* Each entry's header bytes go into the currently open zstd frame; every 4 MiB payload chunk starts a new
  frame at its ``offset``; the last chunk's frame stays open and also takes the payload padding and the
  following headers, until the next payload.
* Then SF(zstd(eStargz TOC JSON, tab-indented)) and SF(40-byte footer ``GnUlInUx``); annotations
  ``containerd.io/snapshot/stargz/toc.digest`` (sha256 of the TOC JSON),
  ``io.containers.estargz.uncompressed-size`` and the old-prefix ``io.containers.zstd-chunked.*`` keys.

TOC entries follow ``estargz.Writer``: ``reg`` entries carry ``digest`` (also the empty-string digest for
empty files) and ``chunkDigest``; ``chunkSize`` is set on every full 4 MiB chunk and omitted on a
shorter last one ("to the end of the file"); ``modtime`` is UTC rounded to the second, omitted at the
Unix epoch; ``userName``/``groupName`` only when they change for a uid/gid; sizes only on ``reg``,
device numbers only on ``char``/``block``.

Deliberate difference: entry headers are copied verbatim from the source (extension headers included)
instead of being re-encoded by Go's ``tar.Writer``; any tar reader sees the same entries, but the bytes,
and hence the diff_id, differ from ctr-remote's output for the same input. Prioritized entries keep their
relative tar order (stargz sorts them by list order); the prefetch range ``[0, landmark.offset)`` is the
same set of files.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from converter.chunked import LAYER_MEDIA_TYPE, ChunkedLayer
from converter.frames_pipeline import FramePipeline
from converter.tarheader import TarEntry
from converter.tarstream import TarStreamReader
from converter.tocstream import compress_toc, go_text
from converter.workers import InputHasher, short_switch_interval
from fs.digest import EMPTY_SHA256
from fs.errors import ConversionError, error_context
from fs.format import Dialect, Footer, Toc, TocEntry, footer_bytes, ns_to_rfc3339, skippable_frame
from fs.format.annotations import annotations_for
from fs.format.paths import LayerNames
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "LANDMARK_CONTENT",
    "NO_PREFETCH_LANDMARK",
    "PREFETCH_LANDMARK",
    "STARGZ_CHUNK_SIZE",
    "landmark_header",
    "write_stargz_zstd",
]

NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
PREFETCH_LANDMARK = ".prefetch.landmark"
LANDMARK_CONTENT = b"\x0f"
STARGZ_CHUNK_SIZE = 4 << 20
# Dropped from the input like the landmarks: an old eStargz TOC member would be a stale file in the tree.
_LANDMARKS = frozenset({NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, "stargz.index.json"})


def clean_name(name: str) -> str:
    """eStargz ``cleanEntryName``: ``path.Clean("/" + name)`` without the leading slash."""
    return posixpath.normpath("/" + name).lstrip("/")


def landmark_header(name: str) -> bytes:
    """The USTAR header Go's ``tar.Writer`` writes for a landmark (size 1, everything else zero)."""
    block = bytearray(512)
    block[0 : len(name)] = name.encode("ascii")
    for start, width, value in ((100, 8, 0), (108, 8, 0), (116, 8, 0), (124, 12, 1), (136, 12, 0)):
        block[start : start + width] = b"%0*o\x00" % (width - 1, value)
    block[156:157] = b"0"
    block[257:265] = b"ustar\x0000"
    block[329:345] = b"0000000\x000000000\x00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


class _Emitter:
    """Builds the new tar stream in Dialect B frames and the eStargz TOC model."""

    def __init__(self, dst: BinaryIO, *, level: int, threads: int) -> None:
        self.pipe = FramePipeline(dst, level=level, threads=threads, on_frame=_on_frame)
        self.hasher = InputHasher()
        self.level = level
        self.entries: list[TocEntry] = []
        self.frame: list[bytes | memoryview] = []
        self.frame_tag: TocEntry | None = None
        self.size = 0
        self._unames: dict[int, str] = {}
        self._gnames: dict[int, str] = {}

    def _put(self, data: bytes | memoryview) -> None:
        self.frame.append(data)
        self.hasher(data)
        self.size += len(data)

    def _flush(self) -> None:
        if self.frame:
            data = self.frame[0] if len(self.frame) == 1 else b"".join(self.frame)
            self.pipe.frame(data, self.frame_tag)
            self.frame, self.frame_tag = [], None

    def _changed(self, names: dict[int, str], uid: int, name: str) -> str:
        if not name or names.get(uid) == name:
            return ""
        names[uid] = name
        return name

    def landmark(self, name: str) -> None:
        """Add a landmark file (1 byte, 0x0f) as its own entry."""
        digest = "sha256:" + hashlib.sha256(LANDMARK_CONTENT).hexdigest()
        entry = TocEntry(type="reg", name=name, size=1, digest=digest, chunk_digest=digest)
        self.entries.append(entry)
        self._put(landmark_header(name))
        self._flush()
        self.frame_tag = entry
        self._put(LANDMARK_CONTENT)
        self._put(bytes(511))

    def entry(self, e: TarEntry, header: bytes, reader: TarStreamReader) -> None:
        """Add one source entry: its header bytes verbatim, its payload in 4 MiB chunks."""
        toc = TocEntry(
            type=e.type,
            name=e.name if e.name.isascii() else go_text(e.name_raw),
            link_name=(e.link_name if e.link_name.isascii() else go_text(e.link_name_raw))
            if e.type in ("hardlink", "symlink")
            else "",
            mode=e.mode,
            size=e.size if e.type == "reg" else 0,
            uid=e.uid,
            gid=e.gid,
            user_name=self._changed(self._unames, e.uid, e.uname),
            group_name=self._changed(self._gnames, e.gid, e.gname),
            modtime=_modtime(e.mtime_ns),
            dev_major=e.dev_major if e.type in ("char", "block") else 0,
            dev_minor=e.dev_minor if e.type in ("char", "block") else 0,
            xattrs={
                k if k.isascii() else go_text(k.encode("utf-8", "surrogateescape")): v
                for k, v in e.xattrs.items()
            },
        )
        self.entries.append(toc)
        self._put(header)
        if e.type == "reg" and not e.payload_size:
            toc.digest = EMPTY_SHA256
        if not e.payload_size:
            return
        self._flush()
        file_hash = hashlib.sha256()
        entry = toc
        written = 0
        total = e.payload_size
        while True:
            chunk = reader.read_payload(STARGZ_CHUNK_SIZE)
            file_hash.update(chunk)
            entry.chunk_offset = written
            entry.chunk_digest = "sha256:" + hashlib.sha256(chunk).hexdigest()
            if len(chunk) == STARGZ_CHUNK_SIZE:
                entry.chunk_size = STARGZ_CHUNK_SIZE
            written += len(chunk)
            self.frame_tag = entry
            self._put(chunk)
            if written == total:
                break
            self._flush()
            entry = TocEntry(type="chunk", name=toc.name)
            self.entries.append(entry)
        toc.digest = "sha256:" + file_hash.hexdigest()
        self._put(bytes(-total % 512))

    def finish(self) -> tuple[Footer, list[bytes], Toc, str, str]:
        """Close the data region; return (footer, tail pieces, toc, toc digest, compressed-TOC digest)."""
        self._flush()
        data_size = self.pipe.drain()
        toc = Toc(version=1, entries=self.entries)
        toc_c, toc_len, toc_digest = compress_toc(toc, Dialect.STARGZ_ZSTD, self.level)
        footer = Footer(Dialect.STARGZ_ZSTD, data_size + 8, len(toc_c), toc_len)
        tail = [skippable_frame(toc_c), footer_bytes(footer)]
        return footer, tail, toc, toc_digest, "sha256:" + hashlib.sha256(toc_c).hexdigest()

    def abort(self) -> None:
        self.pipe.abort()
        self.hasher.close()


def _on_frame(tag: TocEntry, start: int, end: int, _digest: str | None) -> None:
    tag.offset = start


def _modtime(ns: int) -> str:
    """eStargz ``formatModtime``: UTC, rounded to the second, "" at the Unix epoch."""
    seconds = (ns + 500_000_000) // 1_000_000_000
    return "" if seconds == 0 else ns_to_rfc3339(seconds * 1_000_000_000)


def _entries(src: BinaryIO, limits: Limits) -> Iterator[tuple[TarEntry, bytes, TarStreamReader]]:
    """Source entries with their own header bytes (the raw bytes minus the previous entry's padding)."""
    reader = TarStreamReader(src, names=LayerNames(limits))
    pad = 0
    for e in reader:
        yield e, e.raw[pad:], reader
        pad = -e.payload_size % 512


def _prioritized(src: BinaryIO, prefetch: Sequence[str], limits: Limits) -> set[str]:
    """Cleaned names to put first: the listed files, their parent dirs and hardlink targets (if present)."""
    index: dict[str, tuple[str, str]] = {}
    for e, _, _ in _entries(src, limits):
        index[clean_name(e.name)] = (e.type, clean_name(e.link_name) if e.type == "hardlink" else "")
    chosen: set[str] = set()

    def move(name: str) -> None:
        parent = posixpath.dirname(name)
        while parent:
            if parent in index:
                chosen.add(parent)
            parent = posixpath.dirname(parent)
        chosen.add(name)

    for path in prefetch:
        name = clean_name(path)
        if name not in index:
            continue  # WithAllowPrioritizeNotFound
        kind, target = index[name]
        if kind == "hardlink" and target in index:
            move(target)
        move(name)
    return chosen


def _copy(
    emitter: _Emitter,
    stream: BinaryIO,
    wanted: Callable[[str], bool],
    progress: Callable[[int, int], None] | None,
    limits: Limits,
) -> None:
    """Copy the wanted entries of ``stream`` (by cleaned name), dropping landmarks already there."""
    for e, header, reader in _entries(stream, limits):
        name = clean_name(e.name)
        if name in _LANDMARKS or not wanted(name):
            continue
        with error_context(path=e.name):
            emitter.entry(e, header, reader)
        if progress:
            progress(emitter.size, emitter.pipe.written)


def write_stargz_zstd(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    level: int = 3,
    prefetch: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    threads: int = 2,
    src_factory: Callable[[], BinaryIO] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ChunkedLayer:
    """Write the stargz-snapshotter zstdchunked form of the tar read from ``src`` (see module docstring).

    Args:
        prefetch: paths to put before ``.prefetch.landmark``; needs ``src_factory`` (the source is read
            three times: to find the entries, to copy the prioritized ones, to copy the rest).
        progress: ``progress(bytes_written_uncompressed, bytes_written_compressed)``, on this thread.
        limits: bounds on the source's names (a name past them is refused with the entry named).

    Returns:
        The layer; ``diff_id``/``uncompressed_size`` describe the *new* tar stream.

    Raises:
        FormatError / UnsupportedFormat: malformed or unconvertible source tar (names the entry).
        ConversionError: a prefetch list without ``src_factory``, or compression/writing failed.
    """
    if prefetch and src_factory is None:
        raise ConversionError("ordering prioritized files first needs src_factory to re-read the source")
    with short_switch_interval():
        emitter = _Emitter(dst, level=level, threads=threads)
        try:
            if prefetch:
                assert src_factory is not None
                chosen = _prioritized(src, prefetch, limits)
                with contextlib.closing(src_factory()) as first:
                    _copy(emitter, first, chosen.__contains__, progress, limits)
                emitter.landmark(PREFETCH_LANDMARK)
                with contextlib.closing(src_factory()) as second:
                    _copy(emitter, second, lambda name: name not in chosen, progress, limits)
            else:
                emitter.landmark(NO_PREFETCH_LANDMARK)
                _copy(emitter, src, lambda name: True, progress, limits)
            footer, tail, toc, toc_digest, compressed_digest = emitter.finish()
            for piece in tail:
                emitter.pipe.raw(piece)
            totals = emitter.pipe.close()
            diff_id = emitter.hasher.close()
        except BaseException:
            emitter.abort()
            raise
    annotations = annotations_for(
        Dialect.STARGZ_ZSTD,
        footer,
        toc_digest,
        compressed_toc_digest=compressed_digest,
        uncompressed_size=emitter.size,
    )
    if progress:
        progress(emitter.size, totals.compressed_size)
    return ChunkedLayer(
        digest=totals.compressed_sha256,
        size=totals.compressed_size,
        diff_id=diff_id,
        uncompressed_size=emitter.size,
        toc_digest=toc_digest,
        annotations=annotations,
        toc=toc,
        media_type=LAYER_MEDIA_TYPE,
        prefetch=tuple(prefetch),
        dialect=Dialect.STARGZ_ZSTD,
    )
