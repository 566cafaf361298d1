"""containerd's filter syntax (pure)."""

from __future__ import annotations

import pytest

from snapshotter.errors import SnapshotInvalid
from snapshotter.filters import Selector, matcher, parse_filter
from snapshotter.metastore import Kind, Record


def test_parse_quoted_and_bare_fields() -> None:
    assert parse_filter('labels."containerd.io/snapshot.ref"==sha256:abc,parent=="k8s.io/6/sha256:x"') == [
        Selector(("labels", "containerd.io/snapshot.ref"), "==", "sha256:abc"),
        Selector(("parent",), "==", "k8s.io/6/sha256:x"),
    ]
    assert parse_filter("labels.a.b") == [Selector(("labels", "a", "b"))]
    assert parse_filter(" name != x , kind==view") == [
        Selector(("name",), "!=", "x"),
        Selector(("kind",), "==", "view"),
    ]
    assert parse_filter(r"name~=/^a\/b$/") == [Selector(("name",), "~=", "^a/b$")]
    assert parse_filter(r'name=="tab\there"') == [Selector(("name",), "==", "tab\there")]


@pytest.mark.parametrize("bad", ['name=="open', "name==", "==x", "name==x y", "name~=(", ",", "name==a,"])
def test_bad_filters_are_invalid(bad: str) -> None:
    with pytest.raises(SnapshotInvalid):
        parse_filter(bad)


def test_matching_follows_containerd_adaptor() -> None:
    root = Record(
        key="sha256:1", id=1, kind=Kind.COMMITTED, labels={"containerd.io/snapshot.ref": "sha256:1"}
    )
    child = Record(key="k", id=2, kind=Kind.ACTIVE, parent="sha256:1")
    pick = lambda *f: [r.key for r in (root, child) if matcher(list(f))(r)]  # noqa: E731
    assert pick('labels."containerd.io/snapshot.ref"==sha256:1,parent==""') == ["sha256:1"]
    assert pick("parent==sha256:1") == ["k"]
    assert pick("labels.containerd.io/snapshot.ref") == ["sha256:1"]
    assert pick("labels.missing!=x") == ["sha256:1", "k"]
    assert pick("kind==active", "name==sha256:1") == ["sha256:1", "k"]
    assert pick() == ["sha256:1", "k"]
    assert pick("bogus==1") == ["sha256:1", "k"]  # unknown fields are ignored (containerd re-checks)
