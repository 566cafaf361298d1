"""The prefetch list zsnap writes into c/storage TOCs (``zsnapPrefetch``): round trip and index view."""

from __future__ import annotations

import json

import pytest

from fs.errors import FormatError
from fs.format import Dialect, Toc, TocEntry, build_index, parse_toc, serialize_toc

D1 = "sha256:" + "1" * 64


def _toc(prefetch: list[str]) -> Toc:
    entries = [
        TocEntry("dir", "app/", mode=0o755),
        TocEntry("reg", "app/start.sh", mode=0o755, size=10, digest=D1, offset=100, end_offset=150),
        TocEntry("reg", "app/big.bin", mode=0o644, size=10, digest=D1, offset=150, end_offset=200),
    ]
    return Toc(1, entries, prefetch=prefetch)


def test_prefetch_round_trips_and_is_ignored_by_key_order():
    data = serialize_toc(_toc(["./app/start.sh", "app/missing"]), Dialect.CSTORAGE)
    top = json.loads(data)
    assert list(top)[-1] == "zsnapPrefetch" and top["zsnapPrefetch"] == ["./app/start.sh", "app/missing"]
    parsed = parse_toc(data, Dialect.CSTORAGE)
    assert parsed.prefetch == ["./app/start.sh", "app/missing"]
    assert serialize_toc(parsed, Dialect.CSTORAGE) == data


def test_without_prefetch_the_toc_is_plain_cstorage():
    assert b"zsnapPrefetch" not in serialize_toc(_toc([]), Dialect.CSTORAGE)


def test_index_lists_existing_prefetch_paths_in_order():
    index = build_index(_toc(["app/big.bin", "/app/start.sh", "app/missing"]), Dialect.CSTORAGE, 10_000)
    assert index.prefetch_paths == ["app/big.bin", "app/start.sh"]


def test_estargz_cannot_carry_a_list():
    with pytest.raises(FormatError):
        serialize_toc(_toc(["app/start.sh"]), Dialect.STARGZ_ZSTD)


def test_malformed_prefetch_list_is_rejected():
    with pytest.raises(FormatError, match="zsnapPrefetch"):
        parse_toc(b'{"version":1,"entries":[],"zsnapPrefetch":[1]}', Dialect.CSTORAGE)
