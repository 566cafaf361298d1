"""zstd framing primitives shared by both zstd:chunked dialects (FORMAT.md §0).

A skippable frame is ``50 2A 4D 18`` + uint32 LE payload length + payload. Standard zstd decoders skip
it, so a blob stays a valid zstd stream while carrying the TOC, tar-split and footer.
"""

from __future__ import annotations

import struct

from fs.errors import FormatError

__all__ = [
    "SKIPPABLE_HEADER_SIZE",
    "SKIPPABLE_MAGIC",
    "ZSTD_MAGIC",
    "is_skippable_magic",
    "parse_skippable_header",
    "skippable_frame",
    "skippable_header",
]

#: The skippable-frame magic both writers use (0x184D2A50 little-endian).
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
#: Regular zstd frame magic (0xFD2FB528 little-endian).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: magic + uint32 length; stored TOC/tar-split offsets point this far past their frame's start.
SKIPPABLE_HEADER_SIZE = 8

_MAX_PAYLOAD = (1 << 32) - 1


def skippable_header(payload_length: int) -> bytes:
    """The 8-byte skippable-frame header for a payload of ``payload_length`` bytes.

    Raises:
        FormatError: length negative or not representable in a uint32 (≥ 4 GiB).
    """
    if not 0 <= payload_length <= _MAX_PAYLOAD:
        raise FormatError(f"skippable frame payload of {payload_length} bytes does not fit a uint32 length")
    return SKIPPABLE_MAGIC + struct.pack("<I", payload_length)


def skippable_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Return the complete skippable frame (8-byte header + payload).

    Raises:
        FormatError: payload of 4 GiB or more.
    """
    return skippable_header(len(payload)) + bytes(payload)


def is_skippable_magic(magic: bytes) -> bool:
    """True for any of the 16 skippable magics 0x184D2A50–0x184D2A5F (RFC 8878 §3.1.2)."""
    return len(magic) == 4 and magic[1:] == SKIPPABLE_MAGIC[1:] and (magic[0] & 0xF0) == 0x50


def parse_skippable_header(header: bytes) -> int:
    """Validate an 8-byte skippable-frame header and return its payload length.

    Raises:
        FormatError: fewer than 8 bytes or not a skippable magic.
    """
    if len(header) < SKIPPABLE_HEADER_SIZE:
        raise FormatError(f"skippable frame header truncated ({len(header)} of 8 bytes)")
    if not is_skippable_magic(bytes(header[:4])):
        raise FormatError(f"not a zstd skippable frame (magic {bytes(header[:4]).hex()})")
    return int(struct.unpack_from("<I", header, 4)[0])
