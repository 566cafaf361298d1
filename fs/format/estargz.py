"""gzip eStargz: footer and TOC extraction (FORMAT.md §2.6).

Blob layout: ``[gzip members: entries …][gzip member: tar(stargz.index.json) + tar EOF][footer]``.

* Footer (51 bytes): an empty gzip member whose FEXTRA field is ``SI1='S' SI2='G' LEN=22`` followed by
  ``"%016x" % toc_offset + "STARGZ"``; legacy stargz footer (47 bytes): the same without the SI/LEN
  sub-field header. The footer only gives the offset of the gzip member holding the TOC.
* TOC = the tar member ``stargz.index.json`` inside that gzip member; its digest (the
  ``containerd.io/snapshot/stargz/toc.digest`` annotation) is sha256 of the JSON bytes.
"""

from __future__ import annotations

import re
import struct
import zlib

from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.footer import Footer

__all__ = [
    "GZIP_FOOTER_SIZE",
    "LEGACY_GZIP_FOOTER_SIZE",
    "TOC_TAR_NAME",
    "extract_gzip_toc",
    "gzip_footer_bytes",
    "parse_gzip_footer",
]

GZIP_FOOTER_SIZE = 51
LEGACY_GZIP_FOOTER_SIZE = 47
#: Name of the tar member carrying the eStargz TOC.
TOC_TAR_NAME = "stargz.index.json"

_GZIP_HEAD = b"\x1f\x8b\x08"
_FEXTRA = 0x04
_SUBFIELD_RE = re.compile(rb"([0-9a-fA-F]{16})STARGZ")
# An empty stored deflate block (final) + CRC32 0 + ISIZE 0: what Go's gzip writer emits at NoCompression.
_EMPTY_DEFLATE_TRAILER = b"\x01\x00\x00\xff\xff" + bytes(8)


def gzip_footer_bytes(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at ``toc_offset`` (byte-identical to stargz-snapshotter's)."""
    if not 0 <= toc_offset < (1 << 63):
        raise FormatError(f"eStargz TOC offset {toc_offset} out of range")
    subfield = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(subfield)) + subfield
    header = _GZIP_HEAD + bytes([_FEXTRA]) + bytes(4) + b"\x00\xff" + struct.pack("<H", len(extra))
    out = header + extra + _EMPTY_DEFLATE_TRAILER
    assert len(out) == GZIP_FOOTER_SIZE
    return out


def _gzip_extra(member: bytes) -> bytes | None:
    """Return the FEXTRA field of a gzip member that decompresses to nothing, else None."""
    if member[:3] != _GZIP_HEAD or not member[3] & _FEXTRA or len(member) < 12:
        return None
    (xlen,) = struct.unpack_from("<H", member, 10)
    extra = member[12 : 12 + xlen]
    if len(extra) != xlen:
        return None
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(member, 1)
    except zlib.error:
        return None
    if out or not d.eof or d.unused_data:
        return None
    return extra


def parse_gzip_footer(tail: bytes, blob_size: int) -> Footer:
    """Parse a 51-byte (or legacy 47-byte) gzip eStargz footer at the end of ``tail``.

    Returns:
        ``Footer(ESTARGZ_GZIP, toc_offset, toc_length, 0)`` where ``toc_length`` is the length of the gzip
        member holding the TOC, ``[toc_offset, S - footer_size)`` (the footer itself carries no length).

    Raises:
        FormatError: no recognisable footer, or the TOC offset outside the blob.
    """
    for size, legacy in ((GZIP_FOOTER_SIZE, False), (LEGACY_GZIP_FOOTER_SIZE, True)):
        if len(tail) < size or blob_size < size:
            continue
        extra = _gzip_extra(bytes(tail[-size:]))
        if extra is None:
            continue
        if not legacy:
            if len(extra) != 26 or extra[:2] != b"SG" or struct.unpack_from("<H", extra, 2)[0] != 22:
                continue
            extra = extra[4:]
        m = _SUBFIELD_RE.fullmatch(extra)
        if m is None:
            continue
        toc_offset = int(m.group(1), 16)
        if toc_offset >= blob_size - size:
            raise FormatError(
                f"eStargz footer: TOC offset {toc_offset} outside the blob data (size {blob_size})"
            )
        return Footer(Dialect.ESTARGZ_GZIP, toc_offset, blob_size - size - toc_offset, 0)
    if len(tail) < LEGACY_GZIP_FOOTER_SIZE:
        raise FormatError(f"blob tail of {len(tail)} bytes is too short to hold any footer")
    raise FormatError(f"no zstd:chunked or eStargz footer found (last bytes {bytes(tail[-8:]).hex()})")


def extract_gzip_toc(member: bytes, *, max_size: int) -> bytes:
    """Return the ``stargz.index.json`` content from the gzip member holding the TOC.

    Args:
        member: blob bytes ``[toc_offset, blob_size - footer_size)``.
        max_size: cap on the decompressed TOC (tar header and padding included), to bound memory.

    Raises:
        FormatError: not gzip, bigger than ``max_size``, or not a tar holding ``stargz.index.json`` first.
    """
    d = zlib.decompressobj(wbits=31)
    try:
        data = d.decompress(bytes(member), max_size + 1024 + 1)
    except zlib.error as exc:
        raise FormatError(f"eStargz TOC member is not valid gzip: {exc}") from exc
    if len(data) > max_size + 1024:
        raise FormatError(f"eStargz TOC exceeds the {max_size}-byte cap")
    if len(data) < 512:
        raise FormatError("eStargz TOC member too short to hold a tar header")
    header = data[:512]
    name = header[:100].split(b"\0", 1)[0]
    prefix = header[345:500].split(b"\0", 1)[0] if header[257:263] == b"ustar\x00" else b""
    full = prefix + b"/" + name if prefix else name
    if full != TOC_TAR_NAME.encode():
        raise FormatError(f"eStargz TOC member holds {full!r}, expected {TOC_TAR_NAME!r}")
    if header[156:157] not in (b"0", b"\0"):
        raise FormatError(f"eStargz TOC tar entry has type {header[156:157]!r}, expected a regular file")
    _check_tar_checksum(header)
    size = _tar_number(header[124:136])
    if size > max_size:
        raise FormatError(f"eStargz TOC of {size} bytes exceeds the {max_size}-byte cap")
    if 512 + size > len(data):
        raise FormatError("eStargz TOC tar entry is truncated")
    return data[512 : 512 + size]


def _tar_number(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError as exc:
        raise FormatError(f"malformed tar number {field!r}") from exc


def _check_tar_checksum(header: bytes) -> None:
    stored = _tar_number(header[148:156])
    computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored != computed:
        raise FormatError(f"eStargz TOC tar header checksum mismatch ({stored} != {computed})")
