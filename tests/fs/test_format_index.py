"""fs.format.index / tree: normalization, rejection of unsafe or inconsistent TOCs, chunk ranges."""

from __future__ import annotations

import stat

import pytest

from fs.digest import EMPTY_SHA256
from fs.errors import FormatError
from fs.format import Dialect, Toc, TocEntry, build_index, is_whiteout, normalize_name, whiteout_target

CS = Dialect.CSTORAGE
SG = Dialect.STARGZ_ZSTD
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def index(*entries: TocEntry, dialect: Dialect = CS, blob_size: int = 10_000, toc_offset: int | None = None):
    return build_index(Toc(1, list(entries)), dialect, blob_size, toc_offset=toc_offset)


def reg(name: str, size: int = 10, offset: int = 100, end: int = 150, **kw) -> TocEntry:
    return TocEntry("reg", name, mode=0o644, size=size, digest=D1, offset=offset, end_offset=end, **kw)


def test_normalization_and_implied_directories():
    ix = index(
        TocEntry("dir", "./", mode=0o700, uid=5),
        reg("/abs/file"),
        reg("./a//b/./c"),
        TocEntry("dir", "a/", mode=0o750, modtime="1970-01-01T00:00:07Z"),
    )
    assert ix.root.mode == stat.S_IFDIR | 0o700 and ix.root.uid == 5
    assert ix.lookup("abs/file") is ix.lookup("/abs/file") is ix.lookup("./abs/file")
    assert ix.lookup("a/b/c").path == "a/b/c"
    implied = ix.lookup("a/b")
    assert implied.implied and implied.mode == stat.S_IFDIR | 0o755 and implied.mtime_ns == 0
    explicit = ix.lookup("a")  # implied first, explicit entry later supplies the metadata
    assert not explicit.implied and explicit.mode == stat.S_IFDIR | 0o750 and explicit.mtime_ns == 7 * 10**9
    assert [n for n, _ in ix.children("")] == ["a", "abs"]
    assert [n for n, _ in ix.children("a")] == ["b"]
    assert ix.children("abs/file") == [] and ix.children("nope") == [] and ix.children("../x") == []
    assert ix.root.nlink == 4 and explicit.nlink == 3
    assert ix.lookup("../etc") is None


@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../b", "a/..", "/..", "./../x", "a/../b"])
def test_dotdot_names_are_rejected(name):
    with pytest.raises(FormatError, match="escapes the layer") as info:
        index(reg(name))
    assert info.value.path == name


@pytest.mark.parametrize("name", ["", "a\0b"])
def test_empty_and_nul_names_rejected(name):
    with pytest.raises(FormatError):
        index(reg(name))


def test_duplicates_rejected():
    with pytest.raises(FormatError, match="duplicate"):
        index(reg("a"), reg("./a", offset=150, end=200))
    with pytest.raises(FormatError, match="duplicate"):
        index(TocEntry("dir", "d/"), TocEntry("dir", "d"))
    with pytest.raises(FormatError, match="is used as a directory"):
        index(reg("a"), reg("a/b", offset=150, end=200))
    with pytest.raises(FormatError, match="both a directory"):
        index(reg("a/b"), reg("a", offset=150, end=200))
    with pytest.raises(FormatError, match="root"):
        index(reg("./"))


def test_hardlinks():
    ix = index(
        reg("a"), TocEntry("hardlink", "b", link_name="./a"), TocEntry("hardlink", "d/c", link_name="b")
    )
    a = ix.lookup("a")
    assert ix.lookup("b") is a and ix.lookup("d/c") is a and a.nlink == 3
    with pytest.raises(FormatError, match="missing"):
        index(TocEntry("hardlink", "b", link_name="a"), reg("a"))
    with pytest.raises(FormatError, match="missing"):
        index(TocEntry("hardlink", "b"))
    with pytest.raises(FormatError, match="directory"):
        index(TocEntry("dir", "d"), TocEntry("hardlink", "b", link_name="d"))
    with pytest.raises(FormatError, match="escapes"):
        index(reg("a"), TocEntry("hardlink", "b", link_name="../a"))


def test_special_files():
    ix = index(
        TocEntry("symlink", "l", link_name="/etc/ä", mode=0o777),
        TocEntry("char", "dev/null", mode=0o666, dev_major=1, dev_minor=3),
        TocEntry("fifo", "p", mode=0o600),
        TocEntry("reg", "empty", mode=0o4755),
    )
    assert ix.lookup("l").link_target == "/etc/ä" and ix.lookup("l").size == len("/etc/ä".encode())
    assert ix.lookup("dev/null").rdev == (1 << 8 | 3) and ix.lookup("dev/null").mode == stat.S_IFCHR | 0o666
    assert stat.S_ISFIFO(ix.lookup("p").mode)
    empty = ix.lookup("empty")
    assert empty.digest == EMPTY_SHA256 and empty.chunks == [] and empty.mode == stat.S_IFREG | 0o4755
    with pytest.raises(FormatError, match="no target"):
        index(TocEntry("symlink", "l"))


def test_cstorage_chunks_and_ranges():
    ix = index(
        reg("f", size=300, offset=100, end=400, chunk_size=100, chunk_digest=D2),
        TocEntry(
            "chunk", "f", chunk_offset=100, chunk_size=150, offset=200, chunk_digest=D3, chunk_type="zeros"
        ),
        TocEntry("chunk", "f", chunk_offset=250, chunk_size=50, offset=250, chunk_digest=D1),
        reg("single", size=5, offset=400, end=420),
        toc_offset=508,
    )
    f = ix.lookup("f")
    assert [(c.file_offset, c.size, c.compressed_offset, c.compressed_end, c.zeros) for c in f.chunks] == [
        (0, 100, 100, 200, False),
        (100, 150, 200, 250, True),
        (250, 50, 250, 400, False),
    ]
    assert [c.digest for c in f.chunks] == [D2, D3, D1]
    single = ix.lookup("single").chunks
    assert (
        len(single) == 1 and single[0].digest == D1 and single[0].compressed_end == 420
    )  # whole-file digest
    assert ix.chunks_for(f, 99, 2) == f.chunks[:2]
    assert ix.chunks_for(f, 299, 100) == f.chunks[2:]
    assert ix.chunks_for(f, 0, 0) == []


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        # gap between chunks
        ([reg("f", size=300, offset=100, end=400, chunk_size=100, chunk_digest=D2),
          TocEntry("chunk", "f", chunk_offset=150, chunk_size=150, offset=200, chunk_digest=D3)], "gap"),
        # overlap
        ([reg("f", size=300, offset=100, end=400, chunk_size=100, chunk_digest=D2),
          TocEntry("chunk", "f", chunk_offset=50, chunk_size=250, offset=200, chunk_digest=D3)], "overlap"),
        # chunks do not cover the size
        ([reg("f", size=300, offset=100, end=400, chunk_size=100, chunk_digest=D2),
          TocEntry("chunk", "f", chunk_offset=100, chunk_size=100, offset=200, chunk_digest=D3)], "cover"),
        # chunk belongs to another file
        ([reg("f", size=300, offset=100, end=400, chunk_size=100, chunk_digest=D2),
          TocEntry("chunk", "g", chunk_offset=100, chunk_size=200, offset=200, chunk_digest=D3)], "follows"),
        # orphan chunk / chunk after a directory
        ([TocEntry("chunk", "f", chunk_size=1, offset=200, chunk_digest=D3)], "does not follow"),
        ([TocEntry("dir", "f"), TocEntry("chunk", "f", chunk_size=1, offset=200, chunk_digest=D3)],
         "follow a dir"),
        # compressed ranges outside the blob / data region, reversed, missing
        ([reg("f", offset=100, end=20_000)], "outside the data region"),
        ([reg("f", offset=200, end=100)], "outside the data region"),
        ([reg("f", offset=0, end=0)], "outside the data region"),
        ([reg("f", size=10, offset=100, end=150, chunk_size=5, chunk_digest=D2),
          TocEntry("chunk", "f", chunk_offset=5, chunk_size=5, offset=150, chunk_digest=D3)], "outside"),
        ([TocEntry("reg", "f", size=10, offset=100, end_offset=150)], "without a digest"),
        ([reg("f", size=10, offset=100, end=150, chunk_size=5, chunk_digest=D2),
          TocEntry("chunk", "f", chunk_offset=5, chunk_size=5, offset=120)], "no chunkDigest"),
        ([TocEntry("reg", "e"), TocEntry("chunk", "e", chunk_size=1, offset=200, chunk_digest=D3)],
         "empty file"),
    ],
)  # fmt: skip
def test_inconsistent_cstorage_tocs(entries, match):
    with pytest.raises(FormatError, match=match) as info:
        index(*entries)
    assert info.value.path


def test_toc_offset_caps_the_data_region():
    with pytest.raises(FormatError, match="outside the data region"):
        index(reg("f", offset=100, end=150), toc_offset=150)  # TOC frame header starts at 142
    assert index(reg("f", offset=100, end=150), toc_offset=158).data_end == 150
    with pytest.raises(FormatError, match="outside the blob"):
        index(reg("f"), toc_offset=20_000)


def sg_reg(name: str, size: int, offset: int, **kw) -> TocEntry:
    return TocEntry(
        "reg", name, size=size, mode=0o644, offset=offset, digest=D1, chunk_digest=kw.pop("cd", D1), **kw
    )


def test_estargz_ranges_landmarks_and_names():
    ix = index(
        sg_reg("hot", 4, 50, uid=7, gid=3, user_name="alice", group_name="staff"),
        TocEntry("reg", ".prefetch.landmark", size=1, offset=80, digest=D2, chunk_digest=D2),
        sg_reg("big", 10, 100, chunk_size=6, cd=D2, uid=7),
        TocEntry("chunk", "big", chunk_offset=6, offset=200, chunk_digest=D3),  # chunkSize 0: to end
        sg_reg("packed", 3, 300, inner_offset=0),
        sg_reg("packed2", 2, 300, inner_offset=3),  # shares the frame (MinChunkSize mode)
        TocEntry("dir", "d", uid=7),
        sg_reg("last", 1, 400),
        dialect=SG,
        blob_size=1000,
        toc_offset=608,
    )
    assert ix.prefetch_landmark_offset == 80 and not ix.no_prefetch and ix.prefetch_paths == ["hot"]
    assert ix.lookup(".prefetch.landmark") is None
    assert [
        (c.file_offset, c.size, c.compressed_offset, c.compressed_end, c.digest)
        for c in ix.lookup("big").chunks
    ] == [
        (0, 6, 100, 200, D2),
        (6, 4, 200, 300, D3),
    ]
    assert ix.lookup("hot").chunks[0].compressed_end == 80  # next frame: the landmark
    p1, p2 = ix.lookup("packed").chunks[0], ix.lookup("packed2").chunks[0]
    assert (p1.compressed_end, p2.compressed_end, p2.inner_offset) == (400, 400, 3)
    assert ix.lookup("last").chunks[0].compressed_end == 600  # TOC skippable frame starts at 600
    assert ix.lookup("big").user_name == "alice" and ix.lookup("d").user_name == "alice"
    assert ix.lookup("big").group_name == ""  # carry-forward is per gid; big has gid 0
    assert ix.lookup("d").group_name == ""


def test_estargz_without_toc_offset_ends_at_blob_size_and_needs_offsets():
    ix = index(sg_reg("x", 3, 60), dialect=SG, blob_size=999)
    assert ix.lookup("x").chunks[0].compressed_end == 999
    with pytest.raises(FormatError, match="no offset"):
        index(sg_reg("x", 3, 0), dialect=SG)
    with pytest.raises(FormatError, match="no chunkDigest"):
        index(
            sg_reg("x", 4, 60, chunk_size=2, cd=""),
            TocEntry("chunk", "x", chunk_offset=2, offset=80),
            dialect=SG,
        )


def test_landmarks_are_ordinary_files_in_cstorage():
    assert index(reg(".no.prefetch.landmark")).lookup(".no.prefetch.landmark") is not None


def test_whiteout_helpers():
    assert is_whiteout("a/.wh.b") and is_whiteout(".wh..wh..opq") and not is_whiteout("a/b.wh.c")
    assert whiteout_target("a/.wh.b") == "a/b" and whiteout_target(".wh.x") == "x"
    assert whiteout_target("a/.wh..wh..opq") is None and whiteout_target("a/b") is None
    assert normalize_name("/./a//b/") == "a/b" and normalize_name("./") == ""
