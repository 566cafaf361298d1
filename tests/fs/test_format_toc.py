"""fs.format.toc: strict parsing, Go-exact serialization, times."""

from __future__ import annotations

import json
import random

import pytest

from fs.errors import FormatError
from fs.format import Dialect, Toc, TocEntry, gojson, ns_to_rfc3339, parse_toc, rfc3339_to_ns, serialize_toc
from fs.format.gojson import go_string

CS = Dialect.CSTORAGE
SG = Dialect.STARGZ_ZSTD
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def cs_doc(*entries: dict, **top) -> bytes:
    return json.dumps({"version": 1, "entries": list(entries), **top}, separators=(",", ":")).encode()


def test_cstorage_exact_layout():
    toc = Toc(
        1,
        [
            TocEntry("dir", "etc/", mode=0o755, modtime="2024-01-02T03:04:05Z"),
            TocEntry(
                "reg",
                "big.bin",
                mode=0o644,
                size=300000,
                uid=1,
                gid=2,
                modtime="2024-01-02T03:04:05.5Z",
                xattrs={"user.b": b"\xff", "user.a": b"hello"},
                digest=D1,
                offset=1024,
                end_offset=90000,
                chunk_size=70000,
                chunk_digest=D2,
            ),
            TocEntry(
                "chunk",
                "big.bin",
                chunk_offset=70000,
                chunk_size=2048,
                offset=40000,
                chunk_digest=D1,
                chunk_type="zeros",
            ),
        ],
        tar_split_digest=D2,
    )
    expected = (
        '{"version":1,"entries":[{"type":"dir","name":"etc/","mode":493,"modtime":"2024-01-02T03:04:05Z"},'
        '{"type":"reg","name":"big.bin","mode":420,"size":300000,"uid":1,"gid":2,'
        '"modtime":"2024-01-02T03:04:05.5Z","xattrs":{"user.a":"aGVsbG8=","user.b":"/w=="},'
        f'"digest":"{D1}","offset":1024,"endOffset":90000,"chunkSize":70000,"chunkDigest":"{D2}"}},'
        '{"type":"chunk","name":"big.bin","offset":40000,"chunkSize":2048,"chunkOffset":70000,'
        f'"chunkDigest":"{D1}","chunkType":"zeros"}}],"tarSplitDigest":"{D2}"}}'
    ).encode()
    data = serialize_toc(toc, CS)
    assert data == expected
    assert parse_toc(data, CS) == toc


def test_estargz_exact_layout():
    toc = Toc(1, [TocEntry("reg", "a", size=3, uid=7, user_name="u", offset=96, xattrs={"user.e": b""},
                           digest=D1, chunk_digest=D1, inner_offset=5)])  # fmt: skip
    expected = (
        '{\n\t"version": 1,\n\t"entries": [\n\t\t{\n\t\t\t"name": "a",\n\t\t\t"type": "reg",\n'
        '\t\t\t"size": 3,\n\t\t\t"uid": 7,\n\t\t\t"userName": "u",\n\t\t\t"offset": 96,\n'
        '\t\t\t"innerOffset": 5,\n\t\t\t"xattrs": {\n\t\t\t\t"user.e": ""\n\t\t\t},\n'
        f'\t\t\t"digest": "{D1}",\n\t\t\t"chunkDigest": "{D1}"\n\t\t}}\n\t]\n}}'
    ).encode()
    assert serialize_toc(toc, SG) == expected
    assert parse_toc(expected, SG) == toc
    assert serialize_toc(Toc(1, []), SG) == b'{\n\t"version": 1,\n\t"entries": []\n}'


def test_schema_fields_not_representable():
    with pytest.raises(FormatError, match="inner_offset"):
        serialize_toc(Toc(1, [TocEntry("reg", "a", inner_offset=1)]), CS)
    with pytest.raises(FormatError, match="end_offset"):
        serialize_toc(Toc(1, [TocEntry("reg", "a", end_offset=1)]), SG)
    with pytest.raises(FormatError, match="tarSplitDigest"):
        serialize_toc(Toc(1, [], tar_split_digest=D1), SG)


def test_go_string_escaping():
    assert go_string("a<b>&c") == r'"a\u003cb\u003e\u0026c"'
    assert go_string('q"\\\n\r\t\x01\x08\x0c') == r'"q\"\\\n\r\t\u0001\u0008\u000c"'
    assert go_string("é\u2028ü") == '"é\\u2028ü"'
    data = serialize_toc(Toc(1, [TocEntry("reg", "dir/<é>")]), CS)
    assert b'"dir/\\u003c\xc3\xa9\\u003e"' in data
    assert parse_toc(data, CS).entries[0].name == "dir/<é>"


def test_keys_case_insensitive_unknown_ignored_last_duplicate_wins():
    data = b'{"Version":1,"ENTRIES":[{"TYPE":"reg","Name":"x","name":"y","Size":3,"bogus":{"a":[1.5]},' \
        b'"userName":"ignored-in-cstorage"}]}'  # fmt: skip
    toc = parse_toc(data, CS)
    assert toc.entries == [TocEntry("reg", "y", size=3)]
    assert parse_toc(data, SG).entries[0].user_name == "ignored-in-cstorage"


def test_null_means_absent_and_whitespace_allowed():
    assert parse_toc(
        b' {"version":1,"entries":[{"type":"dir","name":"a","mode":null}]}\n\t ', CS
    ).entries == [TocEntry("dir", "a")]
    assert parse_toc(b'{"version":1,"entries":null}', CS).entries == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (cs_doc() + b"x", "after the TOC"),
        (cs_doc() + b"{}", "after the TOC"),
        (b"[1]", "not an object"),
        (b'{"version":1,"entries":{}}', "not an array"),
        (b'{"version":"1","entries":[]}', "version"),
        (b"\xff{}", "UTF-8"),
        (b'{"version":1,"entries":[NaN]}', "non-JSON constant"),
        (b'{"version":1,', "not valid JSON"),
        (cs_doc({"type": "reg", "name": "a", "size": "3"}), r"entry 0 \('a'\): field 'size'"),
        (cs_doc({"type": "reg", "name": "a", "size": -1}), "out of range"),
        (cs_doc({"type": "reg", "name": "a", "size": 1 << 63}), "out of range"),
        (cs_doc({"type": "reg", "name": "a", "size": 1.0}), "integer"),
        (cs_doc({"type": "reg", "name": "a", "size": True}), "integer"),
        (cs_doc({"type": "reg", "name": 5}), "string"),
        (cs_doc({"type": "socket", "name": "a"}), "unknown entry type"),
        (cs_doc({"name": "a"}), "missing 'type'"),
        (cs_doc({"type": "reg"}), "missing 'name'"),
        (cs_doc({"type": "chunk", "name": "a", "chunkType": "holes"}), "unknown chunk type"),
        (cs_doc({"type": "reg", "name": "a", "digest": "md5:00"}), "digest"),
        (cs_doc({"type": "reg", "name": "a", "modtime": "2024-13-01T00:00:00Z"}), "RFC 3339"),
        (cs_doc({"type": "reg", "name": "a", "modtime": "yesterday"}), "RFC 3339"),
        (cs_doc({"type": "reg", "name": "a", "xattrs": {"k": "%%%"}}), "base64"),
        (cs_doc({"type": "reg", "name": "a", "xattrs": {"k": "aGVsbG9="}}), "canonical"),
        (cs_doc({"type": "reg", "name": "a", "xattrs": ["k"]}), "object"),
        (cs_doc(tarSplitDigest="sha256:zz"), "tarSplitDigest"),
        (cs_doc(7), "entry 0 is not an object"),
    ],
)
def test_parse_rejects(data, match):
    with pytest.raises(FormatError, match=match):
        parse_toc(data, CS)


def test_estargz_version_and_size_cap():
    with pytest.raises(FormatError, match="version 2"):
        parse_toc(b'{"version":2,"entries":[]}', SG)
    parse_toc(b'{"version":2,"entries":[]}', CS)  # c/storage does not enforce the version
    big = cs_doc(*[{"type": "dir", "name": f"d{i}"} for i in range(100)])
    with pytest.raises(FormatError, match="cap"):
        parse_toc(big, CS, max_size=len(big) - 1)
    assert len(parse_toc(big, CS, max_size=len(big)).entries) == 100


def test_times():
    assert rfc3339_to_ns("1970-01-01T00:00:01Z") == 10**9
    assert rfc3339_to_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * 10**9
    assert rfc3339_to_ns("2023-11-14T23:13:20.000000001+01:00") == 1_700_000_000 * 10**9 + 1
    assert rfc3339_to_ns("0001-01-01T00:00:00Z") == -62135596800 * 10**9
    assert ns_to_rfc3339(1_700_000_000 * 10**9 + 500_000_000) == "2023-11-14T22:13:20.5Z"
    assert ns_to_rfc3339(1_700_000_000 * 10**9 + 500_000_000, nanos=False) == "2023-11-14T22:13:21Z"
    assert ns_to_rfc3339(-62135596800 * 10**9) == "0001-01-01T00:00:00Z"
    assert TocEntry("reg", "a", modtime="1970-01-01T00:00:02Z").modtime_ns == 2 * 10**9
    assert TocEntry("reg", "a").accesstime_ns is None
    for bad in (
        "2023-11-14 22:13:20Z",
        "2023-11-14T22:13:60Z",
        "2023-11-14T22:13:20",
        "2023-02-30T00:00:00Z",
        "２０23-11-14T22:13:20Z",  # full-width digits: Go reads 0-9 only
        "2023-11-14T22:13:20.Z",
        "2023-11-14T22:13:20.1234567890Z",
        "2023-11-14T24:00:00Z",
    ):
        with pytest.raises(FormatError):
            rfc3339_to_ns(bad)


def test_times_fast_path_agrees_with_the_general_parser():
    """The regex-free path for Go's UTC form gives the general parser's answer, or steps aside."""
    rng = random.Random(7)
    seeds = ["2024-02-29T23:59:59.123456789Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z"]
    for _ in range(5000):
        text = list(rng.choice(seeds))
        text[rng.randrange(len(text))] = rng.choice("0123456789:-TZ.+ _²")
        candidate = "".join(text)
        fast = gojson._utc_to_ns(candidate)
        try:
            general: int | None = gojson._rfc3339_to_ns(candidate)
        except FormatError:
            general = None
        if fast is not None:
            assert fast == general, candidate
        elif candidate.endswith("Z"):
            assert general is None, candidate  # a UTC time the fast path refused must be invalid
