"""Chunk verification: the one place that decides which bytes of a chunk may be served.

The rule: every byte served is a byte whose digest the TOC names. The mount (:mod:`fs.lazy.fetcher`) and
``zsnap check`` (:mod:`converter.check`) both go through these functions, so they agree on what is valid:

* a data chunk's compressed range is decoded (zstd across frames, skipping skippable frames; gzip across
  members), ``inner_offset`` bytes are skipped and exactly ``size`` bytes are taken, hashed as they come
  and compared with the chunk's digest (:func:`iter_decoded`, :func:`decode_verify_chunk`);
* a ``zeros`` chunk is served without a fetch, but only if its digest is the digest of ``size`` zero
  bytes (:func:`check_zeros`; those digests are cached by size), so a data chunk relabelled ``zeros`` is
  refused, not served as zeros;
* a chunk found in the store is served only if the stored object has the declared size
  (:func:`stored_piece`: a short read, or a tail read finding more, is a lie about the size);
* memory does not grow with what the TOC declares: chunks bigger than ``max_read_materialize`` are
  decoded streaming, in pieces, into a store work file and put into the store from there
  (:func:`decode_verify`), never held whole.

Pure functions apart from the store work file; they run in worker threads. One ``ZstdDecompressor`` per
thread is reused across chunks.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import zstandard

from fs.errors import FormatError, VerificationError, ZsnapError
from fs.limits import DEFAULT_LIMITS
from fs.store.holders import ProcessId

__all__ = [
    "STORED",
    "ChunkLike",
    "check_chunk",
    "check_zeros",
    "decode_chunk",
    "decode_verify",
    "decode_verify_chunk",
    "iter_decoded",
    "known_zeros_digest",
    "stored_piece",
    "zeros_digest",
    "zeros_piece",
]

#: Pieces in which big chunks are decoded, hashed and written.
PIECE_SIZE: Final = 1 << 20
_ZERO_PIECE = bytes(PIECE_SIZE)


class ChunkLike(Protocol):
    """What decoding and fetching need of a chunk (``fs.format.Chunk`` has these), read only."""

    @property
    def file_offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def compressed_offset(self) -> int: ...
    @property
    def compressed_end(self) -> int: ...
    @property
    def digest(self) -> str: ...
    @property
    def inner_offset(self) -> int: ...
    @property
    def zeros(self) -> bool: ...


class PieceReader(Protocol):
    """What :func:`stored_piece` needs of the store (:class:`fs.store.Store` has it)."""

    def pread(self, digest: str, offset: int, length: int) -> bytes: ...


class _Stored:
    """Result of :func:`decode_verify` for a chunk verified and put into the store: read it there."""

    def __repr__(self) -> str:
        return "STORED"


STORED: Final = _Stored()

_tls = threading.local()


def _zstd() -> zstandard.ZstdDecompressor:
    dctx = getattr(_tls, "dctx", None)
    if dctx is None:
        dctx = _tls.dctx = zstandard.ZstdDecompressor()
    return dctx


# ---------------------------------------------------------------------------------------------- zeros


#: zero-run digests by size (a layer has few distinct sizes); bounded, oldest dropped first
_ZEROS_DIGESTS: dict[int, str] = {}
_ZEROS_CACHE_SIZE: Final = 256


def zeros_digest(size: int) -> str:
    """``sha256:`` digest of ``size`` zero bytes, hashed in pieces (cached by size; up to ~0.7 s for
    1 GiB the first time, so callers on an event loop use :func:`known_zeros_digest` first)."""
    digest = _ZEROS_DIGESTS.get(size)
    if digest is None:
        digest = _hash_zeros(size)
        if len(_ZEROS_DIGESTS) >= _ZEROS_CACHE_SIZE:
            _ZEROS_DIGESTS.pop(next(iter(_ZEROS_DIGESTS)), None)
        _ZEROS_DIGESTS[size] = digest
    return digest


def known_zeros_digest(size: int) -> str | None:
    """The cached digest of ``size`` zero bytes, or None when :func:`zeros_digest` would hash them."""
    return _ZEROS_DIGESTS.get(size)


def _hash_zeros(size: int) -> str:
    h = hashlib.sha256()
    full, rest = divmod(size, PIECE_SIZE)
    for _ in range(full):
        h.update(_ZERO_PIECE)
    h.update(memoryview(_ZERO_PIECE)[:rest])
    return "sha256:" + h.hexdigest()


def check_zeros(chunk: ChunkLike) -> None:
    """Raise :class:`VerificationError` unless a ``zeros`` chunk's digest is that of ``size`` zero bytes."""
    expected = zeros_digest(chunk.size)
    if chunk.digest != expected:
        raise VerificationError(
            f"chunk at file offset {chunk.file_offset} is marked as {chunk.size} zero bytes, but its digest "
            f"{chunk.digest} is not theirs ({expected})"
        )


def zeros_piece(chunk: ChunkLike, lo: int, hi: int) -> bytes:
    """Bytes ``[lo, hi)`` of a verified ``zeros`` chunk (:func:`check_zeros` first)."""
    check_zeros(chunk)
    return bytes(hi - lo)


def stored_piece(store: PieceReader, chunk: ChunkLike, lo: int, hi: int) -> bytes:
    """Bytes ``[lo, hi)`` of a chunk from the store, refusing a stored object of another size.

    A read that reaches the chunk's end asks for one byte more: if the store has it, the object under
    this digest is longer than the TOC says; a short read means it is shorter. Either way the TOC lies
    about the chunk (its digest is another content's), and the bytes are not served.

    Raises:
        NotInStore: not (or no longer) stored.
        VerificationError: the stored object's size is not the chunk's declared size.
    """
    probe = 1 if hi == chunk.size else 0
    data = store.pread(chunk.digest, lo, hi - lo + probe)
    if len(data) != hi - lo:
        raise VerificationError(
            f"chunk at file offset {chunk.file_offset} is declared as {chunk.size} bytes, but {chunk.digest} "
            f"in the store is {'longer' if len(data) > hi - lo else 'shorter'}"
        )
    return data


# ---------------------------------------------------------------------------------------------- decoding


def iter_decoded(
    codec: str, data: bytes | memoryview, inner_offset: int, size: int, *, piece: int = PIECE_SIZE
) -> Iterator[bytes]:
    """Decode a chunk's compressed range; yield exactly ``size`` bytes after ``inner_offset``, in pieces.

    Decoding stops once ``size`` bytes are out (Dialect B ranges run up to the next chunk and may hold
    header frames; eStargz ranges hold the next entries' tar headers), so no more than ``piece`` bytes are
    decoded at once, whatever the chunk declares.

    Raises:
        FormatError: the data is not valid for the codec or decodes to fewer bytes than needed.
    """
    if codec not in ("zstd", "gzip"):
        raise FormatError(f"unknown chunk codec {codec!r}")
    reader = _zstd_pieces(data) if codec == "zstd" else _gzip_pieces(data)
    skip, left = inner_offset, size
    try:
        while left:
            block = reader(min(piece, skip or left))
            if not block:
                got = inner_offset + size - left - skip
                raise FormatError(f"chunk decodes to {got} bytes, {inner_offset + size} needed")
            if skip:
                skip -= len(block)
                continue
            left -= len(block)
            yield block
    except (zstandard.ZstdError, zlib.error) as exc:
        raise FormatError(f"chunk does not decode as {codec}: {exc}") from exc


def _zstd_pieces(data: bytes | memoryview) -> Callable[[int], bytes]:
    reader = _zstd().stream_reader(data, read_across_frames=True)
    return reader.read


def _gzip_pieces(data: bytes | memoryview) -> Callable[[int], bytes]:
    """``read(n)``: up to ``n`` decompressed bytes across gzip members (b"" at the end)."""
    buf = memoryview(data)
    d = zlib.decompressobj(31)

    def read(n: int) -> bytes:
        nonlocal buf, d
        while buf:
            out = d.decompress(buf, n)
            if d.eof:
                buf = memoryview(d.unused_data)
                d = zlib.decompressobj(31)
            else:
                buf = memoryview(d.unconsumed_tail)
            if out:
                return out
        return b""

    return read


def decode_chunk(codec: str, data: bytes | memoryview, inner_offset: int, size: int) -> bytes:
    """Decode one chunk's compressed range and return exactly ``size`` bytes after ``inner_offset``.

    Raises:
        FormatError: the data is not valid for the codec or decodes to fewer bytes than needed.
    """
    return b"".join(iter_decoded(codec, data, inner_offset, size))


def _mismatch(chunk: ChunkLike, actual: str) -> VerificationError:
    return VerificationError(
        f"chunk at file offset {chunk.file_offset} (compressed offset {chunk.compressed_offset}): digest "
        f"mismatch: expected {chunk.digest}, got {actual}"
    )


def decode_verify_chunk(codec: str, data: bytes | memoryview, chunk: ChunkLike) -> bytes:
    """Decode ``chunk`` from its compressed range ``data`` and return its bytes once their digest matches.

    Raises:
        VerificationError: the decoded bytes do not hash to ``chunk.digest`` (or, for a ``zeros`` chunk,
            its digest is not that of its size in zero bytes).
        FormatError: the range does not decode.
    """
    if chunk.zeros:
        return zeros_piece(chunk, 0, chunk.size)
    raw = decode_chunk(codec, data, chunk.inner_offset, chunk.size)
    actual = "sha256:" + hashlib.sha256(raw).hexdigest()
    if actual != chunk.digest:
        raise _mismatch(chunk, actual)
    return raw


def check_chunk(codec: str, data: bytes | memoryview, chunk: ChunkLike) -> None:
    """Verify ``chunk`` as the mount would serve it, in bounded memory (what ``zsnap check`` runs).

    Raises:
        VerificationError, FormatError: as :func:`decode_verify_chunk`.
    """
    if chunk.zeros:
        check_zeros(chunk)
        return
    h = hashlib.sha256()
    for block in iter_decoded(codec, data, chunk.inner_offset, chunk.size):
        h.update(block)
    actual = "sha256:" + h.hexdigest()
    if actual != chunk.digest:
        raise _mismatch(chunk, actual)


def _decode_into_store(
    codec: str, data: memoryview, chunk: ChunkLike, store: Any, holder: str | None
) -> None:
    """Decode a big chunk in pieces into a store work file, verify, then put it into the store."""
    me = ProcessId.current()
    wip = Path(store.root) / "wip" / f"{me.pid}-{me.start}-{secrets.token_hex(8)}"
    h = hashlib.sha256()
    try:
        with open(wip, "xb") as out:
            for block in iter_decoded(codec, data, chunk.inner_offset, chunk.size):
                h.update(block)
                out.write(block)
        actual = "sha256:" + h.hexdigest()
        if actual != chunk.digest:
            raise _mismatch(chunk, actual)
        store.put_file(wip, digest=chunk.digest, holder=holder, move=True)
    except OSError as exc:
        raise ZsnapError(f"could not write a decoded chunk to {wip}: {exc}") from exc
    finally:
        wip.unlink(missing_ok=True)


def decode_verify(
    codec: str,
    data: bytes,
    start: int,
    chunks: list[ChunkLike],
    *,
    store: Any = None,
    holder: str | None = None,
    max_materialize: int = DEFAULT_LIMITS.max_read_materialize,
) -> list[bytes | _Stored | BaseException]:
    """Worker thread: decode and verify each chunk of a fetched range ``data`` (blob offset ``start``).

    Returns per chunk its verified bytes, :data:`STORED` for a chunk bigger than ``max_materialize`` that
    was decoded streaming and put into ``store`` (under ``holder``; needs ``store``), or its error.
    """
    view = memoryview(data)
    results: list[bytes | _Stored | BaseException] = []
    done: dict[str, bytes | _Stored | BaseException] = {}
    for c in chunks:
        if c.digest in done:
            results.append(done[c.digest])
            continue
        res: bytes | _Stored | BaseException
        piece = view[c.compressed_offset - start : c.compressed_end - start]
        try:
            if store is not None and c.size > max_materialize and not c.zeros:
                _decode_into_store(codec, piece, c, store, holder)
                res = STORED
            else:
                res = decode_verify_chunk(codec, piece, c)
        except ZsnapError as exc:
            res = exc
        results.append(res)
        done[c.digest] = res
    return results
