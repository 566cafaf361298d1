"""Streamed uploads, the persistent conversion record across processes, largest-first scheduling.

Real ``zsnap convert`` processes against a real registry; the evidence asserted is what the registry
holds (HEAD answers, manifests, upload sessions on disk) and the run's event lines, never timings.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.converter.test_convert import assert_converted, assert_no_leftovers, assert_quiet, manifest, zsnap
from tests.fixtures.images import push


def _head(host: str, repo: str, digest: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers)


def _delete_blob(host: str, repo: str, digest: str) -> None:
    request = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/{digest}", method="DELETE")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202


def _events(stderr: str, name: str) -> list[dict[str, str]]:
    """The ``key=value`` fields of every ``name …`` event line."""
    found = []
    for line in stderr.splitlines():
        if line.startswith(name + " "):
            found.append(dict(part.split("=", 1) for part in line[len(name) + 1 :].split() if "=" in part))
    return found


def _upload_sessions(registry_root: Path, repo: str) -> list[Path]:
    """Upload sessions of ``repo`` still holding data (a cancelled one keeps an empty hash state)."""
    uploads = registry_root / "data/docker/registry/v2/repositories" / repo / "_uploads"
    return list(uploads.glob("*/data"))


def test_streamed_upload_is_the_blob_the_registry_and_manifest_hold(registry, test_images, tmp_path):
    image = test_images["features:gzip"]
    src = push(image, registry.host, "stream/src:v1")
    proc = zsnap(tmp_path, "convert", f"docker://{src}", f"docker://{registry.host}/stream/out:zc")
    assert_quiet(proc)
    m = assert_converted(registry.host, "stream/out", "zc", [x.diff_id for x in image.layers])
    streamed = {x["layer"]: x for x in _events(proc.stderr, "layer streamed")}
    converted = {x["layer"]: x["digest"] for x in _events(proc.stderr, "layer converted")}
    assert converted and streamed.keys() == converted.keys(), proc.stderr  # every conversion streamed
    for source, short in converted.items():
        (layer,) = {x["digest"]: x for x in m["layers"] if x["digest"].startswith("sha256:" + short)}.values()
        status, headers = _head(registry.host, "stream/out", layer["digest"])
        assert status == 200
        assert headers["Docker-Content-Digest"] == layer["digest"]
        assert int(headers["Content-Length"]) == layer["size"] == int(streamed[source]["size"])
    assert not _upload_sessions(registry.root, "stream/out")
    assert_no_leftovers(tmp_path)


def _with_wrong_diff_id(host: str, src_repo: str, tag: str, new_tag: str) -> None:
    """Push ``src_repo:new_tag``: the image of ``tag`` whose config names a wrong diff_id for its last
    layer, so its conversion fails only after the whole layer was written (and streamed)."""
    m = manifest(host, src_repo, tag)
    with urllib.request.urlopen(f"http://{host}/v2/{src_repo}/blobs/{m['config']['digest']}") as r:
        config = json.loads(r.read())
    config["rootfs"]["diff_ids"][-1] = "sha256:" + "0" * 64
    data = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"http://{host}/v2/{src_repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(start) as r:
        location = r.headers["Location"]
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", method="PUT", data=data)
    put.add_header("Content-Type", "application/octet-stream")
    urllib.request.urlopen(put).close()
    m["config"] = {**m["config"], "digest": digest, "size": len(data)}
    body = json.dumps(m).encode()
    req = urllib.request.Request(f"http://{host}/v2/{src_repo}/manifests/{new_tag}", method="PUT", data=body)
    req.add_header("Content-Type", m["mediaType"])
    urllib.request.urlopen(req).close()


@pytest.fixture(scope="module")
def sixty_mb_layer(test_images):
    """busybox + one ~60 MB layer: its output spans several streamed PATCH chunks."""
    return test_images.build_large(60, 1, seed=5)


def test_failure_mid_upload_publishes_nothing(registry, sixty_mb_layer, tmp_path):
    push(sixty_mb_layer, registry.host, "stream/bad:good")
    _with_wrong_diff_id(registry.host, "stream/bad", "good", "bad")
    proc = zsnap(
        tmp_path, "convert", f"docker://{registry.host}/stream/bad:bad",
        f"docker://{registry.host}/stream/bad-out:zc", check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("zsnap: error:")]
    assert len(errors) == 1 and "image config says" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(urllib.error.HTTPError) as missing:
        manifest(registry.host, "stream/bad-out", "zc")
    missing.value.close()
    assert missing.value.code == 404
    bad = sixty_mb_layer.layers[-1].descriptor.digest.split(":")[1][:12]
    assert bad in errors[0]
    assert bad not in {x["layer"] for x in _events(proc.stderr, "layer streamed")}
    assert not _upload_sessions(registry.root, "stream/bad-out")  # the streamed session was cancelled
    assert_no_leftovers(tmp_path)


def test_second_process_mounts_recorded_layers_and_reconverts_deleted_ones(registry, test_images, tmp_path):
    image = test_images["features:gzip"]
    src = f"docker://{push(image, registry.host, 'record/src:v1')}"
    root = tmp_path / "shared-root"
    diff_ids = [x.diff_id for x in image.layers]

    first = zsnap(root, "convert", "--json", src, f"docker://{registry.host}/record/a:zc")
    converted = len(_events(first.stderr, "layer converted"))
    assert converted > 0

    second = zsnap(root, "convert", "--json", src, f"docker://{registry.host}/record/b:zc")
    assert_quiet(second)
    assert not _events(second.stderr, "convert start") and not _events(second.stderr, "layer converted")
    mounted = _events(second.stderr, "layer mounted")
    assert len(mounted) == converted and all(x["origin"] == "record/a" for x in mounted), second.stderr
    result = json.loads(second.stdout.splitlines()[-1])
    assert (
        result["converted"] == 0
        and result["reused"] == json.loads(first.stdout.splitlines()[-1])["converted"]
    )
    m = assert_converted(registry.host, "record/b", "zc", diff_ids)
    records = [json.loads(p.read_text()) for p in (root / "convert-cache").glob("*.json")]
    assert len(records) == converted
    for record in records:
        assert set(record["locations"]) == {f"{registry.host}/record/a", f"{registry.host}/record/b"}
        assert (
            record["toc_digest"]
            == record["annotations"]["io.github.containers.zstd-chunked.manifest-checksum"]
        )

    # The blobs leave both repositories: the record is stale, so the next run converts again.
    for layer in {x["digest"] for x in m["layers"]}:
        if any(r["digest"] == layer for r in records):
            _delete_blob(registry.host, "record/a", layer)
            _delete_blob(registry.host, "record/b", layer)
    third = zsnap(root, "convert", "--json", src, f"docker://{registry.host}/record/c:zc")
    assert_quiet(third)
    assert len(_events(third.stderr, "layer converted")) == converted
    assert not _events(third.stderr, "layer mounted")
    assert_converted(registry.host, "record/c", "zc", diff_ids)
    for path in (root / "convert-cache").glob("*.json"):
        assert json.loads(path.read_text())["locations"] == [f"{registry.host}/record/c"]
    assert_no_leftovers(root)


def test_layers_are_scheduled_largest_first(registry, test_images, tmp_path):
    dups, dups2 = test_images["dups:gzip"], test_images["dups2:gzip"]
    listing = tmp_path / "list"
    listing.write_text(
        f"docker://{push(dups, registry.host, 'order/dups:src')} docker://{registry.host}/order/dups:zc\n"
        f"docker://{push(dups2, registry.host, 'order/dups2:src')} docker://{registry.host}/order/dups2:zc\n"
    )
    proc = zsnap(tmp_path / "root", "convert", "--jobs", "1", "--from-file", str(listing))
    scheduled = [int(x["size"]) for x in _events(proc.stderr, "layer scheduled")]
    sizes = {x.descriptor.digest: x.descriptor.size for x in (*dups.layers, *dups2.layers)}
    assert sorted(scheduled) == sorted(sizes.values())  # each distinct layer once ...
    assert scheduled == sorted(scheduled, reverse=True)  # ... biggest first, across both images
    assert len(set(scheduled)) > 2


def test_source_layers_already_in_the_store_are_read_in_place(registry, test_images, tmp_path):
    """The layer blobs are put in the store, then deleted from the source registry: the conversion can
    only succeed by reading them where the store keeps them (no download, no staged copy)."""
    from fs.store import Store

    image = test_images["features:gzip"]
    src = push(image, registry.host, "instore/src:v1")
    root = tmp_path / "root"
    root.mkdir()
    with Store.open(root) as store:
        for layer in image.layers:
            digest = layer.descriptor.digest
            store.put_file(image.blob_path(digest), digest=digest, holder="test:sources")
    for digest in {x.descriptor.digest for x in image.layers}:
        _delete_blob(registry.host, "instore/src", digest)
    proc = zsnap(root, "convert", f"docker://{src}", f"docker://{registry.host}/instore/out:zc")
    assert_quiet(proc)
    assert_converted(registry.host, "instore/out", "zc", [x.diff_id for x in image.layers])
    with Store.open(root) as store:
        for layer in image.layers:  # still there, and our refs were dropped again
            assert store.refs(layer.descriptor.digest) == {"test:sources"}
    assert_no_leftovers(root)


def test_source_layers_kept_in_a_store_pack_are_downloaded(registry, test_images, tmp_path):
    """A source layer's digest can be in the store as a small blob of a pack (some image's chunk with
    those bytes): there is no file to read in place, so the layer is downloaded, and the packed blob and its
    refs stay as they were."""
    from fs.store import Store

    image = test_images["features:gzip"]
    src = push(image, registry.host, "inpack/src:v1")
    root = tmp_path / "root"
    root.mkdir()
    digests = [x.descriptor.digest for x in image.layers]
    with Store.open(root) as store:
        items = [(image.blob_path(d).read_bytes(), d) for d in digests] + [(b"a filler blob", None)]
        store.put_many(items, holder="test:chunks")
        assert list((root / "packs").iterdir())  # they are packed, not files of their own
        with pytest.raises(ValueError):
            store.path_of(digests[0])
    proc = zsnap(root, "convert", f"docker://{src}", f"docker://{registry.host}/inpack/out:zc")
    assert_quiet(proc)
    assert_converted(registry.host, "inpack/out", "zc", [x.diff_id for x in image.layers])
    with Store.open(root) as store:
        assert all(store.refs(d) == {"test:chunks"} for d in digests)
        assert store.verify() == []
    assert_no_leftovers(root)
