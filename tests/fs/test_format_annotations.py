"""fs.format.annotations and fs.format.verify: trust anchors, consistency rules, verify-before-trust."""

from __future__ import annotations

import pytest
import zstandard

from fs.digest import sha256_digest
from fs.errors import FormatError, UnsupportedFormat, VerificationError
from fs.format import (
    Dialect,
    Footer,
    TocLocation,
    annotations_for,
    decode_and_verify_toc,
    decompress_and_verify_tar_split,
    decompress_and_verify_toc,
    serialize_toc,
    toc_location_from_annotations,
)
from fs.format.annotations import (
    CSTORAGE_MANIFEST_CHECKSUM as NEW_SUM,
)
from fs.format.annotations import (
    CSTORAGE_MANIFEST_POSITION as NEW_POS,
)
from fs.format.annotations import (
    CSTORAGE_TARSPLIT_POSITION as NEW_TS,
)
from fs.format.annotations import (
    ESTARGZ_UNCOMPRESSED_SIZE,
    STARGZ_TOC_DIGEST,
    V1_MANIFEST_CHECKSUM,
    V1_MANIFEST_POSITION,
)
from fs.format.toc import MAX_TOC_SIZE, Toc, TocEntry
from fs.format.verify import zstd_decompress

ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def test_plain_layers_are_none():
    assert toc_location_from_annotations(None, ZSTD) is None
    assert toc_location_from_annotations({"org.opencontainers.image.title": "x"}, GZIP) is None


def test_cstorage_location():
    ann = {NEW_SUM: D1, NEW_POS: "100:50:200:1", NEW_TS: "158:30:90"}
    loc = toc_location_from_annotations(ann, ZSTD, blob_size=158 + 30 + 72)
    assert loc == TocLocation(Dialect.CSTORAGE, 100, 50, 200, D1, "compressed", 158, 30, 90)
    assert annotations_for(Dialect.CSTORAGE, loc, D1) == ann
    footer = Footer(Dialect.CSTORAGE, 100, 50, 200, 158, 30, 90)
    assert annotations_for(Dialect.CSTORAGE, footer, D1) == ann
    assert loc.with_footer(footer) is loc
    with pytest.raises(FormatError, match="disagrees"):
        loc.with_footer(Footer(Dialect.CSTORAGE, 101, 50, 200, 158, 30, 90))


def test_v1_and_stargz_locations():
    v1 = toc_location_from_annotations({V1_MANIFEST_CHECKSUM: D1, V1_MANIFEST_POSITION: "8:5:9:1"}, ZSTD)
    assert (v1.dialect, v1.digest_of) == (Dialect.CSTORAGE_V1, "compressed")
    # Dialect B: old-prefix checksum + stargz digest together is fine
    ann = {
        V1_MANIFEST_CHECKSUM: D1,
        V1_MANIFEST_POSITION: "8:5:9:1",
        STARGZ_TOC_DIGEST: D2,
        ESTARGZ_UNCOMPRESSED_SIZE: "77",
    }
    sg = toc_location_from_annotations(ann, ZSTD)
    assert (sg.dialect, sg.digest, sg.digest_of, sg.compressed_digest) == (
        Dialect.STARGZ_ZSTD,
        D2,
        "uncompressed",
        D1,
    )
    assert sg.uncompressed_size == 77 and not sg.needs_footer
    # stargz without position: the footer supplies it
    nopos = toc_location_from_annotations({STARGZ_TOC_DIGEST: D2}, ZSTD)
    assert nopos.needs_footer
    assert nopos.with_footer(Footer(Dialect.CSTORAGE_V1, 8, 5, 9)).length == 5
    gz = toc_location_from_annotations({STARGZ_TOC_DIGEST: D2}, GZIP)
    assert gz.dialect is Dialect.ESTARGZ_GZIP and gz.needs_footer


@pytest.mark.parametrize(
    ("ann", "media", "match"),
    [
        ({NEW_SUM: D1, NEW_POS: "8:5:9:1", STARGZ_TOC_DIGEST: D2}, ZSTD, "both"),
        ({NEW_SUM: D1}, ZSTD, "without"),
        ({NEW_POS: "8:5:9:1"}, ZSTD, "without a TOC checksum"),
        ({V1_MANIFEST_CHECKSUM: D1}, ZSTD, "without"),
        ({NEW_SUM: D1, NEW_POS: "8:5:9:2"}, ZSTD, "manifest type 2"),
        ({NEW_SUM: D1, NEW_POS: "8:5:9"}, ZSTD, "4 colon-separated"),
        ({NEW_SUM: D1, NEW_POS: "8:-5:9:1"}, ZSTD, "decimal"),
        ({NEW_SUM: D1, NEW_POS: "0:5:9:1"}, ZSTD, "implausible"),
        ({NEW_SUM: "sha256:xyz", NEW_POS: "8:5:9:1"}, ZSTD, "malformed digest"),
        ({NEW_SUM: D1, NEW_POS: "8:5:9:1", NEW_TS: "1:2"}, ZSTD, "3 colon-separated"),
        ({NEW_SUM: D1, NEW_POS: "8:5:9:1"}, GZIP, "media type"),
        ({STARGZ_TOC_DIGEST: D2, ESTARGZ_UNCOMPRESSED_SIZE: "x"}, ZSTD, "decimal"),
    ],
)
def test_inconsistent_annotations(ann, media, match):
    with pytest.raises(FormatError, match=match):
        toc_location_from_annotations(ann, media)


def test_position_outside_blob_and_oversized_toc():
    ann = {NEW_SUM: D1, NEW_POS: "100:50:200:1"}
    with pytest.raises(FormatError, match="exceeds blob size"):
        toc_location_from_annotations(ann, ZSTD, blob_size=149)
    with pytest.raises(UnsupportedFormat):
        toc_location_from_annotations({NEW_SUM: D1, NEW_POS: f"100:{MAX_TOC_SIZE + 1}:200:1"}, ZSTD)


def test_annotations_for_requires_stargz_extras():
    loc = Footer(Dialect.STARGZ_ZSTD, 8, 5, 9)
    with pytest.raises(FormatError):
        annotations_for(Dialect.STARGZ_ZSTD, loc, D2, uncompressed_size=1)
    with pytest.raises(FormatError):
        annotations_for(Dialect.STARGZ_ZSTD, loc, D2, compressed_toc_digest=D1)
    got = annotations_for(Dialect.STARGZ_ZSTD, loc, D2, compressed_toc_digest=D1, uncompressed_size=10)
    assert got == {
        STARGZ_TOC_DIGEST: D2,
        ESTARGZ_UNCOMPRESSED_SIZE: "10",
        V1_MANIFEST_CHECKSUM: D1,
        V1_MANIFEST_POSITION: "8:5:9:1",
    }


# -- verify -----------------------------------------------------------------------------------------

TOC = Toc(1, [TocEntry("dir", "a/")])


def cs_location(compressed: bytes, raw: bytes, **kw) -> TocLocation:
    return TocLocation(
        Dialect.CSTORAGE, 8, len(compressed), len(raw), sha256_digest(compressed), "compressed", **kw
    )


def test_verify_cstorage_and_stargz():
    raw = serialize_toc(TOC, Dialect.CSTORAGE)
    comp = zstandard.ZstdCompressor().compress(raw)
    assert decode_and_verify_toc(comp, cs_location(comp, raw)) == TOC
    raw_sg = serialize_toc(TOC, Dialect.STARGZ_ZSTD)
    comp_sg = zstandard.ZstdCompressor().compress(raw_sg)
    loc = TocLocation(
        Dialect.STARGZ_ZSTD, 8, len(comp_sg), len(raw_sg), sha256_digest(raw_sg), "uncompressed"
    )
    assert decode_and_verify_toc(comp_sg, loc) == TOC


def test_digest_mismatch_is_verification_error():
    raw = serialize_toc(TOC, Dialect.CSTORAGE)
    comp = zstandard.ZstdCompressor().compress(raw)
    tampered = zstandard.ZstdCompressor(level=1).compress(raw.replace(b"a/", b"b/"))
    loc = cs_location(comp, raw)
    with pytest.raises(VerificationError):
        decompress_and_verify_toc(tampered[: len(comp)].ljust(len(comp), b"\0"), loc)
    sg = TocLocation(Dialect.STARGZ_ZSTD, 8, len(comp), len(raw), sha256_digest(b"other"), "uncompressed")
    with pytest.raises(VerificationError):
        decompress_and_verify_toc(comp, sg)
    both = TocLocation(Dialect.STARGZ_ZSTD, 8, len(comp), len(raw), sha256_digest(raw), "uncompressed",
                       compressed_digest=D1)  # fmt: skip
    with pytest.raises(VerificationError, match="compressed TOC"):
        decompress_and_verify_toc(comp, both)


def test_verify_length_checks_and_caps():
    raw = serialize_toc(TOC, Dialect.CSTORAGE)
    comp = zstandard.ZstdCompressor().compress(raw)
    loc = cs_location(comp, raw)
    with pytest.raises(FormatError, match="position says"):
        decompress_and_verify_toc(comp + b"\0", loc)
    wrong_ulen = TocLocation(Dialect.CSTORAGE, 8, len(comp), len(raw) + 1, sha256_digest(comp), "compressed")
    with pytest.raises(FormatError, match="decompresses to"):
        decompress_and_verify_toc(comp, wrong_ulen)
    with pytest.raises(FormatError, match="cap"):
        decompress_and_verify_toc(comp, cs_location(comp, b""), max_size=len(raw) - 1)
    with pytest.raises(UnsupportedFormat):
        decompress_and_verify_toc(comp, loc, max_size=len(comp) - 1)
    garbage = b"\x28\xb5\x2f\xfd" + bytes(20)
    with pytest.raises(FormatError, match="truncated"):
        decompress_and_verify_toc(garbage, cs_location(garbage, b""))
    for bad in (comp[:-1], b"not zstd at all"):
        with pytest.raises(FormatError):
            decompress_and_verify_toc(bad, cs_location(bad, b""))


def test_zstd_decompress_reads_across_frames_and_skips_skippable():
    from fs.format import skippable_frame

    c = zstandard.ZstdCompressor()
    data = c.compress(b"abc") + skippable_frame(b"ignored") + c.compress(b"def")
    assert zstd_decompress(data, max_output=6) == b"abcdef"
    with pytest.raises(FormatError):
        zstd_decompress(data, max_output=5)
    assert zstd_decompress(data, max_output=6, want=4) == b"abcd"
    with pytest.raises(FormatError):
        zstd_decompress(data, max_output=100, want=7)
    with pytest.raises(FormatError, match="cap"):  # a bomb stops at the cap
        zstd_decompress(c.compress(bytes(64 << 20)), max_output=1 << 20)


def test_zstd_decompress_with_expected_size_is_exact_and_bounded():
    """``expect`` (a TOC position's uncompressed length) decodes one frame of exactly that size in one
    call; every other input gets the stepwise answer, whatever size the caller was told."""
    from fs.format import skippable_frame

    payload = bytes(range(256)) * 4096
    cobj = zstandard.ZstdCompressor().compressobj()  # streamed: no content size in the frame header
    frame = cobj.compress(payload) + cobj.flush()
    assert zstandard.frame_content_size(frame) == -1
    assert zstd_decompress(frame, max_output=len(payload), expect=len(payload)) == payload
    # told too little or too much: the true contents, or the cap, decide (the caller compares sizes)
    assert zstd_decompress(frame, max_output=2 * len(payload), expect=len(payload) - 1) == payload
    assert zstd_decompress(frame, max_output=2 * len(payload), expect=len(payload) + 1) == payload
    with pytest.raises(FormatError, match="cap"):
        zstd_decompress(frame, max_output=len(payload) - 1, expect=len(payload) - 1)
    with pytest.raises(FormatError, match="truncated"):
        zstd_decompress(frame[:-4], max_output=len(payload), expect=len(payload))
    two = frame + skippable_frame(b"x") + frame
    assert zstd_decompress(two, max_output=2 * len(payload), expect=2 * len(payload)) == payload * 2
    with pytest.raises(FormatError, match="cap"):  # a bomb told it is small still stops at the cap
        bomb = zstandard.ZstdCompressor().compressobj()
        zstd_decompress(bomb.compress(bytes(64 << 20)) + bomb.flush(), max_output=1 << 20, expect=1000)


def test_tar_split_verification():
    raw = b'{"type":2,"payload":"AAAA","position":0}\n'
    comp = zstandard.ZstdCompressor().compress(raw)
    assert decompress_and_verify_tar_split(comp, sha256_digest(comp), uncompressed_length=len(raw)) == raw
    with pytest.raises(VerificationError):
        decompress_and_verify_tar_split(comp, D1)
    with pytest.raises(VerificationError):
        decompress_and_verify_tar_split(comp, "")
    with pytest.raises(FormatError):
        decompress_and_verify_tar_split(comp, sha256_digest(comp), uncompressed_length=1)
