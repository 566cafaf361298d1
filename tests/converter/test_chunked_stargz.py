"""converter.stargz_writer (Dialect B, stargz-snapshotter ``--zstdchunked``): the TOC equals ctr-remote's
for the same layer (offsets aside), the new tar stream is valid and described by diff_id, every chunk
range decodes to its bytes, prefetch ordering and landmarks."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from converter.chunked import LAYER_MEDIA_TYPE, ChunkedLayer, write_zstd_chunked
from converter.stargz_writer import (
    NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK,
    STARGZ_CHUNK_SIZE,
    landmark_header,
)
from converter.tocstream import go_text
from fs.errors import ConversionError
from fs.format import Dialect, Toc, parse_footer, serialize_toc
from fs.format.annotations import toc_location_from_annotations
from fs.format.index import build_index
from fs.format.verify import decode_and_verify_toc
from tests.converter.tarfactory import Member, build_tar, standard_members

VECTOR_LAYERS = {  # skopeo blob (the original tar, zstd) -> ctr-remote TOC of the same layer
    "7e9524267ce9644aee7072a57800ca98b0c44256a671e2e6b60538280e2ed9fc": "7e3578bbdd60",
    "6ce47a4892c7b2baee4b7ba7112255ae80e3ed1e99c912c3427a7b06dd34de33": "6b9fc2751792",
    "058cfdd58f8daac15818b18473ff2907d9a38fda1d6eae52bb84a0645867c3ac": "3c76fbc53743",
}


def convert_b(data: bytes, **kwargs) -> tuple[bytes, ChunkedLayer]:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    layer = write_zstd_chunked(io.BytesIO(data), out, dialect=Dialect.STARGZ_ZSTD, **kwargs)
    return out.getvalue(), layer


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def decode_from(blob: bytes, offset: int, size: int) -> bytes:
    """What stargz-snapshotter does: stream-decode from ``offset`` across frames, keep ``size`` bytes."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob[offset:]), read_across_frames=True)
    return reader.read(size)


def zstd_all(blob: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True)
    out = bytearray()
    while piece := reader.read(1 << 20):
        out += piece
    return bytes(out)


def check_stargz(blob: bytes, layer: ChunkedLayer, files: dict[str, bytes]) -> tuple[Toc, bytes]:
    stream = subprocess.run(["zstd", "-d", "-c", "-q"], input=blob, capture_output=True, check=True).stdout
    assert layer.diff_id == sha(stream) and layer.uncompressed_size == len(stream)
    assert layer.digest == sha(blob) and layer.size == len(blob) and layer.media_type == LAYER_MEDIA_TYPE
    assert layer.dialect is Dialect.STARGZ_ZSTD
    footer = parse_footer(blob[-48:], len(blob))
    assert footer.dialect is Dialect.CSTORAGE_V1  # the 40-byte form is shared; annotations tell them apart
    location = toc_location_from_annotations(layer.annotations, LAYER_MEDIA_TYPE, blob_size=len(blob))
    assert location is not None and location.dialect is Dialect.STARGZ_ZSTD
    assert location.uncompressed_size == len(stream)
    toc = decode_and_verify_toc(blob[footer.toc_offset : footer.toc_offset + footer.toc_length], location)
    assert toc == layer.toc and layer.toc_digest == location.digest
    build_index(toc, Dialect.STARGZ_ZSTD, len(blob), toc_offset=footer.toc_offset)
    # the stream is a tar without end-of-archive blocks
    with tarfile.open(fileobj=io.BytesIO(stream), encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
        contents = {
            go_text(os.fsencode(m.name)): tf.extractfile(m).read()  # type: ignore[union-attr]
            for m in members
            if m.isreg()
        }
    last = members[-1]
    assert len(stream) == last.offset_data + last.size + (-last.size % 512)
    for name, data in files.items():
        assert contents[name] == data
    # every data entry decodes from its offset
    data_entries = [e for e in toc.entries if e.offset]
    assert len({e.offset for e in data_entries}) == len(data_entries)
    by_name: dict[str, bytes] = {}
    for e in toc.entries:
        if e.type == "reg":
            content = contents[e.name.rstrip("/")]
            by_name[e.name] = content
            assert e.digest == sha(content) and e.size == len(content)
        if e.offset:
            content = by_name[e.name]
            size = e.chunk_size or len(content) - e.chunk_offset
            piece = decode_from(blob, e.offset, size)
            assert piece == content[e.chunk_offset : e.chunk_offset + size]
            assert e.chunk_digest == sha(piece)
    return toc, stream


@pytest.mark.parametrize("blob_digest", sorted(VECTOR_LAYERS))
def test_toc_equals_ctr_remote_except_offsets(vectors_dir: Path, blob_digest: str) -> None:
    source_blob = (vectors_dir / "skopeo-1.9.3-zstd-chunked" / "blobs" / "sha256" / blob_digest).read_bytes()
    source = zstd_all(source_blob)
    blob, layer = convert_b(source)
    theirs_path = (
        vectors_dir / "ctr-remote-0.12-zstdchunked" / "toc" / f"{VECTOR_LAYERS[blob_digest]}.toc.json"
    )
    theirs = json.loads(theirs_path.read_text())
    ours = json.loads(serialize_toc(layer.toc, Dialect.STARGZ_ZSTD))

    def strip(entries: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "offset"} for e in entries]

    assert strip(ours["entries"]) == strip(theirs["entries"])
    assert [("offset" in e) for e in ours["entries"]] == [("offset" in e) for e in theirs["entries"]]
    check_stargz(blob, layer, {})
    # the decompressed stream has ctr-remote's length (landmark added, end-of-archive blocks dropped)
    assert layer.uncompressed_size == len(source)


def test_landmark_header_is_go_tar_writer_output(vectors_dir: Path) -> None:
    blob = (vectors_dir / "ctr-remote-0.12-zstdchunked" / "blobs" / "sha256").joinpath(
        "6b9fc275179282edadea3bc58b641593c99e76da556c4ec4f2cf651edb9015ab"
    )
    stream = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(blob.read_bytes()), read_across_frames=True
    )
    assert stream.read(513) == landmark_header(NO_PREFETCH_LANDMARK) + b"\x0f"


def test_standard_members_and_big_chunks() -> None:
    members = [*standard_members(big=STARGZ_CHUNK_SIZE * 2 + 12345)]
    members.append(Member("exact", data=b"e" * STARGZ_CHUNK_SIZE))
    image = build_tar(members)
    blob, layer = convert_b(image.data)
    toc, _ = check_stargz(
        blob, layer, {"bin/big": image.files[b"bin/big"], "exact": b"e" * STARGZ_CHUNK_SIZE}
    )
    assert toc.entries[0].name == NO_PREFETCH_LANDMARK
    big = [e for e in toc.entries if e.name == "bin/big"]
    assert [e.type for e in big] == ["reg", "chunk", "chunk"]
    assert [e.chunk_size for e in big] == [STARGZ_CHUNK_SIZE, STARGZ_CHUNK_SIZE, 0]
    assert [e.chunk_size for e in toc.entries if e.name == "exact"] == [STARGZ_CHUNK_SIZE]
    by_name = {e.name: e for e in toc.entries if e.type != "chunk"}
    assert by_name["etc/empty"].digest == sha(b"") and not by_name["etc/empty"].offset
    assert by_name["etc/text"].user_name == "u" and by_name["etc/text"].group_name == "g"
    assert by_name["subsec"].modtime == "2023-11-14T22:13:20Z"
    assert by_name["dev/null"].dev_major == 1 and by_name["bin/hard"].size == 0
    assert not by_name["bin/hard"].digest and by_name["bin/hard"].link_name == "bin/big"


def test_prefetch_order_and_existing_landmarks() -> None:
    image = build_tar(
        [
            Member(NO_PREFETCH_LANDMARK, data=b"\x0f"),  # from an earlier conversion: dropped
            Member("usr/", tarfile.DIRTYPE),
            Member("usr/bin/", tarfile.DIRTYPE),
            Member("usr/bin/tool", data=b"tool" * 1000),
            Member("usr/lib/", tarfile.DIRTYPE),
            Member("usr/lib/libx.so", data=b"lib" * 1000),
            Member("usr/bin/tool-link", tarfile.LNKTYPE, linkname="usr/lib/libx.so"),
            Member("other", data=b"other"),
        ]
    )
    out = io.BytesIO()
    layer = write_zstd_chunked(
        io.BytesIO(image.data),
        out,
        dialect=Dialect.STARGZ_ZSTD,
        prefetch=["/usr/bin/tool-link", "missing/file"],
        src_factory=lambda: io.BytesIO(image.data),
    )
    toc, _ = check_stargz(out.getvalue(), layer, {"other": b"other"})
    names = [e.name for e in toc.entries if e.type != "chunk"]
    assert names == [
        "usr/",
        "usr/bin/",
        "usr/lib/",
        "usr/lib/libx.so",
        "usr/bin/tool-link",
        PREFETCH_LANDMARK,
        "usr/bin/tool",
        "other",
    ]
    assert layer.prefetch == ("/usr/bin/tool-link", "missing/file")
    with pytest.raises(ConversionError, match="src_factory"):
        write_zstd_chunked(io.BytesIO(image.data), io.BytesIO(), dialect=Dialect.STARGZ_ZSTD, prefetch=["x"])


def test_empty_source() -> None:
    blob, layer = convert_b(bytes(1024))
    toc, stream = check_stargz(blob, layer, {})
    assert [e.name for e in toc.entries] == [NO_PREFETCH_LANDMARK]
    assert stream == landmark_header(NO_PREFETCH_LANDMARK) + b"\x0f" + bytes(511)
