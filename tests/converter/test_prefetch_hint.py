"""converter.chunked with a prefetch list: the layer's prefetch hint (``io.github.zsnap.prefetch-ranges``)
covers the listed files' frames, and those bytes decode to the files."""

from __future__ import annotations

import io
import random
import tarfile

import zstandard

from converter.chunked import write_zstd_chunked
from fs.format.hints import PREFETCH_RANGES, parse_prefetch_hint
from tests.converter.tarfactory import Member, build_tar


def _members() -> list[Member]:
    rng = random.Random(3)
    return [
        Member("usr/", kind=tarfile.DIRTYPE, mode=0o755),
        Member("usr/bin/tool", data=rng.randbytes(20_000)),
        Member("usr/share/blob.bin", data=rng.randbytes(3 << 20)),  # unlisted, between the listed files
        Member("usr/lib/libbig.so", data=rng.randbytes(2 << 20)),  # several chunks
        Member("usr/lib/link.so", kind=tarfile.LNKTYPE, linkname="usr/share/blob.bin"),
    ]


def test_hint_covers_exactly_the_listed_files():
    members = _members()
    tar = build_tar(members)
    out = io.BytesIO()
    layer = write_zstd_chunked(
        io.BytesIO(tar.data), out, prefetch=["/usr/bin/tool", "usr/lib/libbig.so", "usr/missing"]
    )
    blob = out.getvalue()
    ranges = parse_prefetch_hint(layer.annotations, len(blob), max_bytes=len(blob))
    regs = {e.name: e for e in layer.toc.entries if e.type == "reg"}
    listed = [regs["usr/bin/tool"], regs["usr/lib/libbig.so"]]
    assert ranges == [(e.offset, e.end_offset) for e in listed]  # 3 MiB apart: two ranges
    for e, member in zip(listed, (members[1], members[3]), strict=True):
        assert _frames(blob[e.offset : e.end_offset]) == member.data
    assert sum(end - start for start, end in ranges) < len(blob) // 2  # the unlisted 3 MiB is not in it


def test_hard_link_names_its_target_and_no_list_writes_no_hint():
    tar = build_tar(_members())
    layer = write_zstd_chunked(io.BytesIO(tar.data), io.BytesIO(), prefetch=["usr/lib/link.so"])
    blob_size = 10**9
    target = next(e for e in layer.toc.entries if e.type == "reg" and e.name == "usr/share/blob.bin")
    assert parse_prefetch_hint(layer.annotations, blob_size, max_bytes=blob_size) == [
        (target.offset, target.end_offset)
    ]
    plain = write_zstd_chunked(io.BytesIO(tar.data), io.BytesIO())
    assert PREFETCH_RANGES not in plain.annotations


def _frames(data: bytes) -> bytes:
    """Decode back-to-back zstd frames."""
    out = []
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        out.append(obj.decompress(data))
        data = obj.unused_data
    return b"".join(out)
