"""fs.registry.manifests: the manifest model shared by the converter and the lazy mount (pure)."""

from __future__ import annotations

import json

import pytest

from fs.errors import FormatError
from fs.registry.manifests import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    config_diff_ids,
    host_platform,
    parse_manifest_or_index,
    platform_matches,
)

D = "sha256:" + "a" * 64


def _desc(**kw) -> dict:
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D, "size": 3, **kw}


def test_manifest_and_unknown_fields_round_trip():
    doc = {
        "schemaVersion": 2,
        "config": _desc(mediaType="application/vnd.oci.image.config.v1+json"),
        "layers": [_desc(urls=["http://x"], annotations={"k": "v"})],
    }
    m = parse_manifest_or_index(json.dumps(doc).encode(), "application/vnd.oci.image.manifest.v1+json")
    assert isinstance(m, ImageManifest)
    assert m.layers[0].extra == {"urls": ["http://x"]} and m.layers[0].annotations == {"k": "v"}
    assert m.layers[0].to_json() == doc["layers"][0]


def test_index_and_platform_choice():
    entries = [
        _desc(platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        _desc(platform={"os": "linux", "architecture": host_platform()["architecture"]}),
    ]
    index = parse_manifest_or_index(json.dumps({"schemaVersion": 2, "manifests": entries}).encode())
    assert isinstance(index, ImageIndex)
    arm, host = index.manifests
    assert platform_matches(host, None)
    assert platform_matches(arm, None) == (host_platform()["architecture"] == "arm64")
    assert platform_matches(arm, "linux/arm64") and platform_matches(arm, "linux/arm64/v8")
    assert not platform_matches(arm, "linux/arm64/v7")
    with pytest.raises(FormatError):
        platform_matches(arm, "linux")


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 1, "fsLayers": []}',
        b'{"schemaVersion": 2, "layers": "x"}',
        json.dumps({"schemaVersion": 2, "config": _desc(digest="sha256:short"), "layers": []}).encode(),
    ],
)
def test_malformed_manifests_are_format_errors(data):
    with pytest.raises(FormatError):
        parse_manifest_or_index(data, "application/vnd.oci.image.manifest.v1+json")


def test_config_diff_ids():
    assert config_diff_ids(b'{"rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}}') == ["sha256:x"]
    for bad in (b"{}", b'{"rootfs": {"diff_ids": [1]}}', b"nope"):
        with pytest.raises(FormatError):
            config_diff_ids(bad)


def test_descriptor_requires_fields():
    with pytest.raises(FormatError, match="lacks 'size'"):
        Descriptor.from_json({"mediaType": "x", "digest": D}, where="layer 0")
