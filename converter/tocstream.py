"""TOC model → compressed TOC JSON, slice by slice, in bounded memory (both dialects).

:class:`TocStreamer` feeds slices of :class:`~fs.format.TocEntry` to :func:`fs.format.serialize_toc`
(the one serializer zsnap has) and splices the results into the document layout the empty document
shows (compact for c/storage, tab-indented for eStargz), compressing as it goes into a single zstd frame.
The output is byte-identical to ``zstd(serialize_toc(Toc(version, all_entries, tar_split_digest)))``;
should the serializer's layout ever surprise the splicer, :meth:`TocStreamer.finish` falls back to
serializing the whole TOC at once.

With ``background=True`` the slices are serialized on a helper thread while the conversion runs (the
caller hands over a slice once the writer has filled in its offsets), so only the last slice is left
for the end of the conversion.

Also here: how Go's JSON encoder shows non-UTF-8 names (:func:`go_text`) and a cache of RFC 3339 times.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import hashlib
from collections.abc import Sequence

import zstandard

from fs.format import Dialect, Toc, TocEntry, ns_to_rfc3339, serialize_toc

__all__ = [
    "TimeText",
    "TocStreamer",
    "compress_toc",
    "go_text",
]


def _go_replace(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler replacing each invalid byte with U+FFFD, as Go's JSON encoder does."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error("zsnap-go-replace", _go_replace)


def go_text(raw: bytes) -> str:
    """``raw`` as Go's JSON encoder shows a Go string holding those bytes (invalid UTF-8 → U+FFFD)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "zsnap-go-replace")


class TimeText:
    """ns → RFC 3339 text, cached (layers repeat the same few mtimes)."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, ns: int) -> str:
        text = self._cache.get(ns)
        if text is None:
            if len(self._cache) > 65536:
                self._cache.clear()
            text = self._cache[ns] = ns_to_rfc3339(ns)
        return text


class _Fallback(Exception):
    """The serializer's layout is not the one the splicer expects."""


class TocStreamer:
    """Serialize and compress a TOC slice by slice (see module docstring). Not thread-safe itself:
    call :meth:`add` from one thread at a time; ``background`` serializes on one helper thread, in order.
    """

    def __init__(self, dialect: Dialect, level: int, *, version: int = 1, background: bool = False) -> None:
        self._dialect = dialect
        self._version = version
        self._indented = dialect.is_estargz
        head, sep, tail = serialize_toc(Toc(version, [], ""), dialect).partition(b"[]")
        self._head0, self._tail0 = head + b"[", b"]" + tail
        self._broken = not sep
        self._cobj = zstandard.ZstdCompressor(level=level).compressobj()
        self._level = level
        self._out: list[bytes] = []
        self._digest = hashlib.sha256()
        self.length = 0
        self._slices = 0
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zsnap-toc") if background else None
        )
        self._futures: list[concurrent.futures.Future[None]] = []
        self._emit(self._head0)

    def _emit(self, data: bytes) -> None:
        self._out.append(self._cobj.compress(data))
        self._digest.update(data)
        self.length += len(data)

    def add(self, entries: Sequence[TocEntry]) -> None:
        """Append ``entries`` (their fields must be final)."""
        if not entries:
            return
        entries = list(entries)
        if self._pool is not None:
            self._futures.append(self._pool.submit(self._add, entries))
        else:
            self._add(entries)

    def _add(self, entries: list[TocEntry]) -> None:
        if self._broken:
            return
        part = serialize_toc(Toc(self._version, entries, ""), self._dialect)
        if not (part.startswith(self._head0) and part.endswith(self._tail0)):
            self._broken = True
            return
        middle = part[len(self._head0) : len(part) - len(self._tail0)]
        if self._indented:  # "\n" + entries + "\n\t"
            middle = middle[1:-2]
            self._emit(b"\n" + middle if not self._slices else b",\n" + middle)
        else:
            self._emit(middle if not self._slices else b"," + middle)
        self._slices += 1

    def finish(
        self, tar_split_digest: str, all_entries: Sequence[TocEntry], prefetch: Sequence[str] = ()
    ) -> tuple[bytes, int, str]:
        """Close the document; return (compressed TOC, uncompressed length, ``sha256:`` of the JSON).

        ``all_entries`` is only used by the fallback (the whole TOC serialized at once); ``prefetch`` is
        the TOC's prefetch list (c/storage schema only).
        """
        try:
            for future in self._futures:
                future.result()
        finally:
            self.close()
        empty = Toc(self._version, [], tar_split_digest, prefetch=list(prefetch))
        head, _, tail = serialize_toc(empty, self._dialect).partition(b"[]")
        if self._broken or head + b"[" != self._head0:
            whole = Toc(self._version, list(all_entries), tar_split_digest, prefetch=list(prefetch))
            data = serialize_toc(whole, self._dialect)
            compressed = zstandard.ZstdCompressor(level=self._level).compress(data)
            return compressed, len(data), "sha256:" + hashlib.sha256(data).hexdigest()
        self._emit(b"\n\t]" + tail if self._indented and self._slices else b"]" + tail)
        self._out.append(self._cobj.flush())
        return b"".join(self._out), self.length, "sha256:" + self._digest.hexdigest()

    def close(self) -> None:
        """Stop the helper thread (idempotent); pending slices are dropped if called before finish."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


_SLICE = 2048


def compress_toc(toc: Toc, dialect: Dialect, level: int) -> tuple[bytes, int, str]:
    """``zstd(serialize_toc(toc, dialect))`` in bounded memory; returns (compressed, length, JSON digest)."""
    streamer = TocStreamer(dialect, level, version=toc.version)
    for start in range(0, len(toc.entries), _SLICE):
        streamer.add(toc.entries[start : start + _SLICE])
    return streamer.finish(toc.tar_split_digest, toc.entries, toc.prefetch)
