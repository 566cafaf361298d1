"""The test infrastructure is real and right: images built in Python unpack in a real containerd to exactly
the rootfs their model predicts, and the peers (ctr-remote, skopeo) convert them.

Negative controls make sure the checkers can fail: the same container output is compared with a model that
lacks the whiteout layer, and must differ.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.fixtures.containerd import Containerd, chain_id
from tests.fixtures.images import (
    DOCKER_EMPTY_LAYER_DIGEST,
    NON_UTF8_NAME,
    TOC_LOSSY_NAMES,
    BuiltImage,
    ImageCatalog,
    LayoutWriter,
    PeerImages,
    build_image,
    diff_stat_listing,
    diff_tree,
    features_spec,
    large_spec,
    push,
    stat_listing_script,
)

SUMS_IN_CONTAINER = "/run/zsnap-check/SHA256SUMS"


def _tar_bytes(image: BuiltImage, digest: str, media_type: str) -> bytes:
    blob = image.blob_path(digest).read_bytes()
    if media_type.endswith("gzip"):
        return gzip.decompress(blob)
    if media_type.endswith("zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def _check_in_container(ctrd: Containerd, ref: str, image: BuiltImage, **diff_kw: Any) -> str:
    """Run the sums + stat listing script in a container of ``ref``; assert it matches; return the output."""
    out = ctrd.run(
        ref,
        ["sh", "-c", stat_listing_script(image.spec, SUMS_IN_CONTAINER)],
        mounts=[(str(image.sums_path), SUMS_IN_CONTAINER)],
    )
    problems = diff_stat_listing(image.spec, out, **diff_kw)
    assert not problems, "\n".join(problems)
    return out


def _http_get(url: str, headers: dict[str, str] | None = None) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return resp.read()  # type: ignore[no-any-return]


# -- the image builder, offline ----------------------------------------------------------------------------


def test_every_layer_tar_ends_exactly_with_two_zero_blocks(test_images: ImageCatalog) -> None:
    for name, image in test_images.images.items():
        for child in image.platforms.values() or [image]:
            manifest = child.manifest()
            config = json.loads(child.blob_path(manifest["config"]["digest"]).read_bytes())  # type: ignore[index]
            for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):  # type: ignore[call-overload]
                tar = _tar_bytes(child, layer["digest"], layer["mediaType"])
                assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id, name
                with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                    tf.getmembers()
                    end_of_members = tf.offset
                assert len(tar) == end_of_members + 1024 and tar.endswith(bytes(1024)), name


def test_model_applies_whiteouts_opaque_dirs_and_hardlinks() -> None:
    spec = features_spec()
    merged = spec.merged
    assert not [p for p in merged if "/.wh." in "/" + p]
    assert {"etc/motd", "feat/small.txt", "feat/dir-gone", "feat/dir-gone/child", "feat/hl-target",
            "feat/opaque/old1", "feat/opaque/kept-then-hidden"} <= spec.removed
    assert merged["feat/opaque/new"].kind == "file" and "feat/opaque" in merged
    assert merged["feat/type-change"].kind == "dir" and "feat/type-change/inner" in merged
    survivor = merged["feat/dir-a/hardlink-cross-dir"]
    assert survivor.kind == "file" and survivor.data.startswith(b"hardlink target")  # type: ignore[union-attr]
    assert merged["feat/overwritten"].data == b"layer 2 version (longer than the first)\n"
    sums = spec.sums()
    assert b"  ./feat/regular.txt\n" in sums and b"small.txt" not in sums
    assert b"./" + NON_UTF8_NAME.encode("utf-8", "surrogateescape") in sums


def test_builds_are_deterministic(tmp_path: Path, test_images: ImageCatalog) -> None:
    writer = LayoutWriter(tmp_path / "again")
    again = build_image(writer, features_spec(), "gzip")
    assert again.digest == test_images["features:gzip"].digest
    small = [build_image(LayoutWriter(tmp_path / f"l{i}"), large_spec(4, 2, seed=5), "x") for i in range(2)]
    assert small[0].digest == small[1].digest
    assert build_image(LayoutWriter(tmp_path / "l2"), large_spec(4, 2, seed=6), "x").digest != small[0].digest


def test_dups_manifest_repeats_layer_digests(test_images: ImageCatalog) -> None:
    layers = [layer["digest"] for layer in test_images["dups:gzip"].manifest()["layers"]]  # type: ignore[index]
    assert layers.count(DOCKER_EMPTY_LAYER_DIGEST) == 3
    assert layers[2] == layers[4] != DOCKER_EMPTY_LAYER_DIGEST
    dups2 = [layer["digest"] for layer in test_images["dups2:gzip"].manifest()["layers"]]  # type: ignore[index]
    assert dups2[0] == layers[0] and dups2[1] == layers[2] and dups2[2] == DOCKER_EMPTY_LAYER_DIGEST
    docker = test_images["dups:docker"].manifest()
    assert docker["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_multiarch_index_has_amd64_and_arm64(test_images: ImageCatalog) -> None:
    for tag, child_type in (("multiarch", "oci.image.manifest"), ("docker-multiarch", "docker.distribution")):
        index = test_images[f"features:{tag}"]
        assert index.is_index and set(index.platforms) == {"linux/amd64", "linux/arm64/v8"}
        children = index.manifest()["manifests"]
        assert all(child_type in c["mediaType"] for c in children)  # type: ignore[union-attr]
        assert [c["platform"]["architecture"] for c in children] == ["amd64", "arm64"]  # type: ignore[union-attr]


# -- real registry + real containerd -----------------------------------------------------------------------


@pytest.mark.needs_root
def test_features_gzip_unpacks_to_the_model(
    registry: Any, containerd_clean: Containerd, test_images: ImageCatalog, tmp_path: Path
) -> None:
    image = test_images["features:gzip"]
    registry.push_oci_layout(image.layout, "fixtures/features:gzip", src_tag="gzip")
    ref = f"{registry.host}/fixtures/features:gzip"
    containerd_clean.pull(ref)
    out = _check_in_container(containerd_clean, ref, image)
    assert "|character special file|666|0|0|1|3|" in out and "|fifo|600|" in out

    # negative control: without the whiteout layer the same rootfs must not match
    stale = replace(image.spec, layers=image.spec.layers[:2])
    problems = diff_stat_listing(stale, out)
    assert any("feat/small.txt" in p for p in problems) and any("feat/added-in-2" in p for p in problems)

    with containerd_clean.mount_rootfs(ref, tmp_path / "rootfs") as rootfs:
        assert diff_tree(image.spec, rootfs) == []
        (tmp_path / "bad").mkdir()
        assert diff_tree(image.spec, tmp_path / "bad", check_data=False)  # an empty dir is not the rootfs
    assert containerd_clean.chain_id(ref) == chain_id([lb.diff_id for lb in image.layers])


@pytest.mark.needs_root
@pytest.mark.parametrize("tag", ["uncompressed", "zstd", "docker", "multiarch", "docker-multiarch"])
def test_features_variants_unpack_to_the_model(
    registry: Any, containerd_clean: Containerd, test_images: ImageCatalog, tag: str
) -> None:
    image = test_images[f"features:{tag}"]
    ref = push(image, registry.host, f"fixtures/features:{tag}")
    containerd_clean.pull(ref)
    assert containerd_clean.image_digest(ref) == image.digest
    _check_in_container(containerd_clean, ref, image)


@pytest.mark.needs_root
def test_dups_images_pull_and_run(
    registry: Any, containerd_clean: Containerd, test_images: ImageCatalog
) -> None:
    for key in ("dups:gzip", "dups2:gzip", "dups:docker"):
        image = test_images[key]
        ref = push(image, registry.host, f"fixtures/{key.replace(':', '-')}:latest")
        containerd_clean.pull(ref)
        _check_in_container(containerd_clean, ref, image)
    blob = _http_get(f"http://{registry.host}/v2/fixtures/dups-gzip/blobs/{DOCKER_EMPTY_LAYER_DIGEST}")
    assert gzip.decompress(blob) == bytes(1024)


# -- the peers' conversions --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.needs_root
def test_peer_images_are_what_the_peers_write(
    peer_images: PeerImages, registry: Any, containerd_clean: Containerd, test_images: ImageCatalog
) -> None:
    image = test_images["features:gzip"]
    assert peer_images.digests["features:gzip"] == image.digest
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    for key, ref in peer_images.refs.items():
        repo, _, tag = ref.partition("/")[2].partition(":")
        manifest = json.loads(_http_get(f"http://{registry.host}/v2/{repo}/manifests/{tag}", accept))
        for layer in manifest["layers"]:
            ann = layer.get("annotations", {})
            tail = _http_get(
                f"http://{registry.host}/v2/{repo}/blobs/{layer['digest']}", {"Range": "bytes=-64"}
            )
            if "zstdchunked" in key:
                assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
                assert "io.containers.zstd-chunked.manifest-position" in ann
                assert tail[-48:-40] == bytes.fromhex("502a4d1828000000") and tail.endswith(b"GnUlInUx")
            if key == "features:estargz":
                assert layer["mediaType"].endswith("tar+gzip") and b"STARGZ" in tail
            if "stargz" in key:
                assert "containerd.io/snapshot/stargz/toc.digest" in ann
        containerd_clean.pull(ref)
        _check_in_container(containerd_clean, ref, image)
        containerd_clean.remove_image(ref)
    assert TOC_LOSSY_NAMES  # the peers' TOCs cannot carry them; the tar streams above did
