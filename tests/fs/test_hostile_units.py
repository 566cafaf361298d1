"""Hostile input at the unit level: chunk verification, resource limits, parse errors that are messages.

Every case builds the bad input the way an attacker would (a TOC whose own digest is fine) and checks
that zsnap refuses it with its own error naming the entry, or serves only verified bytes.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from converter.tarstream import TarStreamReader
from fs.digest import sha256_digest
from fs.errors import FormatError, NotInStore, VerificationError, ZsnapError
from fs.format import Chunk, Dialect, Toc, TocEntry, build_index, parse_toc, serialize_toc
from fs.format.tocexact import parse_toc_exact
from fs.lazy.decode import (
    STORED,
    check_chunk,
    decode_verify,
    decode_verify_chunk,
    stored_piece,
    zeros_digest,
    zeros_piece,
)
from fs.limits import DEFAULT_LIMITS, Limits
from fs.registry import OciLayout
from fs.registry.manifests import parse_manifest_or_index
from fs.store import Store
from tests.converter.tarfactory import Member, build_tar

CS = Dialect.CSTORAGE
D1 = "sha256:" + "1" * 64


# -- (3) every byte served is vouched for -----------------------------------------------------------------


def test_zeros_chunk_is_served_only_with_the_digest_of_its_zero_bytes():
    data = b"secret payload!!" * 64
    relabelled = Chunk(0, len(data), 100, 200, sha256_digest(data), zeros=True)  # real digest kept
    with pytest.raises(VerificationError, match="zero bytes"):
        zeros_piece(relabelled, 0, 10)
    with pytest.raises(VerificationError):
        check_chunk("zstd", b"", relabelled)  # zsnap check agrees with the mount
    with pytest.raises(VerificationError):
        decode_verify_chunk("zstd", zstandard.ZstdCompressor().compress(data), relabelled)
    honest = Chunk(0, 5000, 100, 200, sha256_digest(bytes(5000)), zeros=True)
    assert zeros_piece(honest, 10, 20) == bytes(10)
    check_chunk("zstd", b"", honest)
    assert zeros_digest(5000) == sha256_digest(bytes(5000))
    assert zeros_digest((1 << 20) + 3) == sha256_digest(bytes((1 << 20) + 3))


def test_stored_chunk_of_another_size_is_refused(tmp_path: Path):
    with Store.open(tmp_path / "store") as store:
        content = bytes(range(50))
        digest = store.put(content)
        exact = Chunk(0, 50, 0, 10, digest)
        assert stored_piece(store, exact, 0, 50) == content
        assert stored_piece(store, exact, 10, 20) == content[10:20]
        longer_claim = Chunk(0, 100, 0, 10, digest)  # short data, next chunk's bytes would shift in
        with pytest.raises(VerificationError, match="shorter"):
            stored_piece(store, longer_claim, 0, 100)
        shorter_claim = Chunk(0, 30, 0, 10, digest)  # a prefix of another content
        with pytest.raises(VerificationError, match="longer"):
            stored_piece(store, shorter_claim, 20, 30)
        with pytest.raises(NotInStore):
            stored_piece(store, Chunk(0, 5, 0, 1, D1), 0, 5)


def test_big_chunk_is_decoded_streaming_into_the_store(tmp_path: Path):
    size = 64 << 20
    compressed = zstandard.ZstdCompressor().compress(bytes(size))  # a few KB declaring 64 MiB
    good = Chunk(0, size, 0, len(compressed), sha256_digest(bytes(size)))
    bad = Chunk(0, size, 0, len(compressed), D1)
    with Store.open(tmp_path / "store") as store:
        tracemalloc.start()
        try:
            results = decode_verify(
                "zstd", compressed, 0, [bad, good], store=store, holder="t", max_materialize=1 << 20
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(results[0], VerificationError) and results[1] is STORED
        assert peak < 16 << 20, f"decoding a 64 MiB chunk peaked at {peak} bytes"
        assert store.has(good.digest) and store.size(good.digest) == size and not store.has(D1)
        assert list((tmp_path / "store" / "wip").iterdir()) == []  # the refused one left nothing


def test_chunk_decoding_short_of_its_declared_size_is_a_format_error():
    compressed = zstandard.ZstdCompressor().compress(b"abc")
    with pytest.raises(FormatError, match="decodes to 3 bytes"):
        decode_verify_chunk("zstd", compressed, Chunk(0, 1 << 30, 0, len(compressed), D1))


# -- limits ------------------------------------------------------------------------------------------------


def test_limits_from_config_mapping():
    limits = Limits.from_mapping({"max-toc-entries": 10, "max-path-depth": 3})
    assert limits.max_toc_entries == 10 and limits.max_path_depth == 3
    assert limits.max_chunk_size == DEFAULT_LIMITS.max_chunk_size
    assert Limits.from_mapping(limits.to_mapping()) == limits
    with pytest.raises(FormatError, match="unknown limit 'max-foo'"):
        Limits.from_mapping({"max-foo": 1})
    for bad in (0, -1, True, "10", 1.5):
        with pytest.raises(FormatError, match="max-toc-entries"):
            Limits.from_mapping({"max-toc-entries": bad})
    with pytest.raises(ValueError):
        Limits(max_xattr_size=0)


def _entries_json(n: int, *, null: bool = False) -> bytes:
    extra = ',"uid":null' if null else ""
    body = ",".join(f'{{"type":"dir","name":"d{i}"{extra}}}' for i in range(n))
    return f'{{"version":1,"entries":[{body}]}}'.encode()


@pytest.mark.parametrize("null", [False, True], ids=["fast", "exact"])
def test_toc_entry_limit_at_and_past(null: bool):
    assert len(parse_toc(_entries_json(5, null=null), CS, max_entries=5).entries) == 5
    with pytest.raises(FormatError, match="max-toc-entries"):
        parse_toc(_entries_json(6, null=null), CS, max_entries=5)
    toc = parse_toc(_entries_json(6), CS)
    with pytest.raises(FormatError, match="max-toc-entries"):
        build_index(toc, CS, 100, limits=Limits(max_toc_entries=5))


def _reg(name: str, **kw) -> TocEntry:
    return TocEntry("reg", name, mode=0o644, size=10, digest=D1, offset=100, end_offset=150, **kw)


def _index(*entries: TocEntry, limits: Limits = DEFAULT_LIMITS):
    return build_index(Toc(1, list(entries)), CS, 10_000, limits=limits)


def test_path_limits_at_and_past():
    limits = Limits(max_path_depth=300, max_name_length=10, max_path_length=1000)
    deep = "/".join(["d"] * 300)
    assert _index(_reg(deep), limits=limits).lookup(deep) is not None
    with pytest.raises(FormatError, match="max-path-depth") as info:
        _index(_reg(deep + "/d"), limits=limits)
    assert info.value.path == deep + "/d"
    assert _index(_reg("a" * 10), limits=limits)
    with pytest.raises(FormatError, match="max-name-length"):
        _index(_reg("x/" * 5 + "a" * 11), limits=limits)
    long_path = "/".join(["abcdefghi"] * 100) + "x"  # 1000 bytes, 100 components
    assert len(long_path) == 1000 and _index(_reg(long_path), limits=limits)
    with pytest.raises(FormatError, match="max-path-length"):
        _index(_reg(long_path + "x"), limits=limits)
    with pytest.raises(FormatError, match="max-path-length"):
        _index(TocEntry("symlink", "l", link_name="t" * 1001), limits=limits)


def test_ten_thousand_components_is_a_message_not_a_recursion_error():
    name = "/".join(["a"] * 10_000)
    with pytest.raises(FormatError, match=r"max-path-(length|depth)") as info:
        _index(_reg(name))
    assert len(str(info.value)) < 1000  # the message stays one readable line
    relaxed = Limits(max_path_depth=20_000, max_path_length=100_000)
    assert _index(_reg(name), limits=relaxed).lookup(name).size == 10  # iterative: no RecursionError


def test_xattr_limits_at_and_past():
    limits = Limits(max_xattr_size=8, max_xattr_count=2, max_xattr_name_length=6)
    assert _index(_reg("f", xattrs={"user.a": b"12345678", "user.b": b""}), limits=limits)
    for xattrs, key in (
        ({"user.a": b"123456789"}, "max-xattr-size"),
        ({"user.a": b"", "user.b": b"", "user.c": b""}, "max-xattr-count"),
        ({"user.ab": b""}, "max-xattr-name-length"),
    ):
        with pytest.raises(FormatError, match=key) as info:
            _index(_reg("f", xattrs=xattrs), limits=limits)
        assert info.value.path == "f"


def test_chunk_size_limits_at_and_past():
    limits = Limits(max_chunk_size=10, max_zero_chunk_size=20)
    assert _index(_reg("f"), limits=limits)
    with pytest.raises(FormatError, match="max-chunk-size"):
        _index(TocEntry("reg", "f", size=11, digest=D1, offset=100, end_offset=150), limits=limits)
    zeros = TocEntry("reg", "z", size=20, digest=D1, offset=100, end_offset=150, chunk_type="zeros")
    assert _index(zeros, limits=limits)
    zeros.size = 21
    with pytest.raises(FormatError, match="max-zero-chunk-size"):
        _index(zeros, limits=limits)


@pytest.mark.parametrize("major,minor", [(1 << 62, 0), (0, 1 << 62), (4096, 0), (0, 1 << 20)])
def test_impossible_device_numbers(major: int, minor: int):
    with pytest.raises(FormatError, match="device number") as info:
        _index(TocEntry("char", "dev/x", dev_major=major, dev_minor=minor))
    assert info.value.path == "dev/x"
    assert _index(TocEntry("char", "dev/ok", dev_major=4095, dev_minor=(1 << 20) - 1))


@pytest.mark.parametrize(
    "entry",
    [
        '{"type":"reg","name":"a\\ud800b"}',
        '{"type":"symlink","name":"l","linkName":"\\udc00"}',
        '{"type":"reg","name":"x","xattrs":{"user.\\ud800":"YQ=="}}',
    ],
    ids=["name", "symlink-target", "xattr-name"],
)
def test_lone_surrogates_are_refused_naming_the_entry(entry: str):
    data = ('{"version":1,"entries":[{"type":"dir","name":"d"},' + entry + "]}").encode()
    with pytest.raises(FormatError, match="surrogate") as info:
        parse_toc(data, CS)
    assert "TOC entry 1" in str(info.value)


def test_fast_and_exact_parsers_agree_on_canonical_tocs():
    entries = [TocEntry("dir", "d", mode=0o755, modtime="2024-01-02T03:04:05Z"),
               _reg("d/f", xattrs={"user.k": b"\x00\xff"}, uid=7, chunk_type="")]  # fmt: skip
    toc = Toc(1, entries, tar_split_digest=D1)
    data = serialize_toc(toc, CS)
    assert parse_toc(data, CS) == parse_toc_exact(data, CS) == toc


# -- (5) malformed manifests and layouts are messages -----------------------------------------------------


def test_oci_layout_with_a_non_string_digest(tmp_path: Path):
    layout = OciLayout(tmp_path)
    layout.init()
    (tmp_path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": 5, "size": 1}]})
    )
    with pytest.raises(FormatError, match=r"index\.json entry 0"):
        layout.resolve(None)


@pytest.mark.parametrize(
    "doc",
    [
        {"schemaVersion": 2, "config": {"mediaType": "c", "digest": 5, "size": 1}, "layers": []},
        {"schemaVersion": 2, "config": {"mediaType": "c", "digest": D1, "size": True}, "layers": []},
        {"schemaVersion": 2, "config": {"mediaType": "c", "digest": D1, "size": 1}, "layers": [],
         "annotations": [1, 2]},
        {"schemaVersion": 2, "manifests": [{"mediaType": "m", "digest": D1, "size": 1, "platform": 3}]},
        {"schemaVersion": 2, "mediaType": 5},
    ],
)  # fmt: skip
def test_malformed_manifests_are_format_errors(doc):
    with pytest.raises(FormatError):
        parse_manifest_or_index(json.dumps(doc).encode())


def test_deeply_nested_manifest_is_a_format_error():
    with pytest.raises(FormatError, match="nests too deeply"):
        parse_manifest_or_index(b"[" * 100_000 + b"]" * 100_000)


# -- (6) the converter refuses what the mount refuses -----------------------------------------------------


@pytest.mark.parametrize(
    "members,message,entry",
    [
        ([Member("../evil", data=b"x")], "escapes the layer", "../evil"),
        ([Member("etc/x", data=b"x"), Member("sh", tarfile_kind := b"1", linkname="../../etc/shadow")],
         "escapes the layer", "sh"),
        ([Member("a", b"1", linkname="missing")], "missing", "a"),
        ([Member("d", b"5"), Member("l", b"1", linkname="d")], "directory", "l"),
        ([Member("/".join(["d"] * 2000), data=b"x")], "max-path-depth", None),
    ],
    ids=["dotdot-name", "hardlink-out", "hardlink-missing", "hardlink-dir", "too-deep"],
)  # fmt: skip
def test_tar_reader_refuses_what_the_mount_refuses(members, message: str, entry: str | None):
    import io

    tar = build_tar(members)
    with pytest.raises(FormatError, match=message) as info:
        for _ in TarStreamReader(io.BytesIO(tar.data)):
            pass
    assert isinstance(info.value, ZsnapError)
    if entry is not None:
        assert info.value.path == entry


def test_real_tocs_take_the_compiled_path(vectors_dir: Path):
    """The speed (and memory) of TOC parsing depends on real producers' TOCs not falling back."""
    from fs.format import sniff_toc_dialect
    from fs.format.tocparse import _parse_toc_fast

    files = sorted(vectors_dir.glob("*/toc/*.toc.json"))
    assert files
    for f in files:
        data = f.read_bytes()
        assert _parse_toc_fast(data, sniff_toc_dialect(data)) is not None, f
    ours = Toc(1, [_reg("a", xattrs={"user.x": b"1"})], tar_split_digest=D1, prefetch=["a"])
    assert _parse_toc_fast(serialize_toc(ours, CS), CS) == ours


def test_non_canonical_tocs_are_read_exactly_only_up_to_a_bound(monkeypatch):
    """A TOC that forces the pure-Python parser (here: one ``null``) cannot make it build 1M entries."""
    from fs.format import tocparse

    monkeypatch.setattr(tocparse, "EXACT_MAX_ENTRIES", 4)
    assert len(parse_toc(_entries_json(4, null=True), CS, max_entries=10).entries) == 4
    with pytest.raises(FormatError, match="canonical form") as info:
        parse_toc(_entries_json(5, null=True), CS, max_entries=10)
    assert "uid" in str(info.value)  # says what made it non-canonical
    assert len(parse_toc(_entries_json(10), CS, max_entries=10).entries) == 10  # canonical: the full limit
