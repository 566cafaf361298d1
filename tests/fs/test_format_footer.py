"""fs.digest, fs.format.frames and fs.format.footer: exact bytes, classification, sanity checks."""

from __future__ import annotations

import struct

import pytest

from fs.digest import EMPTY_SHA256, Hasher, is_digest, parse_digest, sha256_digest, verify_digest
from fs.errors import FormatError, VerificationError
from fs.format import Dialect, Footer, footer_bytes, parse_footer, skippable_frame
from fs.format.footer import FOOTER_FETCH_SIZE, MAGIC_V1, MAGIC_V2
from fs.format.frames import SKIPPABLE_MAGIC, is_skippable_magic, parse_skippable_header, skippable_header

HEX = "ab" * 32


# -- digest -----------------------------------------------------------------------------------------


def test_sha256_digest_and_hasher():
    assert sha256_digest(b"") == EMPTY_SHA256
    h = Hasher()
    h.update(b"a")
    snapshot = h.copy()
    h.update(b"b")
    assert h.digest() == sha256_digest(b"ab") and h.size == 2
    assert snapshot.digest() == sha256_digest(b"a")
    assert Hasher([b"x", b"y"]).digest() == sha256_digest(b"xy")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        HEX,
        "sha512:" + HEX,
        "sha256:" + HEX.upper(),
        "sha256:" + HEX[:-1],
        "sha256:" + HEX + "0",
        "sha256:" + "g" * 64,
    ],
)
def test_parse_digest_rejects(bad):
    with pytest.raises(FormatError):
        parse_digest(bad)
    assert not is_digest(bad)


def test_parse_and_verify_digest():
    assert parse_digest("sha256:" + HEX) == ("sha256", HEX)
    verify_digest(b"", EMPTY_SHA256)
    with pytest.raises(VerificationError, match="chunk 3"):
        verify_digest(b"x", EMPTY_SHA256, what="chunk 3")


# -- frames -----------------------------------------------------------------------------------------


def test_skippable_frame_bytes():
    assert skippable_frame(b"abc") == b"\x50\x2a\x4d\x18\x03\x00\x00\x00abc"
    assert parse_skippable_header(skippable_header(70000)) == 70000
    assert is_skippable_magic(b"\x5f\x2a\x4d\x18") and not is_skippable_magic(b"\x28\xb5\x2f\xfd")
    with pytest.raises(FormatError):
        skippable_header(1 << 32)
    with pytest.raises(FormatError):
        parse_skippable_header(b"\x28\xb5\x2f\xfd\0\0\0\0")


# -- footer -----------------------------------------------------------------------------------------


def cstorage_footer() -> tuple[Footer, int]:
    # data region 1000 bytes; SF(TOC 50) at 1000; SF(tar-split 30) at 1058; SF(footer) at 1088
    f = Footer(Dialect.CSTORAGE, 1008, 50, 200, 1066, 30, 90)
    return f, 1066 + 30 + 72


def test_cstorage_footer_exact_bytes_and_roundtrip():
    f, size = cstorage_footer()
    tail = footer_bytes(f)
    assert len(tail) == 72 == f.size == FOOTER_FETCH_SIZE
    assert tail[:8] == SKIPPABLE_MAGIC + b"\x40\0\0\0"
    assert tail[-8:] == MAGIC_V2 == b"GNUlInUx"
    assert struct.unpack("<7Q", tail[8:64]) == (1008, 50, 200, 1, 1066, 30, 90)
    assert parse_footer(tail, size) == f
    assert parse_footer(b"\0" * 500 + tail, size) == f  # only the end of a longer tail is read


def test_v1_footer_exact_bytes_and_roundtrip():
    for dialect in (Dialect.CSTORAGE_V1, Dialect.STARGZ_ZSTD):
        tail = footer_bytes(Footer(dialect, 1008, 50, 200))
        assert len(tail) == 48
        assert tail[:8] == SKIPPABLE_MAGIC + b"\x28\0\0\0" and tail[-8:] == MAGIC_V1 == b"GnUlInUx"
        assert parse_footer(tail, 1008 + 50 + 48) == Footer(Dialect.CSTORAGE_V1, 1008, 50, 200)
    with pytest.raises(FormatError, match="tar-split"):
        footer_bytes(Footer(Dialect.CSTORAGE_V1, 1008, 50, 200, 1066, 1, 1))


def test_v147_56_byte_footer():
    payload = struct.pack("<4Q", 1008, 50, 200, 1) + MAGIC_V1 + bytes(16)
    tail = skippable_header(56) + payload
    size = 1008 + 50 + 8 + 40 + len(tail)  # tar-split frame between TOC and footer
    assert parse_footer(tail, size) == Footer(Dialect.CSTORAGE, 1008, 50, 200)
    with pytest.raises(FormatError):
        parse_footer(tail, 1008 + 50 + 10)  # TOC would overlap the footer


def test_truncated_footer():
    f, size = cstorage_footer()
    tail = footer_bytes(f)
    with pytest.raises(FormatError, match="truncated"):
        parse_footer(tail[-40:], size)
    with pytest.raises(FormatError):
        parse_footer(b"GnUl", size)


def test_wrong_magic():
    f, size = cstorage_footer()
    tail = footer_bytes(f)[:-8] + b"GNUlInUX"
    with pytest.raises(FormatError, match="no zstd:chunked or eStargz footer"):
        parse_footer(tail, size)


def test_wrong_skippable_header_and_type():
    f, size = cstorage_footer()
    tail = bytearray(footer_bytes(f))
    bad_frame = bytes(tail)
    bad_frame = b"\x28\xb5\x2f\xfd" + bad_frame[4:]
    with pytest.raises(FormatError, match="skippable"):
        parse_footer(bad_frame, size)
    bad_len = tail[:4] + b"\x41\0\0\0" + tail[8:]
    with pytest.raises(FormatError, match="declares 65"):
        parse_footer(bytes(bad_len), size)
    tail[32:40] = struct.pack("<Q", 2)
    with pytest.raises(FormatError, match="manifest type 2"):
        parse_footer(bytes(tail), size)


@pytest.mark.parametrize(
    "footer",
    [
        Footer(Dialect.CSTORAGE, 1008, 50, 200, 1066, 30, 90),  # blob size off by one (checked below)
        Footer(Dialect.CSTORAGE, 1008, 51, 200, 1066, 30, 90),  # TOC overlaps tar-split frame header
        Footer(Dialect.CSTORAGE, 0, 1058, 200, 1066, 30, 90),  # TOC offset inside the first frame header
    ],
)
def test_inconsistent_cstorage_offsets(footer):
    _, size = cstorage_footer()
    with pytest.raises(FormatError):
        parse_footer(footer_bytes(footer), size + (1 if footer.toc_length == 50 else 0))


def test_inconsistent_v1_offsets_and_blob_size():
    tail = footer_bytes(Footer(Dialect.STARGZ_ZSTD, 1008, 50, 200))
    with pytest.raises(FormatError, match="does not match blob size"):
        parse_footer(tail, 1008 + 50 + 49)
    with pytest.raises(FormatError, match="longer than the blob"):
        parse_footer(tail, 40)


def test_footer_field_range():
    with pytest.raises(FormatError):
        footer_bytes(Footer(Dialect.CSTORAGE, -1, 50, 200, 1066, 30, 90))
