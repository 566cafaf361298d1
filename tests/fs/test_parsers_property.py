"""Property-based tests of every parser that reads bytes from outside zsnap.

Each parser, fed arbitrary (and adversarially mutated) input, may only return a valid model or raise
zsnap's own error (:class:`~fs.errors.ZsnapError`): never ``TypeError``, ``KeyError``, ``RecursionError``,
``UnicodeError`` or any other foreign exception, which would reach the user as a traceback or, inside a
mount, as a disguised failure. Bounded in CI (profile ``ci``); ``HYPOTHESIS_PROFILE=long`` runs 100x more.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import assume, example, given
from hypothesis import strategies as st

from converter.tarstream import TarStreamReader
from fs.digest import sha256_digest
from fs.errors import ZsnapError
from fs.format import (
    Dialect,
    Toc,
    TocEntry,
    build_index,
    decompress_and_verify_tar_split,
    extract_gzip_toc,
    parse_footer,
    parse_toc,
    serialize_toc,
    zstd_decompress,
)
from fs.format.tocexact import parse_toc_exact
from fs.lazy.tarindex import index_tar
from fs.registry import OciLayout
from fs.registry.manifests import config_diff_ids, parse_manifest_or_index
from fs.registry.ranges import parse_content_range, parse_multipart_byteranges
from tests.converter.tarfactory import Member, build_tar

D1 = "sha256:" + "1" * 64

# JSON values, including the shapes the parsers look for, at any depth.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
_TOC_KEYS = ["type", "name", "linkName", "mode", "size", "uid", "gid", "modtime", "digest", "offset",
             "endOffset", "chunkSize", "chunkOffset", "chunkDigest", "chunkType", "xattrs", "devMajor",
             "devMinor", "innerOffset", "userName", "Name", "TYPE"]  # fmt: skip
_toc_values = (
    st.sampled_from(
        ["reg", "dir", "symlink", "hardlink", "chunk", "char", "zeros", "", "a/../b", D1, "x\ud800"]
    )
    | st.integers(min_value=-1, max_value=2**64)
    | st.sampled_from(["2024-01-02T03:04:05Z", "2024-13-40T99:00:00Z", "YQ==", "YQ"])
    | json_values
)
toc_entries = st.dictionaries(st.sampled_from(_TOC_KEYS), _toc_values, max_size=10)
toc_documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 0, 2, "1", None]), "entries": st.lists(toc_entries, max_size=8)},
    optional={"tarSplitDigest": st.sampled_from([D1, "", 5, "sha256:x"]), "zsnapPrefetch": json_values},
)


def _only_ours(fn, *args, **kwargs):
    """Call ``fn``; a ZsnapError is an accepted outcome, anything else propagates (and fails the test)."""
    try:
        return fn(*args, **kwargs)
    except ZsnapError:
        return None


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out)


edits = st.lists(st.tuples(st.integers(min_value=0, max_value=1 << 20), st.integers(0, 255)), max_size=6)


# -- footers -------------------------------------------------------------------------------------------


@given(tail=st.binary(max_size=200), blob_size=st.integers(min_value=0, max_value=2**64))
def test_parse_footer_arbitrary(tail: bytes, blob_size: int):
    _only_ours(parse_footer, tail, blob_size)


# -- TOC JSON, both dialects ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", list(Dialect))
@given(doc=toc_documents)
def test_parse_toc_and_index_structured(dialect: Dialect, doc: dict):
    data = json.dumps(doc).encode()
    toc = _only_ours(parse_toc, data, dialect)
    if toc is not None:
        assert isinstance(toc, Toc) and all(isinstance(e, TocEntry) for e in toc.entries)
        _only_ours(build_index, toc, dialect, 10_000)


@pytest.mark.parametrize("dialect", list(Dialect))
@given(data=st.binary(max_size=300))
@example(data=b"[" * 50_000)
@example(data=b'{"entries":[{"type":"reg","name":"\\ud800"}]}')
def test_parse_toc_arbitrary_bytes(dialect: Dialect, data: bytes):
    _only_ours(parse_toc, data, dialect)


@given(doc=toc_documents)
def test_fast_parser_agrees_with_the_exact_one(doc: dict):
    """Whatever the compiled path accepts, the reference parser accepts identically (fallback is exact)."""
    data = json.dumps(doc, separators=(",", ":")).encode()
    fast = _only_ours(parse_toc, data, Dialect.CSTORAGE)
    exact = _only_ours(parse_toc_exact, data, Dialect.CSTORAGE)
    assert (fast is None) == (exact is None)
    if fast is not None:
        assert fast == exact


@given(edit=edits)
def test_parse_toc_mutated_real_toc(edit):
    toc = Toc(1, [TocEntry("dir", "d", mode=0o755, modtime="2024-01-02T03:04:05Z"),
                  TocEntry("reg", "d/f", mode=0o644, size=3, digest=D1, offset=10, end_offset=20,
                           xattrs={"user.a": b"\x01"})])  # fmt: skip
    for dialect in (Dialect.CSTORAGE, Dialect.STARGZ_ZSTD):
        toc_e = toc if dialect.is_cstorage else Toc(1, [TocEntry("dir", "d"), TocEntry("reg", "d/f", size=3,
                                                                     digest=D1, offset=10)])  # fmt: skip
        data = _mutate(serialize_toc(toc_e, dialect), edit)
        parsed = _only_ours(parse_toc, data, dialect)
        if parsed is not None:
            _only_ours(build_index, parsed, dialect, 1000)


# -- compressed payloads: zstd (TOC, tar-split) and eStargz gzip members -----------------------------------


@given(data=st.binary(max_size=300), edit=edits)
def test_zstd_and_tar_split_decoding(data: bytes, edit):
    frame = _mutate(zstandard.ZstdCompressor().compress(data * 3), edit)
    _only_ours(zstd_decompress, frame, max_output=10_000)
    _only_ours(decompress_and_verify_tar_split, frame, sha256_digest(frame), max_size=10_000)


@given(data=st.binary(max_size=300), edit=edits)
def test_estargz_gzip_member(data: bytes, edit):
    tar = build_tar([Member("stargz.index.json", data=data)]).data
    for member in (gzip.compress(tar), _mutate(gzip.compress(tar), edit), data):
        _only_ours(extract_gzip_toc, member, max_size=10_000)


# -- tar readers (converter input, whole-layer mounts) ---------------------------------------------------

_names = st.sampled_from(["a", "./b", "../c", "/d/e", "d/../../f", "g/", "", ".", "x" * 300, "h\udcff"])


@given(
    members=st.lists(
        st.builds(
            Member,
            name=_names,
            kind=st.sampled_from(
                [
                    tarfile.REGTYPE,
                    tarfile.DIRTYPE,
                    tarfile.SYMTYPE,
                    tarfile.LNKTYPE,
                    tarfile.CHRTYPE,
                    tarfile.FIFOTYPE,
                ]
            ),
            data=st.binary(max_size=40),
            linkname=_names,
            devmajor=st.integers(0, 2**21 - 1),
        ),
        max_size=6,
    ),
    edit=edits,
)
def test_tar_readers(members, edit):
    try:
        data = build_tar(members).data
    except (ValueError, tarfile.TarError, UnicodeError):
        assume(False)
    for blob in (data, _mutate(data, edit)):
        _only_ours(lambda b: [e for e in TarStreamReader(io.BytesIO(b))], blob)
        _only_ours(index_tar, io.BytesIO(blob))


@given(data=st.binary(max_size=2048))
def test_tar_readers_arbitrary_bytes(data: bytes):
    _only_ours(lambda b: list(TarStreamReader(io.BytesIO(b))), data)
    _only_ours(index_tar, io.BytesIO(data))


# -- registry answers: ranges, manifests, configs, OCI layouts -------------------------------------------


@given(value=st.text(max_size=60) | st.from_regex(r"bytes [0-9*]{1,25}-?[0-9]{0,25}/[0-9*]{1,25}"))
def test_content_range(value: str):
    _only_ours(parse_content_range, value)


@given(
    parts=st.lists(st.tuples(st.integers(0, 100), st.integers(-5, 100), st.binary(max_size=30)), max_size=4),
    boundary=st.text(alphabet="abcXYZ019-", min_size=1, max_size=10),
    tail=st.binary(max_size=20),
    edit=edits,
)
def test_multipart_byteranges(parts, boundary: str, tail: bytes, edit):
    body = b""
    for start, length, data in parts:
        body += f"--{boundary}\r\nContent-Range: bytes {start}-{start + length - 1}/500\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode() + tail
    for candidate in (body, _mutate(body, edit)):
        _only_ours(parse_multipart_byteranges, candidate, f"multipart/byteranges; boundary={boundary}")


manifest_docs = st.fixed_dictionaries(
    {},
    optional={
        "schemaVersion": st.sampled_from([2, 1, "2"]),
        "mediaType": st.sampled_from(
            ["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", 5]
        )
        | json_values,
        "config": st.fixed_dictionaries(
            {}, optional={"mediaType": json_values, "digest": st.sampled_from([D1, 5]), "size": json_values}
        ),
        "layers": st.lists(json_values, max_size=3) | json_values,
        "manifests": st.lists(json_values, max_size=3) | json_values,
        "annotations": json_values,
    },
)


@given(doc=manifest_docs, raw=st.binary(max_size=100))
def test_manifests_and_configs(doc: dict, raw: bytes):
    _only_ours(parse_manifest_or_index, json.dumps(doc).encode())
    _only_ours(parse_manifest_or_index, raw, "application/vnd.oci.image.manifest.v1+json")
    _only_ours(config_diff_ids, json.dumps({"rootfs": doc}).encode())
    _only_ours(config_diff_ids, raw)


@given(index=json_values | st.fixed_dictionaries({"manifests": st.lists(json_values, max_size=3)}))
def test_oci_layout_index(index, tmp_path_factory):
    path: Path = tmp_path_factory.mktemp("layout")
    layout = OciLayout(path)
    layout.init()
    (path / "index.json").write_text(json.dumps(index))
    _only_ours(layout.read_index)
    _only_ours(layout.tags)
    _only_ours(layout.resolve, None)
    _only_ours(layout.resolve, "latest")
