"""converter.tarstream / converter.tarheader: byte-exact raw accounting, Go-compatible metadata, errors."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from converter.tarheader import checksum_ok, numeric, parse_pax, pax_time
from converter.tarstream import TarStreamReader
from fs.errors import FormatError, UnsupportedFormat
from tests.converter.tarfactory import MTIME, Member, build_tar, standard_members


class _Trickle(io.RawIOBase):
    """A non-seekable stream returning at most ``step`` bytes per read (exercises buffer refills)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def _read_all(data: bytes, *, read_size: int = 1 << 20, payload_piece: int = 1000, step: int | None = None):
    stream = _Trickle(data, step) if step else io.BytesIO(data)
    seen: list[bytes] = []
    reader = TarStreamReader(stream, read_size=read_size, on_read=seen.append)
    parts: list[bytes] = []
    entries = []
    for entry in reader:
        parts.append(entry.raw)
        payload = []
        while piece := reader.read_payload(payload_piece):
            payload.append(piece)
        parts.extend(payload)
        entries.append((entry, b"".join(payload)))
    trailer = list(reader.trailer())
    parts.extend(trailer)
    assert b"".join(seen) == data, "on_read must see every input byte in order"
    return entries, trailer, b"".join(parts)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("padding", [512, 10240])
def test_concatenation_is_byte_exact(fmt: int, padding: int) -> None:
    image = build_tar(standard_members(big=300_000), fmt=fmt, padding_to=padding)
    entries, trailer, joined = _read_all(image.data)
    assert joined == image.data
    assert b"".join(trailer) == bytes(len(b"".join(trailer)))
    last, last_payload = entries[-1]
    end_of_entries = last.payload_offset + len(last_payload)
    assert len(b"".join(trailer)) == len(image.data) - end_of_entries
    assert len(image.data) % padding == 0 and len(b"".join(trailer)) >= 1024
    for entry, payload in entries:
        if entry.payload_size:
            assert image.files[entry.name_raw] == payload
        assert entry.offset + len(entry.raw) == entry.payload_offset


@pytest.mark.parametrize("read_size,step,piece", [(512, 7, 1), (4096, 300, 513), (1 << 20, None, 1 << 22)])
def test_odd_buffering(read_size: int, step: int | None, piece: int) -> None:
    image = build_tar(standard_members(big=100_000))
    _, _, joined = _read_all(image.data, read_size=read_size, payload_piece=piece, step=step)
    assert joined == image.data


def test_metadata_matches_tarfile() -> None:
    image = build_tar(standard_members(big=10_000))
    entries, _, _ = _read_all(image.data)
    by_name = {e.name: e for e, _ in entries}
    with tarfile.open(fileobj=io.BytesIO(image.data), encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == [e.name.rstrip("/") for e, _ in entries]
    kinds = {tarfile.REGTYPE: "reg", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
             tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
             tarfile.FIFOTYPE: "fifo"}  # fmt: skip
    for m, (e, _) in zip(members, entries, strict=True):
        assert e.type == kinds[m.type]
        assert (e.mode, e.uid, e.gid, e.uname, e.gname) == (m.mode, m.uid, m.gid, m.uname, m.gname)
        assert (e.size, e.dev_major, e.dev_minor, e.link_name) == (m.size, m.devmajor, m.devminor, m.linkname)
    assert by_name["bin/hard"].link_name == "bin/big"
    assert by_name["dev/null"].dev_major == 1 and by_name["dev/null"].dev_minor == 3
    assert by_name["attrs"].xattrs == {"user.x": b"v1", "user.empty": b""}
    assert by_name["caps"].xattrs == {"security.capability": b"\x01\x00\x00\x02"}
    assert by_name["latin1-\udce9t\udce9"].name_raw == b"latin1-\xe9t\xe9"
    assert by_name["subsec"].mtime_ns // 1000 == (MTIME * 1_000_000) + 123456  # PAX sub-second mtime
    assert by_name["etc/"].mtime_ns == MTIME * 1_000_000_000
    assert by_name["etc/text"].atime_ns is None
    long_file = next(n for n in by_name if n.startswith("deep/") and "file-with" in n)
    assert len(long_file) > 200
    assert by_name["setuid"].mode == 0o4755


def test_gnu_long_names_and_base256() -> None:
    """GNU format: 'L'/'K' headers for long names/links; tarfile writes base-256 for huge numbers."""
    long_target = "t" * 150
    image = build_tar(
        [
            Member("n" * 150, data=b"x"),
            Member("lnk", tarfile.SYMTYPE, linkname=long_target),
            Member("bigid", data=b"y", uid=1 << 40, gid=1 << 33),
        ],
        fmt=tarfile.GNU_FORMAT,
    )
    entries, _, joined = _read_all(image.data)
    assert joined == image.data
    assert entries[0][0].name == "n" * 150 and entries[0][1] == b"x"
    assert entries[1][0].link_name == long_target
    assert entries[2][0].uid == 1 << 40 and entries[2][0].gid == 1 << 33


def test_huge_size_field_then_truncation_names_the_entry() -> None:
    """A 9 GiB file's size is base-256 (GNU) or a PAX record; the stream ending early is a FormatError."""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        info = tarfile.TarInfo("huge")
        info.size = 9 << 30
        head = info.tobuf(fmt, "utf-8", "surrogateescape")
        reader = TarStreamReader(io.BytesIO(head + b"abc"))
        entry = next(iter(reader))
        assert entry.size == entry.payload_size == 9 << 30
        assert reader.read_payload(3) == b"abc"
        with pytest.raises(FormatError) as err:
            reader.read_payload(10)
        assert err.value.path == "huge"
        assert "truncated" in str(err.value)


def test_numeric_parsing() -> None:
    assert numeric(b"0000644\x00") == 0o644
    assert numeric(b"   644 \x00") == 0o644
    assert numeric(b"\x00" * 8) == 0
    assert numeric(b"12\x0034\x00\x00\x00") == 0o12
    assert numeric(b"\x80" + (9 << 30).to_bytes(11, "big")) == 9 << 30
    assert numeric(b"\xff" * 8) == -1
    with pytest.raises(ValueError):
        numeric(b"0000x44\x00")
    with pytest.raises(ValueError):
        numeric(b"0000899\x00")


def test_pax_parsing() -> None:
    assert parse_pax(b"11 path=ab\n19 SCHILY.xattr.a=\n") == {b"path": b"ab", b"SCHILY.xattr.a": b""}
    assert parse_pax(b"12 path=a=b\n") == {b"path": b"a=b"}
    for bad in (b"11 path=ab", b"99 path=ab\n", b"x path=ab\n", b"8 =abc\n", b"12 path=a\x00b\n"):
        with pytest.raises(ValueError):
            parse_pax(bad)
    assert pax_time(b"1700000000.5") == 1_700_000_000_500_000_000
    assert pax_time(b"-1.5") == -1_500_000_000
    assert pax_time(b"1.1234567899") == 1_123_456_789
    with pytest.raises(ValueError):
        pax_time(b"1.x")


def test_checksum_signed_and_unsigned() -> None:
    block = bytearray(tarfile.TarInfo("é" * 10).tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")[:512])
    assert checksum_ok(bytes(block))
    signed = sum(b - 256 if b & 0x80 else b for b in block[:148] + block[156:]) + 8 * 32
    block[148:156] = b"%06o\x00 " % signed
    assert checksum_ok(bytes(block))
    block[148:156] = b"%06o\x00 " % (signed + 1)
    assert not checksum_ok(bytes(block))


def test_empty_and_eof_only_streams() -> None:
    assert _read_all(b"") == ([], [], b"")
    entries, trailer, _ = _read_all(bytes(1024))
    assert entries == [] and trailer == [bytes(1024)]
    entries, trailer, _ = _read_all(bytes(512))  # one zero block then EOF: accepted, as in Go
    assert trailer == [bytes(512)]
    _, trailer, _ = _read_all(bytes(1024) + b"garbage after the end")
    assert trailer == [bytes(1024), b"garbage after the end"]


def test_stream_without_end_marker() -> None:
    image = build_tar([Member("a", data=b"abc")])
    cut = image.data[: 512 * 2]  # header + padded payload, no end-of-archive blocks
    entries, trailer, joined = _read_all(cut)
    assert joined == cut and [e.name for e, _ in entries] == ["a"] and trailer == [bytes(509)]


def test_rega_with_slash_is_a_directory() -> None:
    info = tarfile.TarInfo("olddir/")
    info.type = tarfile.AREGTYPE
    data = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + bytes(1024)
    entries, _, _ = _read_all(data)
    assert entries[0][0].type == "dir"


# ----------------------------------------------------------------------------------- malformed input


def _corrupt_checksum(data: bytes, header_at: int) -> bytes:
    out = bytearray(data)
    out[header_at + 148 : header_at + 156] = b"0000001\x00"
    return bytes(out)


def test_bad_checksum_names_entry_and_offset() -> None:
    image = build_tar([Member("first", data=b"1"), Member("second", data=b"2")], fmt=tarfile.USTAR_FORMAT)
    data = _corrupt_checksum(image.data, 1024)
    with pytest.raises(FormatError) as err:
        _read_all(data)
    assert err.value.path == "second"
    assert "offset 1024" in str(err.value) and "checksum" in str(err.value)


@pytest.mark.parametrize("cut", [100, 512 + 1, 512 * 3 + 700])
def test_truncated_streams(cut: int) -> None:
    image = build_tar([Member("a", data=b"x" * 600), Member("b", data=b"y" * 10)], fmt=tarfile.USTAR_FORMAT)
    with pytest.raises(FormatError) as err:
        _read_all(image.data[:cut])
    assert "truncated" in str(err.value)
    if cut == 512 + 1:
        assert err.value.path == "a"


def test_zero_block_followed_by_header_is_rejected() -> None:
    image = build_tar([Member("a", data=b"x")], fmt=tarfile.USTAR_FORMAT)
    data = bytes(512) + image.data
    with pytest.raises(FormatError, match="single zero block"):
        _read_all(data)


@pytest.mark.parametrize(
    "kind,what",
    [
        (tarfile.GNUTYPE_SPARSE, "sparse"),
        (b"g", "global"),
        (tarfile.CONTTYPE, "contiguous"),
        (b"Z", "typeflag"),
    ],
)
def test_unsupported_typeflags(kind: bytes, what: str) -> None:
    info = tarfile.TarInfo("odd-entry")
    info.type = kind
    data = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict") + bytes(1024)
    with pytest.raises(UnsupportedFormat) as err:
        _read_all(data)
    assert err.value.path == "odd-entry" and what in str(err.value)


def test_pax_sparse_is_unsupported() -> None:
    image = build_tar([Member("sp", data=b"x", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})])
    with pytest.raises(UnsupportedFormat, match="sparse"):
        _read_all(image.data)


def test_malformed_pax_record_names_entry() -> None:
    image = build_tar([Member("p", data=b"x", pax={"comment": "hello"})])
    data = bytearray(image.data)
    at = data.find(b"comment=hello")
    data[at - 3 : at - 1] = b"99"  # record length now runs past the header
    # fix the PAX header's checksum is not needed: only the content changed
    with pytest.raises(FormatError, match="PAX"):
        _read_all(bytes(data))


def test_skipping_unread_payload() -> None:
    image = build_tar([Member("a", data=os.urandom(5000)), Member("b", data=b"bb")])
    reader = TarStreamReader(io.BytesIO(image.data))
    names = []
    for entry in reader:
        names.append(entry.name)
        if entry.name == "b":
            assert reader.read_payload(10) == b"bb"
    assert names == ["a", "b"]
    assert list(reader.trailer()) == [bytes(512 - 2) + bytes(1024)]
