"""converter.chunked (Dialect A, c/storage): the blob decompresses to the input tar, every chunk range
decodes to exactly its bytes, TOC / tar-split / footer / annotations are what c/storage reads."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import threading
from collections import defaultdict
from pathlib import Path

import pytest
import zstandard

from converter.chunked import LAYER_MEDIA_TYPE, ChunkedLayer, write_zstd_chunked
from converter.chunker import LARGE_FILE, LARGE_MAX_SIZE, MAX_SIZE, Chunker
from converter.tarsplit import TarSplitPacker, crc64_iso
from converter.tocstream import compress_toc
from fs.errors import ConversionError, FormatError, UnsupportedFormat
from fs.format import Dialect, Toc, TocEntry, parse_footer, serialize_toc
from fs.format.annotations import toc_location_from_annotations
from fs.format.index import build_index
from fs.format.verify import decode_and_verify_toc, decompress_and_verify_tar_split
from tests.converter.tarfactory import Member, TarImage, build_tar, standard_members, zero_heavy


def convert(data: bytes, **kwargs) -> tuple[bytes, ChunkedLayer]:  # type: ignore[no-untyped-def]
    out = io.BytesIO()
    layer = write_zstd_chunked(io.BytesIO(data), out, **kwargs)
    return out.getvalue(), layer


def zstd_cli(blob: bytes) -> bytes:
    return subprocess.run(["zstd", "-d", "-c", "-q"], input=blob, capture_output=True, check=True).stdout


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_of(toc: Toc) -> dict[str, list[TocEntry]]:
    """reg entries with payload, each followed by its chunk entries."""
    out: dict[str, list[TocEntry]] = {}
    current: list[TocEntry] | None = None
    for entry in toc.entries:
        if entry.type == "chunk":
            assert current is not None and current[0].name == entry.name
            current.append(entry)
        elif entry.type == "reg" and entry.size:
            current = out[entry.name] = [entry]
        else:
            current = None
    return out


def check_blob(image: TarImage, blob: bytes, layer: ChunkedLayer) -> Toc:
    """Everything a reader relies on, checked independently of the writer."""
    assert zstd_cli(blob) == image.data
    assert layer.digest == sha(blob) and layer.size == len(blob)
    assert layer.diff_id == sha(image.data) and layer.uncompressed_size == len(image.data)
    assert layer.media_type == LAYER_MEDIA_TYPE
    # footer ↔ annotations ↔ TOC digest
    footer = parse_footer(blob[-72:], len(blob))
    assert footer.dialect is Dialect.CSTORAGE
    location = toc_location_from_annotations(layer.annotations, LAYER_MEDIA_TYPE, blob_size=len(blob))
    assert location is not None and location.dialect is Dialect.CSTORAGE
    assert (location.offset, location.length) == (footer.toc_offset, footer.toc_length)
    assert (location.tar_split_offset, location.tar_split_length) == (
        footer.tar_split_offset,
        footer.tar_split_length,
    )
    compressed_toc = blob[footer.toc_offset : footer.toc_offset + footer.toc_length]
    assert layer.toc_digest == sha(compressed_toc) == location.digest
    toc = decode_and_verify_toc(compressed_toc, location)
    assert toc == layer.toc
    assert toc.version == 1
    # chunks: every compressed range decodes to exactly the file bytes it claims
    dctx = zstandard.ZstdDecompressor()
    for name, entries in files_of(toc).items():
        reg = entries[0]
        content = image.files.get(os.fsencode(name))
        if content is None:  # non-UTF-8 name: the TOC shows U+FFFD, find it by size and digest
            content = next(c for c in image.files.values() if sha(c) == reg.digest)
        assert reg.size == len(content) and reg.digest == sha(content)
        assert reg.offset > 0 and reg.end_offset > reg.offset
        assert reg.chunk_offset == 0
        if len(entries) == 1:
            assert not (reg.chunk_size or reg.chunk_digest or reg.chunk_type)
            assert dctx.decompress(blob[reg.offset : reg.end_offset]) == content
            continue
        ends = [e.offset for e in entries[1:]] + [reg.end_offset]
        pos = 0
        for entry, end in zip(entries, ends, strict=True):
            assert entry.end_offset == (reg.end_offset if entry is reg else 0)
            assert entry.chunk_offset == pos
            piece = dctx.decompress(blob[entry.offset : end])
            assert piece == content[pos : pos + entry.chunk_size]
            assert entry.chunk_digest == sha(piece)
            if entry.chunk_type == "zeros":
                assert piece == bytes(len(piece)) and len(piece) >= 1024
            pos += entry.chunk_size
        assert pos == len(content)
    for entry in toc.entries:
        if entry.type == "reg" and not entry.size:
            assert not (entry.digest or entry.offset or entry.end_offset)
    # tar-split: verified, decodable, and it rebuilds the tar with the original contents
    tar_split = decompress_and_verify_tar_split(
        blob[footer.tar_split_offset : footer.tar_split_offset + footer.tar_split_length],
        toc.tar_split_digest,
        uncompressed_length=footer.tar_split_uncompressed_length,
    )
    assert reassemble(tar_split, image) == image.data
    # the reader-side index accepts it
    build_index(toc, Dialect.CSTORAGE, len(blob), toc_offset=footer.toc_offset)
    return toc


# ------------------------------------------------------------------------------ independent tar-split

_CRC_TABLE: list[int] = []


def crc64_go_iso(data: bytes) -> int:
    """Bit-by-bit Go ``crc64.Checksum(data, crc64.MakeTable(crc64.ISO))``, independent of anycrc."""
    if not _CRC_TABLE:
        for i in range(256):
            crc = i
            for _ in range(8):
                crc = (crc >> 1) ^ 0xD800000000000000 if crc & 1 else crc >> 1
            _CRC_TABLE.append(crc)
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


_FILE_LINE = re.compile(rb'\{"type":1(,"name":"[^\n]*"|,"name_raw":"[A-Za-z0-9+/=]+")?(,"size":\d+)?,'
                        rb'"payload":("[A-Za-z0-9+/=]{12}"|null),"position":\d+\}')  # fmt: skip
_SEGMENT_LINE = re.compile(rb'\{"type":2,"payload":"[A-Za-z0-9+/=]*","position":\d+\}')


def reassemble(tar_split: bytes, image: TarImage) -> bytes:
    """Rebuild the tar from tar-split lines + original file contents (what c/storage's DiffID check does);
    also checks Go's exact JSON shape, positions and CRC-64 payloads."""
    assert tar_split.endswith(b"\n")
    out = bytearray()
    for position, line in enumerate(tar_split.split(b"\n")[:-1]):
        entry = json.loads(line)
        assert entry["position"] == position
        if entry["type"] == 2:
            assert _SEGMENT_LINE.fullmatch(line), line
            out += base64.b64decode(entry["payload"])
            continue
        assert _FILE_LINE.fullmatch(line), line
        assert "name" in entry or "name_raw" in entry
        name = entry["name"].encode() if "name" in entry else base64.b64decode(entry["name_raw"])
        size = entry.get("size", 0)
        if size == 0:
            assert entry["payload"] is None
            continue
        content = image.files.get(name, b"")
        assert len(content) == size, name
        assert base64.b64decode(entry["payload"]) == crc64_go_iso(content).to_bytes(8, "big")
        out += content
    return bytes(out)


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("padding", [512, 10240])
def test_round_trip_and_reader_contract(fmt: int, padding: int) -> None:
    image = build_tar(standard_members(), fmt=fmt, padding_to=padding)
    blob, layer = convert(image.data)
    toc = check_blob(image, blob, layer)
    names = {e.name for e in toc.entries}
    assert {".wh.foo", "etc/.wh..wh..opq", "dev/fifo", "bin/sym", "latin1-\ufffdt\ufffd"} <= names
    assert layer.prefetch == () and layer.dialect is Dialect.CSTORAGE
    assert set(layer.annotations) == {
        "io.github.containers.zstd-chunked.manifest-checksum",
        "io.github.containers.zstd-chunked.manifest-position",
        "io.github.containers.zstd-chunked.tarsplit-position",
    }


def test_toc_metadata() -> None:
    image = build_tar(standard_members(big=200_000))
    _, layer = convert(image.data)
    by_name = {e.name: e for e in layer.toc.entries if e.type != "chunk"}
    assert by_name["etc/"].type == "dir" and by_name["etc/"].mode == 0o755
    assert by_name["etc/"].modtime == "2023-11-14T22:13:20Z"
    assert by_name["subsec"].modtime.startswith("2023-11-14T22:13:20.1234567")
    assert by_name["etc/text"].uid == 1000 and by_name["etc/text"].gid == 1000
    assert by_name["etc/text"].user_name == ""  # not part of the c/storage schema
    assert by_name["bin/hard"].type == "hardlink" and by_name["bin/hard"].link_name == "bin/big"
    assert by_name["bin/sym"].link_name == "big"
    assert (by_name["dev/null"].dev_major, by_name["dev/null"].dev_minor) == (1, 3)
    assert by_name["dev/sda"].type == "block"
    assert by_name["attrs"].xattrs == {"user.x": b"v1", "user.empty": b""}
    assert by_name["caps"].xattrs == {"security.capability": b"\x01\x00\x00\x02"}
    assert by_name["utf8-é-<&>"].size == 10
    assert not by_name["etc/text"].accesstime and not by_name["etc/text"].changetime
    sparse = files_of(layer.toc)["bin/sparse"]
    assert any(e.chunk_type == "zeros" for e in sparse) and any(not e.chunk_type for e in sparse)
    assert len(files_of(layer.toc)["bin/allzero"]) == 1  # one zeros chunk = single chunk: no chunk fields


def test_toc_keys_match_skopeo(vectors_dir: Path) -> None:
    """Per entry type, the keys we write are the keys c/storage (skopeo) writes — minus the zero
    access/change times c/storage 1.43 still serialized and that current c/storage omits."""
    theirs: dict[str, set[str]] = defaultdict(set)
    for path in (vectors_dir / "skopeo-1.9.3-zstd-chunked" / "toc").glob("*.json"):
        for entry in json.loads(path.read_text())["entries"]:
            theirs[entry["type"]] |= set(entry)
    _, layer = convert(build_tar(standard_members()).data)
    data = serialize_toc(layer.toc, Dialect.CSTORAGE)
    top = json.loads(data)
    assert list(top) == ["version", "entries", "tarSplitDigest"]
    ours: dict[str, set[str]] = defaultdict(set)
    for entry in top["entries"]:
        ours[entry["type"]] |= set(entry)
    zero_times = {"accesstime", "changetime"}
    for kind, keys in theirs.items():
        assert keys - zero_times == ours[kind] - ({"chunkType"} if kind == "reg" else set()), kind
    assert not any(zero_times & keys for keys in ours.values())


def test_trailing_garbage_and_empty_inputs() -> None:
    for data in (bytes(1024), bytes(1024) + b"trailing bytes after the end", b""):
        blob, layer = convert(data)
        assert zstd_cli(blob) == data
        assert layer.diff_id == sha(data) and layer.toc.entries == []
        footer = parse_footer(blob[-72:], len(blob))
        assert footer.toc_offset == len(blob) - 72 - footer.tar_split_length - 8 - footer.toc_length


def test_many_small_files_and_big_ones() -> None:
    rng = random.Random(3)
    members = [Member(f"d{i // 100}/f{i}", data=rng.randbytes(rng.choice([0, 1, 100, 3000, 20_000])))
               for i in range(3000)]  # fmt: skip
    members.append(Member("big/zeros-and-data", data=zero_heavy(rng, 20 << 20)))
    members.append(Member("big/random", data=rng.randbytes(9 << 20)))
    image = build_tar(members)
    blob, layer = convert(image.data, level=1, threads=3)
    check_blob(image, blob, layer)
    chunks = files_of(layer.toc)["big/random"]
    assert 60 < len(chunks) < 300  # ~64 KiB content-defined chunks


def test_large_files_get_large_chunks_and_the_rest_keep_small_ones() -> None:
    """A file of LARGE_FILE bytes or more is cut at ~512 KiB (fewer TOC entries for weights-like files);
    a file just below it keeps ~64 KiB chunks; both decode to their bytes (check_blob)."""
    rng = random.Random(5)
    below = rng.randbytes(LARGE_FILE - 1)
    large = rng.randbytes(LARGE_FILE + (8 << 20))
    image = build_tar([Member("w/below.bin", data=below), Member("w/large.bin", data=large)])
    blob, layer = convert(image.data, level=1, threads=2)
    check_blob(image, blob, layer)
    files = files_of(layer.toc)
    small_sizes = [e.chunk_size for e in files["w/below.bin"]]
    large_sizes = [e.chunk_size for e in files["w/large.bin"]]
    assert sum(large_sizes) == len(large) and sum(small_sizes) == len(below)
    assert max(small_sizes) <= MAX_SIZE and 40 << 10 < len(below) / len(small_sizes) < 128 << 10
    assert max(large_sizes) <= LARGE_MAX_SIZE and 256 << 10 < len(large) / len(large_sizes) < 1 << 20
    # the rule holds whatever the chunker's window (a large file may fit in one window)
    pieces = list(Chunker(window=64 << 20).stream(io.BytesIO(large).read, len(large)))
    assert b"".join(bytes(p) for p, _ in pieces) == large
    assert 256 << 10 < len(large) / len(pieces) < 1 << 20


def test_levels_and_threads() -> None:
    image = build_tar(standard_members(big=500_000))
    blobs = {}
    for level, threads in ((1, 1), (3, 2), (9, 4)):
        blob, layer = convert(image.data, level=level, threads=threads)
        check_blob(image, blob, layer)
        blobs[level] = len(blob)
    assert blobs[9] <= blobs[1]


def test_progress_reports() -> None:
    image = build_tar([Member(f"f{i}", data=os.urandom(1 << 20)) for i in range(20)])
    calls: list[tuple[int, int]] = []
    blob, _ = convert(image.data, progress=lambda a, b: calls.append((a, b)))
    assert calls and calls[-1] == (len(image.data), len(blob))
    assert all(a1 <= a2 and b1 <= b2 for (a1, b1), (a2, b2) in itertools.pairwise(calls))


def test_cstorage_v1_dialect() -> None:
    image = build_tar(standard_members(big=100_000))
    blob, layer = convert(image.data, dialect=Dialect.CSTORAGE_V1)
    assert zstd_cli(blob) == image.data and layer.diff_id == sha(image.data)
    footer = parse_footer(blob[-48:], len(blob))
    assert footer.dialect is Dialect.CSTORAGE_V1
    assert layer.toc.tar_split_digest == ""
    assert set(layer.annotations) == {
        "io.containers.zstd-chunked.manifest-checksum",
        "io.containers.zstd-chunked.manifest-position",
    }
    location = toc_location_from_annotations(layer.annotations, LAYER_MEDIA_TYPE, blob_size=len(blob))
    assert location is not None
    toc = decode_and_verify_toc(blob[footer.toc_offset : footer.toc_offset + footer.toc_length], location)
    assert toc == layer.toc


def test_compress_toc_matches_serialize_toc() -> None:
    entries = [TocEntry(type="reg", name=f"f{i}", size=i, mode=0o644, digest=sha(b"%d" % i),
                        offset=100 + i, end_offset=200 + i) for i in range(5000)]  # fmt: skip

    def unzstd(data: bytes) -> bytes:
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)

    for dialect, digest in ((Dialect.CSTORAGE, sha(b"ts")), (Dialect.CSTORAGE_V1, "")):
        for subset in (entries, entries[:1], []):
            toc = Toc(1, subset, digest)
            data, length, json_digest = compress_toc(toc, dialect, 3)
            full = serialize_toc(toc, dialect)
            assert unzstd(data) == full and length == len(full) and json_digest == sha(full)
    stargz = [TocEntry(type="reg", name=f"f{i}", size=1, digest=sha(b"x")) for i in range(4100)]
    for subset in (stargz, stargz[:1], []):
        toc = Toc(1, subset)
        data, length, _ = compress_toc(toc, Dialect.STARGZ_ZSTD, 3)
        assert unzstd(data) == serialize_toc(toc, Dialect.STARGZ_ZSTD)


# ------------------------------------------------------------------------------------------- errors


def test_malformed_tar_names_the_entry() -> None:
    image = build_tar(
        [Member("ok", data=b"1"), Member("broken/entry", data=b"2" * 2000)], fmt=tarfile.USTAR_FORMAT
    )
    with pytest.raises(FormatError) as err:
        convert(image.data[: 1024 + 512 + 700])
    assert err.value.path == "broken/entry"
    corrupt = bytearray(image.data)
    corrupt[1024 + 100] ^= 0xFF  # mode field of the second header: checksum mismatch
    with pytest.raises(FormatError) as err:
        convert(bytes(corrupt))
    assert err.value.path == "broken/entry" and "offset 1024" in str(err.value)


def test_duplicate_paths_are_refused() -> None:
    image = build_tar(
        [Member("etc/", tarfile.DIRTYPE), Member("etc/x", data=b"1"), Member("./etc/x", data=b"2")]
    )
    with pytest.raises(UnsupportedFormat) as err:
        convert(image.data)
    assert err.value.path == "./etc/x" and "duplicate" in str(err.value)


def test_sparse_entry_is_unsupported() -> None:
    info = tarfile.TarInfo("holes")
    info.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(UnsupportedFormat) as err:
        convert(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict") + bytes(1024))
    assert err.value.path == "holes"


class _FailingSink(io.RawIOBase):
    def __init__(self, after: int) -> None:
        self.left = after

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        if self.left <= 0:
            raise OSError(28, "No space left on device")
        self.left -= len(b)
        return len(b)


def test_write_failure_is_a_conversion_error_and_leaves_no_threads() -> None:
    before = threading.active_count()
    image = build_tar([Member(f"f{i}", data=os.urandom(1 << 20)) for i in range(24)])
    with pytest.raises(ConversionError) as err:
        write_zstd_chunked(io.BytesIO(image.data), _FailingSink(1 << 20))
    assert isinstance(err.value.__cause__, OSError)
    assert threading.active_count() == before
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_reader_failure_stops_the_pipeline() -> None:
    before = threading.active_count()
    image = build_tar([Member(f"f{i}", data=os.urandom(1 << 20)) for i in range(8)])
    with pytest.raises(FormatError):
        write_zstd_chunked(io.BytesIO(image.data[: 5 << 20]), io.BytesIO())
    assert threading.active_count() == before


def test_concurrent_conversions() -> None:
    images = [build_tar(standard_members(seed=s, big=400_000)) for s in range(3)]
    results: dict[int, tuple[bytes, ChunkedLayer]] = {}

    def run(i: int) -> None:
        results[i] = convert(images[i].data)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, image in enumerate(images):
        check_blob(image, *results[i])
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_tarsplit_packer_shape() -> None:
    packer = TarSplitPacker()
    assert packer.segment(b"\x00\x01") == b'{"type":2,"payload":"AAE=","position":0}\n'
    assert packer.file(b"a<b>&c", 3, crc64_iso(b"abc")) == (
        b'{"type":1,"name":"a\\u003cb\\u003e\\u0026c","size":3,"payload":"'
        + base64.b64encode(crc64_go_iso(b"abc").to_bytes(8, "big"))
        + b'","position":1}\n'
    )
    assert packer.file(b"empty", 0, None) == b'{"type":1,"name":"empty","payload":null,"position":2}\n'
    assert packer.file(b"bad-\xff", 1, 0) == (
        b'{"type":1,"name_raw":"YmFkLf8=","size":1,"payload":"AAAAAAAAAAA=","position":3}\n'
    )
    assert packer.file("rep-\ufffd".encode(), 0, None).startswith(b'{"type":1,"name_raw":')
    assert crc64_iso(b"123456789") == 0xB90956C775A41001 == crc64_go_iso(b"123456789")
    with pytest.raises(UnsupportedFormat):
        packer.file(b"./empty/", 0, None)


def test_cancel_from_progress_callback() -> None:
    """Raising from ``progress`` (how the image pipeline cancels) stops everything cleanly."""
    before = threading.active_count()
    image = build_tar([Member(f"f{i}", data=os.urandom(1 << 20)) for i in range(40)])

    def progress(done: int, written: int) -> None:
        if done > 8 << 20:
            raise ConversionError("conversion cancelled")

    for dialect in (Dialect.CSTORAGE, Dialect.STARGZ_ZSTD):
        with pytest.raises(ConversionError, match="cancelled"):
            write_zstd_chunked(io.BytesIO(image.data), io.BytesIO(), dialect=dialect, progress=progress)
        assert threading.active_count() == before


def test_toc_keeps_every_entry_when_the_last_slice_ends_the_stream() -> None:
    """A tar without end-of-archive blocks whose last entry completes a TOC slice: the slice handed to
    the serializer on the writer thread must be in the TOC (drain waits for queued callbacks too)."""
    from converter.chunked import _TOC_SLICE
    from fs.format import Dialect, parse_toc

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(_TOC_SLICE):
            info = tarfile.TarInfo(f"f{i:05d}")
            info.size = 512  # payloads end 512-aligned: nothing but headers follows the last one
            tar.addfile(info, io.BytesIO(bytes([i % 251]) * 512))
        end = tar.offset
    data = buf.getvalue()[:end]  # offset before close: no end-of-archive blocks
    for _ in range(3):  # the lost-slice race was timing dependent
        out = io.BytesIO()
        layer = write_zstd_chunked(io.BytesIO(data), out, level=1)
        blob = out.getvalue()
        loc_off, loc_len = (
            int(x)
            for x in layer.annotations["io.github.containers.zstd-chunked.manifest-position"].split(":")[:2]
        )
        toc_json = zstandard.ZstdDecompressor().decompress(
            blob[loc_off : loc_off + loc_len], max_output_size=64 << 20
        )
        assert len(parse_toc(toc_json, Dialect.CSTORAGE).entries) == _TOC_SLICE
