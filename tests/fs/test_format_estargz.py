"""gzip eStargz: footer bytes, TOC extraction, and a synthetic blob read end to end."""

from __future__ import annotations

import gzip
import tarfile
import zlib

import pytest

from fs.digest import sha256_digest
from fs.errors import FormatError, VerificationError
from fs.format import (
    Dialect,
    Footer,
    Toc,
    TocEntry,
    build_index,
    decode_and_verify_toc,
    extract_gzip_toc,
    footer_bytes,
    parse_footer,
    serialize_toc,
    toc_location_from_annotations,
)
from fs.format.annotations import STARGZ_TOC_DIGEST
from fs.format.estargz import GZIP_FOOTER_SIZE, LEGACY_GZIP_FOOTER_SIZE

GZIP_MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"


def tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def toc_member(json_bytes: bytes, name: str = "stargz.index.json") -> bytes:
    return gzip.compress(tar_header(name, len(json_bytes)) + pad(json_bytes) + bytes(1024), mtime=0)


def build_blob(content: bytes) -> tuple[bytes, bytes, int]:
    """A minimal eStargz: [gz(header)][gz(payload)][gz(TOC tar)][footer]. Returns blob, TOC JSON, offset."""
    head = gzip.compress(tar_header("dir/hello.txt", len(content)), mtime=0)
    payload = gzip.compress(pad(content), mtime=0)
    offset = len(head)
    toc = Toc(1, [TocEntry("dir", "dir/", mode=0o755), TocEntry(
        "reg", "dir/hello.txt", size=len(content), mode=0o644, offset=offset,
        digest=sha256_digest(content), chunk_digest=sha256_digest(content),
    )])  # fmt: skip
    toc_json = serialize_toc(toc, Dialect.ESTARGZ_GZIP)
    toc_offset = len(head) + len(payload)
    blob = (
        head + payload + toc_member(toc_json) + footer_bytes(Footer(Dialect.ESTARGZ_GZIP, toc_offset, 0, 0))
    )
    return blob, toc_json, toc_offset


def test_footer_bytes_are_a_valid_empty_gzip_member():
    tail = footer_bytes(Footer(Dialect.ESTARGZ_GZIP, 0x1234, 0, 0))
    assert len(tail) == GZIP_FOOTER_SIZE
    assert gzip.decompress(tail) == b""
    assert tail[10:16] == b"\x1a\x00SG\x16\x00" and tail[16:38] == b"0000000000001234STARGZ"
    assert parse_footer(tail, 0x1234 + 100) == Footer(Dialect.ESTARGZ_GZIP, 0x1234, 100 - 51, 0)


def test_legacy_47_byte_footer():
    # legacy stargz: FEXTRA is the bare "%016xSTARGZ" (no SI1/SI2/LEN sub-field header)
    extra = b"%016xSTARGZ" % 77
    tail = b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\xff" + len(extra).to_bytes(2, "little") + extra
    tail += b"\x01\x00\x00\xff\xff" + bytes(8)
    assert len(tail) == LEGACY_GZIP_FOOTER_SIZE
    assert parse_footer(b"junk" + tail, 500).toc_offset == 77


def test_bad_gzip_footers():
    good = footer_bytes(Footer(Dialect.ESTARGZ_GZIP, 10, 0, 0))
    with pytest.raises(FormatError, match="outside"):
        parse_footer(good, 60)  # TOC offset would be inside the footer
    bad = good.replace(b"STARGZ", b"STARGX")
    with pytest.raises(FormatError, match="no zstd:chunked or eStargz footer"):
        parse_footer(bad, 1000)
    with pytest.raises(FormatError, match="too short"):
        parse_footer(good[-20:], 1000)


def test_synthetic_gzip_estargz_end_to_end():
    content = b"hello, lazy world\n" * 50
    blob, toc_json, toc_offset = build_blob(content)
    footer = parse_footer(blob[-72:], len(blob))
    assert footer.dialect is Dialect.ESTARGZ_GZIP and footer.toc_offset == toc_offset
    loc = toc_location_from_annotations({STARGZ_TOC_DIGEST: sha256_digest(toc_json)}, GZIP_MEDIA)
    assert loc.dialect is Dialect.ESTARGZ_GZIP and loc.needs_footer
    loc = loc.with_footer(footer)
    member = blob[loc.offset : loc.offset + loc.length]
    toc = decode_and_verify_toc(member, loc)
    ix = build_index(toc, Dialect.ESTARGZ_GZIP, len(blob), toc_offset=loc.offset)
    node = ix.lookup("dir/hello.txt")
    (chunk,) = node.chunks
    assert chunk.compressed_end == toc_offset  # gzip: the data region ends where the TOC member starts
    d = zlib.decompressobj(wbits=31)
    data = d.decompress(blob[chunk.compressed_offset : chunk.compressed_end])[: chunk.size]
    assert sha256_digest(data) == chunk.digest == node.digest
    # a different TOC digest is refused
    bad = toc_location_from_annotations({STARGZ_TOC_DIGEST: sha256_digest(b"x")}, GZIP_MEDIA).with_footer(
        footer
    )
    with pytest.raises(VerificationError):
        decode_and_verify_toc(member, bad)


def test_extract_gzip_toc_rejects():
    with pytest.raises(FormatError, match=r"expected 'stargz\.index\.json'"):
        extract_gzip_toc(toc_member(b"{}", name="other.json"), max_size=1 << 20)
    with pytest.raises(FormatError, match="cap"):
        extract_gzip_toc(toc_member(b"{" + b" " * 5000 + b"}"), max_size=1000)
    with pytest.raises(FormatError, match="not valid gzip"):
        extract_gzip_toc(b"\x1f\x8b\x08\x00garbage-garbage", max_size=1 << 20)
    member = bytearray(gzip.decompress(toc_member(b"{}")))
    member[148] ^= 1  # break the tar checksum
    with pytest.raises(FormatError, match="checksum"):
        extract_gzip_toc(gzip.compress(bytes(member)), max_size=1 << 20)
    assert extract_gzip_toc(toc_member(b"{}"), max_size=1 << 20) == b"{}"
