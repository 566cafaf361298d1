"""Blob footers: build and classify the tail of a zstd:chunked / eStargz blob (FORMAT.md §1.2, §2.1, §4.3).

The footer is *unauthenticated*: it only says where the TOC is. Trust comes from the TOC digest in the
manifest annotations (see :mod:`fs.format.annotations`). The checks here only make sure the numbers are
self-consistent with the blob size, so a reader never asks for bytes outside the blob.

Footer forms recognised by :func:`parse_footer` (by the blob's last bytes):

=====================  ===========  =======================================  ==========================
form                   tail bytes   magic / position                         returned ``Footer.dialect``
=====================  ===========  =======================================  ==========================
c/storage ≥ 1.50       72 (8+64)    ``GNUlInUx`` at the very end             ``CSTORAGE``
c/storage 1.47–1.49    64 (8+56)    ``GnUlInUx`` followed by 16 zero bytes   ``CSTORAGE`` (no tar-split
                                                                             position in the footer)
c/storage ≤1.46 and    48 (8+40)    ``GnUlInUx`` at the very end             ``CSTORAGE_V1`` (*)
stargz ``zstdchunked``
gzip eStargz           51 / 47      gzip member with ``STARGZ`` extra field  ``ESTARGZ_GZIP``
=====================  ===========  =======================================  ==========================

(*) The 40-byte footer is byte-identical for c/storage ≤ 1.46 and stargz-snapshotter's zstdchunked; only
the TOC (compact c/storage JSON vs tab-indented eStargz JSON) or the annotations tell them apart. Use
:func:`fs.format.toc.sniff_toc_dialect` on the decompressed TOC, or the annotations, to refine it.
"""

from __future__ import annotations

import dataclasses
import struct

from fs.errors import FormatError
from fs.format.dialect import Dialect
from fs.format.frames import SKIPPABLE_HEADER_SIZE, SKIPPABLE_MAGIC, skippable_header

__all__ = [
    "FOOTER_FETCH_SIZE",
    "MAGIC_V1",
    "MAGIC_V2",
    "MANIFEST_TYPE_CRFS",
    "TAIL_PREFETCH_SIZE",
    "Dialect",
    "Footer",
    "footer_bytes",
    "parse_footer",
]

#: c/storage ≥ v1.50 footer magic (capital N).
MAGIC_V2 = b"GNUlInUx"
#: c/storage ≤ v1.49 and stargz zstdchunked footer magic.
MAGIC_V1 = b"GnUlInUx"
#: The only manifest type either writer emits.
MANIFEST_TYPE_CRFS = 1

_V2_PAYLOAD = 64
_V1_PAYLOAD = 40
_V147_PAYLOAD = 56

#: Tail bytes needed to classify any supported footer (the largest form, c/storage's 8 + 64).
FOOTER_FETCH_SIZE = SKIPPABLE_HEADER_SIZE + _V2_PAYLOAD
#: A larger tail worth fetching in one request: small TOCs then arrive together with the footer.
TAIL_PREFETCH_SIZE = 512 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Footer:
    """Where the TOC (and tar-split) live, as told by the blob's footer.

    Offsets are absolute blob offsets of the *payload* (8 bytes past the skippable-frame start); lengths
    are compressed lengths. For gzip eStargz the footer only carries the TOC offset: ``toc_length`` is then
    derived (the TOC gzip member extends up to the footer) and ``toc_uncompressed_length`` is 0; only
    ``toc_offset`` is written back by :func:`footer_bytes`. Tar-split fields are 0 when the footer does not
    carry them.
    """

    dialect: Dialect
    toc_offset: int
    toc_length: int
    toc_uncompressed_length: int
    tar_split_offset: int = 0
    tar_split_length: int = 0
    tar_split_uncompressed_length: int = 0

    @property
    def size(self) -> int:
        """Bytes the footer occupies at the end of the blob (skippable header included; 51 for gzip, also
        for the legacy 47-byte gzip footer: use ``toc_offset + toc_length`` to find where a gzip TOC ends)."""
        if self.dialect is Dialect.CSTORAGE:
            return SKIPPABLE_HEADER_SIZE + _V2_PAYLOAD
        if self.dialect is Dialect.ESTARGZ_GZIP:
            from fs.format.estargz import GZIP_FOOTER_SIZE

            return GZIP_FOOTER_SIZE
        return SKIPPABLE_HEADER_SIZE + _V1_PAYLOAD


def _check_u64(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << 63):
        raise FormatError(f"footer field {name} = {value!r} is not a non-negative int64")


def footer_bytes(footer: Footer) -> bytes:
    """Serialize the complete blob tail for ``footer``, skippable-frame header included.

    * ``CSTORAGE``: 72 bytes (8 + 64), magic ``GNUlInUx``, tar-split fields written as given.
    * ``CSTORAGE_V1`` / ``STARGZ_ZSTD``: 48 bytes (8 + 40), magic ``GnUlInUx``; tar-split fields must be 0.
    * ``ESTARGZ_GZIP``: the 51-byte gzip footer (only ``toc_offset`` is encoded).

    Raises:
        FormatError: a field negative / too large, or tar-split fields given for a 40-byte form.
    """
    for field in dataclasses.fields(Footer):
        if field.name != "dialect":
            _check_u64(field.name, getattr(footer, field.name))
    if footer.dialect is Dialect.ESTARGZ_GZIP:
        from fs.format.estargz import gzip_footer_bytes

        return gzip_footer_bytes(footer.toc_offset)
    head = (footer.toc_offset, footer.toc_length, footer.toc_uncompressed_length, MANIFEST_TYPE_CRFS)
    if footer.dialect is Dialect.CSTORAGE:
        payload = struct.pack(
            "<7Q",
            *head,
            footer.tar_split_offset,
            footer.tar_split_length,
            footer.tar_split_uncompressed_length,
        )
        return skippable_header(_V2_PAYLOAD) + payload + MAGIC_V2
    if footer.tar_split_offset or footer.tar_split_length or footer.tar_split_uncompressed_length:
        raise FormatError(f"a {footer.dialect.value} footer cannot carry a tar-split position")
    return skippable_header(_V1_PAYLOAD) + struct.pack("<4Q", *head) + MAGIC_V1


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Classify and parse the footer at the end of a blob (FORMAT.md §4.3 step 1).

    Args:
        tail: the last ``len(tail)`` bytes of the blob (at least :data:`FOOTER_FETCH_SIZE`, or the whole
            blob if smaller); only its end is looked at.
        blob_size: total blob size ``S``; every offset is checked against it.

    Returns:
        The parsed :class:`Footer` (see the module docstring for which dialect each form maps to).

    Raises:
        FormatError: tail shorter than the footer, unknown magic, wrong skippable header, manifest type
            other than 1, or offsets/lengths inconsistent with ``blob_size``.
    """
    tail = bytes(tail)
    if blob_size < len(tail):
        raise FormatError(f"footer tail of {len(tail)} bytes is longer than the blob ({blob_size} bytes)")
    if len(tail) < 8:
        raise FormatError(f"blob tail too short to hold a footer ({len(tail)} bytes)")
    if tail[-8:] == MAGIC_V2:
        return _parse_v2(tail, blob_size)
    if tail[-8:] == MAGIC_V1:
        return _parse_v1(tail, blob_size, _V1_PAYLOAD)
    if len(tail) >= 24 and tail[-24:-16] == MAGIC_V1 and tail[-16:] == bytes(16):
        return _parse_v1(tail, blob_size, _V147_PAYLOAD)
    from fs.format.estargz import parse_gzip_footer

    return parse_gzip_footer(tail, blob_size)


def _frame_payload(tail: bytes, payload_size: int, what: str) -> bytes:
    need = SKIPPABLE_HEADER_SIZE + payload_size
    if len(tail) < need:
        raise FormatError(f"{what} footer truncated: need the last {need} bytes, have {len(tail)}")
    frame = tail[-need:]
    if frame[:4] != SKIPPABLE_MAGIC:
        raise FormatError(f"{what} footer is not inside a zstd skippable frame (got {frame[:4].hex()})")
    (declared,) = struct.unpack_from("<I", frame, 4)
    if declared != payload_size:
        raise FormatError(f"{what} footer frame declares {declared} bytes, expected {payload_size}")
    return frame[SKIPPABLE_HEADER_SIZE:]


def _check_toc_range(toc_offset: int, toc_length: int, limit: int, blob_size: int) -> None:
    if toc_offset < SKIPPABLE_HEADER_SIZE or toc_length == 0:
        raise FormatError(f"footer: implausible TOC position offset={toc_offset} length={toc_length}")
    if toc_offset + toc_length > limit:
        raise FormatError(
            f"footer: TOC [{toc_offset}, {toc_offset + toc_length}) runs past its limit {limit} "
            f"(blob size {blob_size})"
        )


def _parse_v2(tail: bytes, blob_size: int) -> Footer:
    payload = _frame_payload(tail, _V2_PAYLOAD, "c/storage")
    off, clen, ulen, mtype, ts_off, ts_clen, ts_ulen = struct.unpack_from("<7Q", payload)
    if mtype != MANIFEST_TYPE_CRFS:
        raise FormatError(f"footer: unsupported manifest type {mtype} (expected 1)")
    tail_size = SKIPPABLE_HEADER_SIZE + _V2_PAYLOAD
    if ts_off + ts_clen + tail_size != blob_size:
        raise FormatError(
            f"footer: tar-split end {ts_off}+{ts_clen}+{tail_size} does not match blob size {blob_size}"
        )
    if off + clen + SKIPPABLE_HEADER_SIZE != ts_off:
        raise FormatError(f"footer: TOC end {off}+{clen}+8 does not meet the tar-split offset {ts_off}")
    _check_toc_range(off, clen, ts_off - SKIPPABLE_HEADER_SIZE, blob_size)
    return Footer(Dialect.CSTORAGE, off, clen, ulen, ts_off, ts_clen, ts_ulen)


def _parse_v1(tail: bytes, blob_size: int, payload_size: int) -> Footer:
    payload = _frame_payload(tail, payload_size, "zstd:chunked")
    off, clen, ulen, mtype = struct.unpack_from("<4Q", payload)
    if mtype != MANIFEST_TYPE_CRFS:
        raise FormatError(f"footer: unsupported manifest type {mtype} (expected 1)")
    tail_size = SKIPPABLE_HEADER_SIZE + payload_size
    if payload_size == _V1_PAYLOAD:
        if off + clen + tail_size != blob_size:
            raise FormatError(
                f"footer: TOC end {off}+{clen}+{tail_size} does not match blob size {blob_size}"
            )
        return Footer(Dialect.CSTORAGE_V1, off, clen, ulen)
    # c/storage 1.47-1.49: a tar-split frame may sit between the TOC and the footer; position unknown.
    _check_toc_range(off, clen, blob_size - tail_size, blob_size)
    return Footer(Dialect.CSTORAGE, off, clen, ulen)
