"""Verify-then-trust decoding of TOC and tar-split bytes (FORMAT.md §4.3 step 2).

Order matters: for c/storage the *compressed* bytes are hashed before a single byte is decompressed;
for eStargz the decompressed JSON is hashed before it is parsed. Decompression is always capped.
"""

from __future__ import annotations

import zstandard

from fs.digest import sha256_digest
from fs.errors import FormatError, UnsupportedFormat, VerificationError
from fs.format.annotations import TocLocation
from fs.format.dialect import Dialect
from fs.format.estargz import extract_gzip_toc
from fs.format.frames import SKIPPABLE_HEADER_SIZE, is_skippable_magic, parse_skippable_header
from fs.format.toc import Toc
from fs.format.tocparse import parse_toc
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "MAX_TAR_SPLIT_SIZE",
    "decode_and_verify_toc",
    "decompress_and_verify_tar_split",
    "decompress_and_verify_toc",
    "zstd_decompress",
]

#: Cap on a decompressed tar-split (it grows with the number of tar headers, like the TOC).
MAX_TAR_SPLIT_SIZE = 1024 * 1024 * 1024
# Compressed bytes fed per step: one step can expand to at most ~32 MiB (RLE blocks), bounding overshoot.
_STEP = 1024


def zstd_decompress(
    data: bytes, *, max_output: int, what: str = "data", want: int | None = None, expect: int = 0
) -> bytes:
    """Decompress a zstd stream of one or more frames (skippable frames skipped), at most ``max_output``.

    Unlike ``zstandard``'s stream reader, a truncated last frame is an error, not a short result. Input
    is fed in small steps so that a decompression bomb cannot allocate much beyond ``max_output``.

    Args:
        want: if given, return as soon as ``want`` bytes are decoded (exactly ``want`` bytes); the rest
            of the input is ignored (eStargz ranges carry trailing header bytes after the chunk).
        expect: the decoded size the caller was told (a TOC position's uncompressed length), if known:
            a single frame decoding to exactly that many bytes is decoded in one call into a buffer of
            that size (the steps cost ~9 µs of Python per KiB of input); anything else takes the steps.

    Raises:
        FormatError: corrupt/truncated zstd, output larger than ``max_output``, or fewer than ``want``
            bytes.
    """
    if 0 < expect <= max_output and want is None:
        try:
            whole = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=expect, allow_extra_data=False
            )
        except zstandard.ZstdError:
            pass  # skippable or several frames, a different size, or corrupt: the steps tell which
        else:
            if len(whole) == expect:
                return whole
    view = memoryview(bytes(data))
    out = bytearray()
    pos = 0
    try:
        while pos < len(view):
            if want is not None and len(out) >= want:
                break
            if is_skippable_magic(bytes(view[pos : pos + 4])):
                pos += SKIPPABLE_HEADER_SIZE + parse_skippable_header(bytes(view[pos : pos + 8]))
                if pos > len(view):
                    raise FormatError(f"{what}: truncated skippable frame")
                continue
            dobj = zstandard.ZstdDecompressor().decompressobj()
            while not dobj.eof:
                if pos >= len(view):
                    raise FormatError(f"{what}: truncated zstd frame")
                step = view[pos : pos + _STEP]
                out += dobj.decompress(step)
                pos += len(step) - (len(dobj.unused_data) if dobj.eof else 0)
                if len(out) > max_output:
                    raise FormatError(f"{what}: decompresses to more than the {max_output}-byte cap")
                if want is not None and len(out) >= want:
                    break
    except zstandard.ZstdError as exc:
        raise FormatError(f"{what}: invalid zstd data: {exc}") from exc
    if want is not None:
        if len(out) < want:
            raise FormatError(f"{what}: decodes to {len(out)} bytes, expected at least {want}")
        return bytes(out[:want])
    return bytes(out)


def _check(data: bytes, expected: str, what: str) -> None:
    actual = sha256_digest(data)
    if actual != expected:
        raise VerificationError(f"{what} digest mismatch: expected {expected}, got {actual}")


def decompress_and_verify_toc(
    compressed: bytes, location: TocLocation, *, max_size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Verify and decompress TOC bytes; return the TOC JSON (safe to cache and parse).

    Args:
        compressed: for zstd dialects the blob range ``[location.offset, +location.length)``; for
            ``ESTARGZ_GZIP`` the range ``[toc_offset, blob_size - footer_size)`` (the gzip member).
        location: from :func:`~fs.format.annotations.toc_location_from_annotations` (with the footer
            applied if it :attr:`~TocLocation.needs_footer`).

    Raises:
        VerificationError: a digest does not match (compressed bytes for c/storage, checked before
            decompressing; decompressed JSON for eStargz; the optional stargz compressed digest).
        FormatError: wrong length, corrupt compression, or decompressed length ≠ ``uncompressed_length``.
        UnsupportedFormat: bigger than ``max_size`` (default: ``limits.max_toc_compressed_size`` for the
            compressed bytes, ``limits.max_toc_size`` for the JSON).
    """
    max_compressed = limits.max_toc_compressed_size if max_size is None else max_size
    max_size = limits.max_toc_size if max_size is None else max_size
    compressed = bytes(compressed)
    if len(compressed) > max_compressed:
        raise UnsupportedFormat(
            f"compressed TOC of {len(compressed)} bytes exceeds the {max_compressed}-byte cap "
            "(max-toc-compressed-size)"
        )
    if location.length and len(compressed) != location.length:
        raise FormatError(f"TOC is {len(compressed)} bytes, the TOC position says {location.length}")
    if location.uncompressed_length > max_size:
        raise UnsupportedFormat(
            f"TOC of {location.uncompressed_length} bytes exceeds the {max_size}-byte cap (max-toc-size)"
        )
    if location.digest_of == "compressed":
        _check(compressed, location.digest, "TOC")
    if location.compressed_digest:
        _check(compressed, location.compressed_digest, "compressed TOC")
    if location.dialect is Dialect.ESTARGZ_GZIP:
        data = extract_gzip_toc(compressed, max_size=max_size)
    else:
        data = zstd_decompress(
            compressed, max_output=max_size, what="TOC", expect=location.uncompressed_length
        )
    if location.uncompressed_length and len(data) != location.uncompressed_length:
        raise FormatError(
            f"TOC decompresses to {len(data)} bytes, the TOC position says {location.uncompressed_length}"
        )
    if location.digest_of == "uncompressed":
        _check(data, location.digest, "TOC")
    return data


def decode_and_verify_toc(
    compressed: bytes, location: TocLocation, *, max_size: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> Toc:
    """:func:`decompress_and_verify_toc`, then :func:`~fs.format.tocparse.parse_toc` in the location's
    dialect (at most ``limits.max_toc_entries`` entries)."""
    data = decompress_and_verify_toc(compressed, location, max_size=max_size, limits=limits)
    return parse_toc(data, location.dialect, max_size=len(data), max_entries=limits.max_toc_entries)


def decompress_and_verify_tar_split(
    compressed: bytes, digest: str, *, uncompressed_length: int = 0, max_size: int = MAX_TAR_SPLIT_SIZE
) -> bytes:
    """Verify ``sha256(compressed) == digest`` (the TOC's ``tarSplitDigest``), then decompress.

    Raises:
        VerificationError: digest mismatch (checked before decompressing).
        FormatError: corrupt zstd, over ``max_size``, or length ≠ ``uncompressed_length`` (when non-zero).
    """
    if not digest:
        raise VerificationError("tar-split has no digest to verify against")
    _check(bytes(compressed), digest, "tar-split")
    data = zstd_decompress(compressed, max_output=max_size, what="tar-split", expect=uncompressed_length)
    if uncompressed_length and len(data) != uncompressed_length:
        raise FormatError(f"tar-split decompresses to {len(data)} bytes, expected {uncompressed_length}")
    return data
