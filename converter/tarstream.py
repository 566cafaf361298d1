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

import dataclasses
import struct
from collections.abc import Iterator
from typing import BinaryIO

from fs.errors import FormatError, UnsupportedFormat

__all__ = [
    "BLOCK_SIZE",
    "TarEntry",
    "TarStreamReader",
]

BLOCK_SIZE = 512
_ZERO_BLOCK = bytes(BLOCK_SIZE)
#: Go's ``maxSpecialFileSize``: cap on PAX / GNU long-name payloads.
_MAX_SPECIAL = 1 << 20
#: Trailing data after the end-of-archive marker is handed out in pieces of at most this size
#: (tar-split's ``paddingChunkSize``).
TRAILER_PIECE = 1 << 20

# v7/ustar header layout: name mode uid gid size mtime chksum typeflag linkname magic version
# uname gname devmajor devminor prefix(155) pad(12)
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")

_TYPES = {
    b"0": "reg",
    b"\x00": "reg",  # TypeRegA (a trailing "/" makes it a directory, as in Go)
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}
#: Go's isHeaderOnlyType: these never carry payload whatever their size field says.
_HEADER_ONLY = frozenset({"hardlink", "symlink", "char", "block", "dir", "fifo"})
_UNSUPPORTED = {
    b"S": "GNU sparse file",
    b"g": "PAX global header",
    b"7": "contiguous file",
    b"V": "GNU volume header",
    b"M": "GNU multi-volume continuation",
    b"N": "GNU old long name",
    b"D": "GNU dump directory",
}

_FMT_V7, _FMT_USTAR, _FMT_GNU, _FMT_STAR = range(4)


@dataclasses.dataclass(slots=True)
class TarEntry:
    """One tar entry as parsed, plus the raw bytes that preceded its payload.

    Names are decoded as UTF-8 with ``surrogateescape`` (so ``os.fsencode(name) == name_raw``); the raw
    bytes are kept for tar-split (``name_raw``) and for exact round trips.

    Times are integer nanoseconds since the Unix epoch; ``atime_ns``/``ctime_ns`` are None when the tar
    does not carry them (Go's zero ``time.Time``).
    """

    raw: bytes
    offset: int
    header_offset: int
    type: str
    typeflag: bytes
    name: str
    name_raw: bytes
    link_name: str
    link_name_raw: bytes
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime_ns: int
    atime_ns: int | None
    ctime_ns: int | None
    dev_major: int
    dev_minor: int
    size: int
    payload_size: int
    xattrs: dict[str, bytes]
    pax: dict[str, bytes]

    @property
    def payload_offset(self) -> int:
        """Input offset of the first payload byte (= end of :attr:`raw`)."""
        return self.offset + len(self.raw)


def _fs(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(field: bytes) -> bytes:
    """Go ``parseString``: the field up to its first NUL."""
    nul = field.find(b"\x00")
    return field if nul < 0 else field[:nul]


_OCTAL_DIGITS = frozenset(b"01234567")


def _numeric(field: bytes) -> int:
    """Go ``parseNumeric``: base-256 when the top bit of the first byte is set, else octal.

    Raises:
        ValueError: not a number (the caller adds context).
    """
    if field and field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:  # negative, two's complement over the remaining bits
            value -= 1 << (8 * len(field) - 1)
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError("base-256 number overflows int64")
        return value
    text = _cstr(field.strip(b" \x00"))
    if not text:
        return 0
    if not _OCTAL_DIGITS.issuperset(text):
        raise ValueError(f"invalid octal number {field!r}")
    return int(text, 8)


def _checksum_ok(block: bytes, chksum_field: bytes) -> bool:
    try:
        value = _numeric(chksum_field)
    except ValueError:
        return False
    # unsigned sum with the checksum field counted as 8 spaces; Go also accepts the signed sum
    unsigned = sum(block) - sum(chksum_field) + 8 * 0x20
    if value == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b & 0x80)
    return value == unsigned - 256 * high


def _parse_pax_time(value: bytes) -> int:
    """Go ``parsePAXTime``: ``[-]seconds[.fraction]`` → ns (fraction truncated to 9 digits)."""
    text = value.decode("ascii")
    secs, _, frac = text.partition(".")
    if not secs or not secs.lstrip("-+").isdigit() or secs.count("-") + secs.count("+") > 1:
        raise ValueError(f"invalid PAX time {text!r}")
    seconds = int(secs)
    if not frac:
        return seconds * 1_000_000_000
    if not frac.isdigit() or not frac.isascii():
        raise ValueError(f"invalid PAX time {text!r}")
    nanos = int(frac[:9].ljust(9, "0"))
    if secs.startswith("-"):
        nanos = -nanos
    return seconds * 1_000_000_000 + nanos


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Go ``parsePAX`` / ``parsePAXRecord``: ``"%d %s=%s\\n"`` records; later records win."""
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 32))
        if space < 0:
            raise ValueError("PAX record without a length")
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise ValueError(f"invalid PAX record length {length_text!r}")
        length = int(length_text)
        if length < 5 or pos + length > end or length <= len(length_text) + 1:
            raise ValueError(f"PAX record length {length} out of range")
        record = data[space + 1 : pos + length]
        if not record.endswith(b"\n"):
            raise ValueError("PAX record does not end with a newline")
        key, eq, value = record[:-1].partition(b"=")
        if not eq or not key:
            raise ValueError(f"PAX record without key=value: {record[:64]!r}")
        if key in (b"path", b"linkpath", b"uname", b"gname") and b"\x00" in value:
            raise ValueError(f"PAX record {key.decode(errors='replace')} contains NUL")
        records[key] = value
        pos += length
    return records


class TarStreamReader:
    """Sequential, raw-accounting reader over a (non-seekable) binary stream.

    Usage::

        reader = TarStreamReader(stream)
        for entry in reader:          # entry.raw: bytes before the payload
            while piece := reader.read_payload(1 << 20):
                ...                   # exactly entry.payload_size bytes in total
        for piece in reader.trailer():
            ...

    Payload not read before advancing to the next entry is skipped (and then missing from the byte-exact
    concatenation). The reader buffers the stream in blocks of ``read_size`` bytes; :attr:`offset` is the
    input position of the next byte it will hand out.

    Raises (from iteration / ``read_payload`` / ``trailer``):
        FormatError: bad checksum, malformed number or PAX record, truncated input.
        UnsupportedFormat: a typeflag zsnap cannot convert faithfully (see module docstring).
    """

    def __init__(self, stream: BinaryIO, *, read_size: int = 1 << 20) -> None:
        self._stream = stream
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
                return self._finish(raw_parts)
            if len(block) < BLOCK_SIZE:
                raise self._truncated("a header block", None, header_offset)
            if block == _ZERO_BLOCK:
                second = self._take(BLOCK_SIZE)
                raw_parts.append(second)
                if not second or second == _ZERO_BLOCK:
                    return self._finish(raw_parts)
                if len(second) < BLOCK_SIZE:
                    raise self._truncated("the end-of-archive marker", None, header_offset + BLOCK_SIZE)
                raise FormatError(
                    f"tar header at offset {header_offset + BLOCK_SIZE} follows a single zero block"
                )
            fields = _HEADER.unpack(block)
            typeflag = fields[7]
            name_field = _cstr(fields[0])
            label = long_name or pax.get(b"path") or name_field
            if not _checksum_ok(block, fields[6]):
                raise FormatError(
                    f"tar header checksum mismatch at offset {header_offset}", path=_fs(label) or None
                )
            if typeflag in (b"x", b"L", b"K"):
                content = self._special(fields, header_offset, _fs(label))
                raw_parts.append(content[1])
                if typeflag == b"x":
                    try:
                        pax = _parse_pax(content[0])
                    except ValueError as exc:
                        raise FormatError(
                            f"malformed PAX header at offset {header_offset}: {exc}", path=_fs(label) or None
                        ) from None
                    self._check_pax(pax, header_offset)
                elif typeflag == b"L":
                    long_name = _cstr(content[0])
                else:
                    long_link = _cstr(content[0])
                continue
            entry = self._entry(block, fields, pax, long_name, long_link, raw_parts, start, header_offset)
            self._current = entry
            self._remaining = entry.payload_size
            self._pad = -entry.payload_size % BLOCK_SIZE
            return entry

    def _check_pax(self, pax: dict[bytes, bytes], header_offset: int) -> None:
        for key in pax:
            if key.startswith(b"GNU.sparse."):
                name = pax.get(b"path", b"")
                raise UnsupportedFormat(
                    f"GNU sparse file (PAX {key.decode(errors='replace')}) at offset {header_offset} "
                    "cannot be converted",
                    path=_fs(name) or None,
                )

    def _special(self, fields: tuple, header_offset: int, label: str) -> tuple[bytes, bytes]:
        """Read the content of a PAX / GNU long-name header; return (content, content + padding)."""
        try:
            size = _numeric(fields[4])
        except ValueError as exc:
            raise FormatError(f"tar header at offset {header_offset}: size: {exc}", path=label) from None
        if not 0 <= size <= _MAX_SPECIAL:
            raise FormatError(
                f"extension header at offset {header_offset} has size {size} (limit {_MAX_SPECIAL})",
                path=label or None,
            )
        padded = size + (-size % BLOCK_SIZE)
        data = self._take(padded)
        if len(data) < padded:
            raise self._truncated("an extension header", label or None, header_offset)
        return data[:size], data

    def _entry(
        self,
        block: bytes,
        fields: tuple,
        pax: dict[bytes, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
        raw_parts: list[bytes],
        start: int,
        header_offset: int,
    ) -> TarEntry:
        (name_f, mode_f, uid_f, gid_f, size_f, mtime_f, _, typeflag, link_f, magic, version,
         uname_f, gname_f, major_f, minor_f, prefix_f, _) = fields  # fmt: skip
        name = _cstr(name_f)
        if magic == b"ustar\x00":
            fmt = _FMT_STAR if block[508:512] == b"tar\x00" else _FMT_USTAR
        elif magic == b"ustar " and version == b" \x00":
            fmt = _FMT_GNU
        else:
            fmt = _FMT_V7
        label = _fs(long_name or pax.get(b"path") or name)
        atime_ns: int | None = None
        ctime_ns: int | None = None
        try:
            mode = _numeric(mode_f)
            uid = _numeric(uid_f)
            gid = _numeric(gid_f)
            size = _numeric(size_f)
            mtime_ns = _numeric(mtime_f) * 1_000_000_000
            uname = gname = b""
            dev_major = dev_minor = 0
            if fmt != _FMT_V7:
                uname = _cstr(uname_f)
                gname = _cstr(gname_f)
                dev_major = _numeric(major_f)
                dev_minor = _numeric(minor_f)
            if fmt == _FMT_USTAR:
                prefix = _cstr(prefix_f)
                if prefix:
                    name = prefix + b"/" + name
            elif fmt == _FMT_STAR:
                prefix = _cstr(block[345:476])
                if prefix:
                    name = prefix + b"/" + name
                atime_ns = _numeric(block[476:488]) * 1_000_000_000
                ctime_ns = _numeric(block[488:500]) * 1_000_000_000
            elif fmt == _FMT_GNU:
                if block[345]:
                    atime_ns = _numeric(block[345:357]) * 1_000_000_000
                if block[357]:
                    ctime_ns = _numeric(block[357:369]) * 1_000_000_000
        except ValueError as exc:
            raise FormatError(f"malformed tar header at offset {header_offset}: {exc}", path=label) from None
        link = _cstr(link_f)
        xattrs: dict[str, bytes] = {}
        if pax:
            try:
                for key, value in pax.items():
                    if not value:
                        if key.startswith(b"SCHILY.xattr."):
                            xattrs[_fs(key[13:])] = b""
                        continue  # an empty record keeps the header value (Go mergePAX)
                    if key == b"path":
                        name = value
                    elif key == b"linkpath":
                        link = value
                    elif key == b"uname":
                        uname = value
                    elif key == b"gname":
                        gname = value
                    elif key == b"uid":
                        uid = int(value)
                    elif key == b"gid":
                        gid = int(value)
                    elif key == b"size":
                        size = int(value)
                    elif key == b"mtime":
                        mtime_ns = _parse_pax_time(value)
                    elif key == b"atime":
                        atime_ns = _parse_pax_time(value)
                    elif key == b"ctime":
                        ctime_ns = _parse_pax_time(value)
                    elif key.startswith(b"SCHILY.xattr."):
                        xattrs[_fs(key[13:])] = value
            except (ValueError, UnicodeDecodeError) as exc:
                raise FormatError(
                    f"malformed PAX record for the entry at offset {header_offset}: {exc}", path=label
                ) from None
        if long_name is not None:
            name = long_name
        if long_link is not None:
            link = long_link
        kind = _TYPES.get(typeflag)
        if kind is None:
            what = _UNSUPPORTED.get(typeflag, f"tar typeflag {typeflag!r}")
            raise UnsupportedFormat(
                f"{what} at offset {header_offset} cannot be converted", path=_fs(name) or None
            )
        if typeflag == b"\x00" and name.endswith(b"/"):
            kind = "dir"
        if size < 0:
            raise FormatError(f"negative size {size} in tar header at offset {header_offset}", path=_fs(name))
        payload = 0 if kind in _HEADER_ONLY else size
        raw = raw_parts[0] if len(raw_parts) == 1 else b"".join(raw_parts)
        return TarEntry(
            raw=raw,
            offset=start,
            header_offset=header_offset,
            type=kind,
            typeflag=typeflag,
            name=_fs(name),
            name_raw=name,
            link_name=_fs(link),
            link_name_raw=link,
            mode=mode,
            uid=uid,
            gid=gid,
            uname=_fs(uname),
            gname=_fs(gname),
            mtime_ns=mtime_ns,
            atime_ns=atime_ns,
            ctime_ns=ctime_ns,
            dev_major=dev_major,
            dev_minor=dev_minor,
            size=size,
            payload_size=payload,
            xattrs=xattrs,
            pax=pax,
        )

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
