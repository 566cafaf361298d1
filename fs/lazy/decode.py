"""Decoding a fetched chunk: compressed range -> exactly the chunk's bytes -> verified against its digest.

Pure functions (no I/O), run in worker threads by :mod:`fs.lazy.fetcher`. zstd decoding continues across
frames and skips skippable frames (Dialect B ranges run up to the next chunk and may hold header frames,
ignored once ``size`` bytes are out); gzip decoding continues across members (eStargz). One
``ZstdDecompressor`` per thread is reused across chunks.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from typing import Protocol

import zstandard

from fs.errors import FormatError, VerificationError, ZsnapError

__all__ = ["ChunkLike", "decode_chunk", "decode_verify"]


class ChunkLike(Protocol):
    """What decoding and fetching need of a chunk (``fs.format.Chunk`` has these)."""

    file_offset: int
    size: int
    compressed_offset: int
    compressed_end: int
    digest: str
    inner_offset: int
    zeros: bool


_tls = threading.local()


def _zstd() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


def decode_chunk(codec: str, data: bytes | memoryview, inner_offset: int, size: int) -> bytes:
    """Decode one chunk's compressed range and return exactly ``size`` bytes after ``inner_offset``.

    zstd decoding continues across frames and skips skippable frames (Dialect B ranges run up to the next
    chunk and may contain header frames, which are ignored once ``size`` bytes are out); gzip decoding
    continues across members.

    Raises:
        FormatError: the data is not valid for the codec or decodes to fewer bytes than needed.
    """
    need = inner_offset + size
    try:
        if codec == "zstd":
            out = bytearray()
            with _zstd().stream_reader(data, read_across_frames=True) as reader:
                while len(out) < need:
                    piece = reader.read(need - len(out))
                    if not piece:
                        break
                    out += piece
        elif codec == "gzip":
            out = bytearray()
            buf = bytes(data)
            d = zlib.decompressobj(31)
            while len(out) < need and buf:
                out += d.decompress(buf, need - len(out))
                if d.eof:
                    buf = d.unused_data
                    d = zlib.decompressobj(31)
                else:
                    buf = d.unconsumed_tail
                    if not buf:
                        break
        else:
            raise FormatError(f"unknown chunk codec {codec!r}")
    except (zstandard.ZstdError, zlib.error) as exc:
        raise FormatError(f"chunk does not decode as {codec}: {exc}") from exc
    if len(out) < need:
        raise FormatError(f"chunk decodes to {len(out)} bytes, {need} needed")
    return bytes(memoryview(out)[inner_offset:need])


def decode_verify(
    codec: str, data: bytes, start: int, chunks: list[ChunkLike]
) -> list[bytes | BaseException]:
    """Worker thread: decode and verify each chunk of a fetched range; its bytes or its error."""
    view = memoryview(data)
    results: list[bytes | BaseException] = []
    done: dict[str, bytes | BaseException] = {}
    for c in chunks:
        if c.digest in done:
            results.append(done[c.digest])
            continue
        res: bytes | BaseException
        try:
            raw = decode_chunk(
                codec, view[c.compressed_offset - start : c.compressed_end - start], c.inner_offset, c.size
            )
            actual = "sha256:" + hashlib.sha256(raw).hexdigest()
            if actual != c.digest:
                raise VerificationError(
                    f"chunk at compressed offset {c.compressed_offset}: digest mismatch: "
                    f"expected {c.digest}, got {actual}"
                )
            res = raw
        except ZsnapError as exc:
            res = exc
        results.append(res)
        done[c.digest] = res
    return results
