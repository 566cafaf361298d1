"""Raw-accounting tar reader: parse a tar stream sequentially and hand back every byte it consumed.

This mirrors what vbatts/tar-split's fork of Go's ``archive/tar`` does in ``RawAccounting`` mode, which is
what containers/storage's zstd:chunked writer is built on (FORMAT.md §1.1, §1.6):

* For every entry, :attr:`TarEntry.raw` holds the bytes consumed since the end of the previous entry's
  payload *data*: the previous payload's 512-padding, any PAX (``x``) / GNU long-name (``L``, ``K``)
  extension headers with their padded content, and the entry's own header block, verbatim.
* The payload is then read with :meth:`TarStreamReader.read_payload` (exactly
  :attr:`TarEntry.payload_size` bytes, in pieces of the caller's choosing).
* After the last entry, :meth:`TarStreamReader.trailer` yields the rest: the last padding, the end-of-archive
  zero blocks and anything after them, verbatim.

Concatenating ``raw`` + payload of every entry + the trailer pieces gives back the input byte for byte.
Metadata is parsed the way Go's ``archive/tar`` parses it (PAX records override header fields, a GNU long
name overrides PAX ``path``, base-256 numbers, USTAR prefix, GNU atime/ctime), since c/storage compares the
TOC it reads against tar-split's view of the same headers.

Not supported (raises :class:`~fs.errors.UnsupportedFormat` naming the entry): GNU sparse files (``S`` or
PAX ``GNU.sparse.*``), PAX global headers (``g``), contiguous files (``7``), GNU volume/multi-volume/dumpdir
headers and any other unknown typeflag — c/storage's writer rejects these too. Malformed input (bad
checksum, bad number, truncated stream, bad PAX record) raises :class:`~fs.errors.FormatError` with the
entry name (when known) and the input offset of the offending header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from converter.tarheader import (
    BLOCK_SIZE,
    TarEntry,
    checksum_ok,
    cstr,
    fsdecode,
    numeric,
    parse_entry,
    parse_pax,
)
from fs.errors import FormatError, UnsupportedFormat
from fs.format.paths import LayerNames

__all__ = [
    "BLOCK_SIZE",
    "TRAILER_PIECE",
    "TarEntry",
    "TarStreamReader",
]

_ZERO_BLOCK = bytes(BLOCK_SIZE)
#: Go's ``maxSpecialFileSize``: cap on PAX / GNU long-name payloads.
_MAX_SPECIAL = 1 << 20
#: Trailing data after the end-of-archive marker is handed out in pieces of at most this size
#: (tar-split's ``paddingChunkSize``).
TRAILER_PIECE = 1 << 20


class TarStreamReader:
    """Sequential, raw-accounting reader over a (non-seekable) binary stream.

    Usage::

        reader = TarStreamReader(stream)
        for entry in reader:          # entry.raw: bytes before the payload
            while piece := reader.read_payload(1 << 20):
                ...                   # exactly entry.payload_size bytes in total
        for piece in reader.trailer():
            ...

    Every entry's name, hardlink target and symlink target are checked by ``names`` (default: a fresh
    :class:`~fs.format.paths.LayerNames` with the default limits) as it is read, so a layer the mount would
    refuse (a ``../`` name, a hardlink out of the layer or to a missing entry, a path over the limits) is
    refused here, naming the entry, before anything is written.

    Payload not read before advancing to the next entry is skipped (and then missing from the byte-exact
    concatenation). ``on_read`` (optional) sees every byte read from the stream, in order, in the pieces
    the stream returned (e.g. to hash the input on another thread). The reader buffers the stream in
    blocks of ``read_size`` bytes; :attr:`offset` is the input position of the next byte it hands out.

    Raises (from iteration / ``read_payload`` / ``trailer``):
        FormatError: bad checksum, malformed number or PAX record, truncated input, a name the layer
            rules refuse.
        UnsupportedFormat: a typeflag zsnap cannot convert faithfully (see module docstring).
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        read_size: int = 1 << 20,
        on_read: Callable[[bytes], None] | None = None,
        names: LayerNames | None = None,
    ) -> None:
        self._stream = stream
        self._names = LayerNames() if names is None else names
        self._on_read = on_read
        self._read_size = read_size
        self._buf = b""
        self._pos = 0
        self._base = 0  # input offset of self._buf[0]
        self._remaining = 0  # unread payload bytes of the current entry
        self._pad = 0  # padding after the current payload, not consumed yet
        self._current: TarEntry | None = None
        self._done = False
        self._eof_raw = b""
        self._stream_eof = False

    # ------------------------------------------------------------------------------------ buffering

    @property
    def offset(self) -> int:
        """Input offset of the next byte this reader hands out."""
        return self._base + self._pos

    def _fill(self, n: int) -> bool:
        """Make at least ``n`` bytes available from ``_pos``; False if the stream ends first."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos :]] if have else []
        self._base += self._pos
        while have < n and not self._stream_eof:
            data = self._stream.read(max(self._read_size, n - have))
            if not data:
                self._stream_eof = True
                break
            if self._on_read is not None:
                self._on_read(data)
            parts.append(data)
            have += len(data)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0
        return have >= n

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at end of stream)."""
        if not self._fill(n):
            n = len(self._buf) - self._pos
        start = self._pos
        self._pos += n
        if start == 0 and n == len(self._buf):
            return self._buf
        return self._buf[start : start + n]

    def _take_large(self, n: int) -> bytes:
        """``n`` bytes, reading straight from the stream past what is buffered (no double buffering)."""
        have = len(self._buf) - self._pos
        if have >= n:
            return self._take(n)
        parts = [self._buf[self._pos :]] if have else []
        start = self._base + self._pos
        self._buf = b""
        self._pos = 0
        while have < n and not self._stream_eof:
            data = self._stream.read(n - have)
            if not data:
                self._stream_eof = True
                break
            if self._on_read is not None:
                self._on_read(data)
            parts.append(data)
            have += len(data)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self._base = start + len(out)
        return out

    # -------------------------------------------------------------------------------------- entries

    def __iter__(self) -> Iterator[TarEntry]:
        while True:
            entry = self._next()
            if entry is None:
                return
            yield entry

    def _truncated(self, what: str, name: str | None, at: int) -> FormatError:
        return FormatError(f"tar stream truncated in {what} at offset {at}", path=name)

    def _next(self) -> TarEntry | None:
        if self._done:
            return None
        if self._remaining:
            self._skip_payload()
        start = self.offset
        raw_parts: list[bytes] = []
        if self._pad:
            pad = self._take(self._pad)
            raw_parts.append(pad)
            if len(pad) < self._pad:
                name = self._current.name if self._current else None
                raise self._truncated("payload padding", name, self.offset)
            self._pad = 0
        pax: dict[bytes, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            header_offset = self.offset
            block = self._take(BLOCK_SIZE)
            raw_parts.append(block)
            if not block:  # clean end of stream without end-of-archive blocks
                self._finish(raw_parts)
                return None
            if len(block) < BLOCK_SIZE:
                raise self._truncated("a header block", None, header_offset)
            if block == _ZERO_BLOCK:
                second = self._take(BLOCK_SIZE)
                raw_parts.append(second)
                if not second or second == _ZERO_BLOCK:
                    self._finish(raw_parts)
                    return None
                if len(second) < BLOCK_SIZE:
                    raise self._truncated("the end-of-archive marker", None, header_offset + BLOCK_SIZE)
                raise FormatError(
                    f"tar header at offset {header_offset + BLOCK_SIZE} follows a single zero block"
                )
            typeflag = block[156:157]
            if not checksum_ok(block):
                label = long_name or pax.get(b"path") or cstr(block[:100])
                raise FormatError(
                    f"tar header checksum mismatch at offset {header_offset}", path=fsdecode(label) or None
                )
            if typeflag in (b"x", b"L", b"K"):
                content, padded = self._special(block, header_offset, long_name or pax.get(b"path"))
                raw_parts.append(padded)
                if typeflag == b"x":
                    pax = self._pax(content, header_offset, long_name)
                elif typeflag == b"L":
                    long_name = cstr(content)
                else:
                    long_link = cstr(content)
                continue
            raw = raw_parts[0] if len(raw_parts) == 1 else b"".join(raw_parts)
            entry = parse_entry(block, pax, long_name, long_link, raw, start, header_offset)
            self._names.add(entry.name, entry.type, entry.link_name)  # what a mount would refuse
            self._current = entry
            self._remaining = size = entry.payload_size
            self._pad = -size % BLOCK_SIZE
            return entry

    @staticmethod
    def _pax(content: bytes, header_offset: int, long_name: bytes | None) -> dict[bytes, bytes]:
        try:
            pax = parse_pax(content)
        except ValueError as exc:
            raise FormatError(
                f"malformed PAX header at offset {header_offset}: {exc}",
                path=fsdecode(long_name) if long_name else None,
            ) from None
        for key in pax:
            if key.startswith(b"GNU.sparse."):
                name = long_name or pax.get(b"path", b"")
                raise UnsupportedFormat(
                    f"GNU sparse file (PAX {key.decode(errors='replace')}) at offset {header_offset} "
                    "cannot be converted",
                    path=fsdecode(name) or None,
                )
        return pax

    def _special(self, block: bytes, header_offset: int, name: bytes | None) -> tuple[bytes, bytes]:
        """Read the content of a PAX / GNU long-name header; return (content, content + padding)."""
        label = fsdecode(name) if name else None
        try:
            size = numeric(block[124:136])
        except ValueError as exc:
            raise FormatError(f"tar header at offset {header_offset}: size: {exc}", path=label) from None
        if not 0 <= size <= _MAX_SPECIAL:
            raise FormatError(
                f"extension header at offset {header_offset} has size {size} (limit {_MAX_SPECIAL})",
                path=label,
            )
        padded = size + (-size % BLOCK_SIZE)
        data = self._take(padded)
        if len(data) < padded:
            raise self._truncated("an extension header", label, header_offset)
        return data[:size], data

    def _finish(self, raw_parts: list[bytes]) -> None:
        self._done = True
        self._current = None
        self._eof_raw = b"".join(raw_parts)
        return None

    # -------------------------------------------------------------------------------------- payload

    @property
    def payload_remaining(self) -> int:
        """Payload bytes of the current entry not read yet."""
        return self._remaining

    def read_payload(self, n: int) -> bytes:
        """Read up to ``n`` bytes of the current entry's payload (``b""`` once it is all read).

        Raises:
            FormatError: the stream ends inside the payload.
        """
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        data = self._take(n) if n <= self._read_size else self._take_large(n)
        if len(data) < n:
            entry = self._current
            raise FormatError(
                f"tar stream truncated in the payload ({self._remaining - len(data)} bytes missing) "
                f"at offset {self.offset}",
                path=entry.name if entry else None,
            )
        self._remaining -= n
        return data

    def _skip_payload(self) -> None:
        while self._remaining:
            self.read_payload(min(self._remaining, 1 << 24))

    # -------------------------------------------------------------------------------------- trailer

    def trailer(self) -> Iterator[bytes]:
        """Yield everything after the last entry, verbatim (call after iteration ended).

        First piece: the last payload's padding plus the end-of-archive zero blocks as read (possibly
        empty when the stream just stops); then any further bytes in pieces of at most 1 MiB.

        Raises:
            FormatError: called before the entries were exhausted.
        """
        if not self._done and self._next() is not None:
            raise FormatError("trailer() called before all tar entries were read")
        if self._eof_raw:
            yield self._eof_raw
            self._eof_raw = b""
        while True:
            piece = self._take(TRAILER_PIECE)
            if not piece:
                return
            yield piece
