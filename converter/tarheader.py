"""Tar header parsing, as Go's ``archive/tar`` does it (used by :mod:`converter.tarstream`; no I/O).

Go semantics reproduced, because c/storage compares the TOC with tar-split's view of the same headers:
numbers are octal or base-256 (``parseNumeric``); the format is guessed from magic/version
(USTAR/PAX, GNU, STAR, V7); USTAR prefixes are joined to the name; GNU headers may carry atime/ctime; PAX
records override header fields unless empty (``mergePAX``); a GNU long name/link overrides PAX
``path``/``linkpath``; ``TypeRegA`` becomes ``dir`` when the name ends with ``/``; header-only types
(links, devices, dirs, fifos) never have payload, whatever their size field says.

Hot path: this runs once per tar entry (10^4–10^5 per layer), so it avoids per-byte Python work (the
header checksum uses ``zlib.adler32`` over two 256-byte halves, whose low 16 bits are then an exact byte
sum).
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

from fs.errors import FormatError, UnsupportedFormat

__all__ = [
    "BLOCK_SIZE",
    "HEADER",
    "TarEntry",
    "checksum_ok",
    "numeric",
    "parse_entry",
    "parse_pax",
]

BLOCK_SIZE = 512
# v7/ustar header layout: name mode uid gid size mtime chksum typeflag linkname magic version
# uname gname devmajor devminor prefix(155) pad(12)
HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s")

_TYPES = {
    b"0": "reg",
    b"\x00": "reg",  # TypeRegA
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"6": "fifo",
}
#: Go's isHeaderOnlyType.
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
_NS = 1_000_000_000
_XATTR = b"SCHILY.xattr."


@dataclasses.dataclass(slots=True)
class TarEntry:
    """One tar entry as parsed, plus the raw bytes that preceded its payload.

    Names are decoded as UTF-8 with ``surrogateescape`` (so ``os.fsencode(name) == name_raw``); the raw
    bytes are kept for tar-split (``name_raw``) and exact round trips. Times are integer nanoseconds
    since the Unix epoch; ``atime_ns``/``ctime_ns`` are None when the tar does not carry them (Go's zero
    ``time.Time``). ``size`` is the declared size (header or PAX); ``payload_size`` the bytes of payload
    that follow (0 for header-only types).
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
    pax: dict[bytes, bytes]

    @property
    def payload_offset(self) -> int:
        """Input offset of the first payload byte (= end of :attr:`raw`)."""
        return self.offset + len(self.raw)


def fsdecode(raw: bytes) -> str:
    """Bytes → str the way ``os.fsdecode`` does on Linux (UTF-8, surrogateescape)."""
    return raw.decode("utf-8", "surrogateescape")


def cstr(field: bytes) -> bytes:
    """Go ``parseString``: the field up to its first NUL."""
    nul = field.find(b"\x00")
    return field if nul < 0 else field[:nul]


def numeric(field: bytes) -> int:
    """Go ``parseNumeric``: base-256 when the top bit of the first byte is set, else octal.

    Raises:
        ValueError: not a number (callers add context).
    """
    if field[0] & 0x80:
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        if field[0] & 0x40:  # negative: two's complement over the remaining bits
            value -= 1 << (8 * len(field) - 1)
        if not -(1 << 63) <= value < (1 << 63):
            raise ValueError("base-256 number overflows int64")
        return value
    text = field.strip(b" \x00")
    if text.isdigit():
        return int(text, 8)  # ValueError for 8 and 9
    if not text:
        return 0
    text = cstr(text)
    if text.isdigit():
        return int(text, 8)
    raise ValueError(f"invalid octal number {field!r}")


def checksum_ok(block: bytes) -> bool:
    """Go ``getFormat``'s checksum test: the unsigned or the signed byte sum, chksum field as spaces."""
    try:
        value = numeric(block[148:156])
    except ValueError:
        return False
    # adler32's low half is 1 + sum(bytes) mod 65521; 256 bytes sum to at most 65280, so it is exact
    mv = memoryview(block)
    unsigned = (
        (zlib.adler32(mv[:256]) & 0xFFFF) + (zlib.adler32(mv[256:]) & 0xFFFF) - 2
        - ((zlib.adler32(mv[148:156]) & 0xFFFF) - 1) + 8 * 0x20
    )  # fmt: skip
    if value == unsigned:
        return True
    high = sum(1 for b in block[:148] + block[156:] if b & 0x80)
    return value == unsigned - 256 * high


def pax_time(value: bytes) -> int:
    """Go ``parsePAXTime``: ``[-]seconds[.fraction]`` → ns (fraction truncated to 9 digits)."""
    secs, _, frac = value.partition(b".")
    digits = secs[1:] if secs[:1] in (b"-", b"+") else secs
    if not digits.isdigit():
        raise ValueError(f"invalid PAX time {value!r}")
    seconds = int(secs)
    if not frac:
        return seconds * _NS
    if not frac.isdigit():
        raise ValueError(f"invalid PAX time {value!r}")
    nanos = int(frac[:9].ljust(9, b"0"))
    return seconds * _NS + (-nanos if secs[:1] == b"-" else nanos)


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Go ``parsePAX`` / ``parsePAXRecord``: ``"%d %s=%s\\n"`` records; later records win.

    Raises:
        ValueError: a malformed record.
    """
    records: dict[bytes, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        space = data.find(b" ", pos, min(end, pos + 24))
        if space < 0:
            raise ValueError("PAX record without a length")
        length_text = data[pos:space]
        if not length_text.isdigit():
            raise ValueError(f"invalid PAX record length {length_text!r}")
        length = int(length_text)
        if length < 5 or pos + length > end or length <= len(length_text) + 1:
            raise ValueError(f"PAX record length {length} out of range")
        stop = pos + length - 1
        if data[stop] != 0x0A:
            raise ValueError("PAX record does not end with a newline")
        eq = data.find(b"=", space + 1, stop)
        if eq <= space + 1:
            raise ValueError(f"PAX record without key=value: {data[pos:stop][:64]!r}")
        key = data[space + 1 : eq]
        value = data[eq + 1 : stop]
        if key in (b"path", b"linkpath", b"uname", b"gname") and b"\x00" in value:
            raise ValueError(f"PAX record {key.decode(errors='replace')} contains NUL")
        records[key] = value
        pos += length
    return records


def parse_entry(
    block: bytes,
    pax: dict[bytes, bytes],
    long_name: bytes | None,
    long_link: bytes | None,
    raw: bytes,
    start: int,
    header_offset: int,
) -> TarEntry:
    """Build the :class:`TarEntry` for a (checksum-verified) header block and its extension headers.

    Raises:
        FormatError: a malformed number, PAX value or negative size (names the entry and the offset).
        UnsupportedFormat: a typeflag zsnap cannot convert (sparse, global PAX header, ...).
    """
    (name, mode_f, uid_f, gid_f, size_f, mtime_f, _, typeflag, link, magic, version,
     uname, gname, major_f, minor_f, prefix, _) = HEADER.unpack(block)  # fmt: skip
    name = cstr(name)
    link = cstr(link)
    atime_ns: int | None = None
    ctime_ns: int | None = None
    try:
        mode = numeric(mode_f)
        uid = numeric(uid_f)
        gid = numeric(gid_f)
        size = numeric(size_f)
        mtime_ns = numeric(mtime_f) * _NS
        if magic == b"ustar\x00":
            uname = cstr(uname)
            gname = cstr(gname)
            dev_major = numeric(major_f)
            dev_minor = numeric(minor_f)
            if block[508:512] == b"tar\x00":  # STAR: shorter prefix, atime and ctime
                prefix = block[345:476]
                atime_ns = numeric(block[476:488]) * _NS
                ctime_ns = numeric(block[488:500]) * _NS
            prefix = cstr(prefix)
            if prefix:
                name = prefix + b"/" + name
        elif magic == b"ustar " and version == b" \x00":  # GNU
            uname = cstr(uname)
            gname = cstr(gname)
            dev_major = numeric(major_f)
            dev_minor = numeric(minor_f)
            if block[345]:
                atime_ns = numeric(block[345:357]) * _NS
            if block[357]:
                ctime_ns = numeric(block[357:369]) * _NS
        else:  # V7
            uname = gname = b""
            dev_major = dev_minor = 0
    except ValueError as exc:
        label = fsdecode(long_name or pax.get(b"path") or name)
        raise FormatError(f"malformed tar header at offset {header_offset}: {exc}", path=label) from None
    xattrs: dict[str, bytes] = {}
    if pax:
        try:
            for key, value in pax.items():
                if key.startswith(_XATTR):
                    xattrs[fsdecode(key[13:])] = value
                elif not value:
                    continue  # an empty record keeps the header value (Go mergePAX)
                elif key == b"path":
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
                    mtime_ns = pax_time(value)
                elif key == b"atime":
                    atime_ns = pax_time(value)
                elif key == b"ctime":
                    ctime_ns = pax_time(value)
        except ValueError as exc:
            raise FormatError(
                f"malformed PAX record for the entry at offset {header_offset}: {exc}",
                path=fsdecode(long_name or name),
            ) from None
    if long_name is not None:
        name = long_name
    if long_link is not None:
        link = long_link
    kind = _TYPES.get(typeflag)
    if kind is None:
        what = _UNSUPPORTED.get(typeflag, f"tar typeflag {typeflag!r}")
        raise UnsupportedFormat(f"{what} at offset {header_offset} cannot be converted", path=fsdecode(name))
    if typeflag == b"\x00" and name.endswith(b"/"):
        kind = "dir"
    if size < 0:
        raise FormatError(
            f"negative size {size} in tar header at offset {header_offset}", path=fsdecode(name)
        )
    return TarEntry(
        raw,
        start,
        header_offset,
        kind,
        typeflag,
        name.decode("utf-8", "surrogateescape"),
        name,
        link.decode("utf-8", "surrogateescape") if link else "",
        link,
        mode,
        uid,
        gid,
        uname.decode("utf-8", "surrogateescape") if uname else "",
        gname.decode("utf-8", "surrogateescape") if gname else "",
        mtime_ns,
        atime_ns,
        ctime_ns,
        dev_major,
        dev_minor,
        size,
        0 if kind in _HEADER_ONLY else size,
        xattrs,
        pax,
    )
