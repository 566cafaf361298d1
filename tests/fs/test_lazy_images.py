"""``zsnap mount`` of the Python-built test images and of what peers make of them, compared with the model.

* plain layers (gzip / zstd / uncompressed, OCI and Docker schema, an index): downloaded whole into the
  store, verified, decompressed once and served from there;
* peer outputs (ctr-remote eStargz and zstd:chunked, skopeo zstd:chunked) and ``zsnap convert`` output:
  served lazily.

Each mounted tree is compared with the image model (``diff_tree``: paths, kinds, modes, owners, sizes,
devices, symlinks, mtimes, ``user.*`` xattrs, contents) and checked with ``sha256sum -c``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from fs.digest import sha256_digest
from fs.format import Dialect, Toc, TocEntry, serialize_toc, skippable_frame
from fs.format.annotations import annotations_for
from fs.format.footer import Footer
from fs.registry import OciLayout
from tests.fixtures.fuse import LazyMount, zsnap_command
from tests.fixtures.images import NON_UTF8_NAME, diff_tree, push

pytestmark = pytest.mark.needs_root

LAZY_ONLY = ("--no-prefetch", "--no-background-fetch")
#: A TOC is JSON: a non-UTF-8 name reaches every TOC-based reader as U+FFFD (Go's encoder replaces it).
#: Known, shared with stargz-snapshotter; only whole-layer mounts (real tar headers) keep the raw bytes.
TOC_LOSSY = (NON_UTF8_NAME, NON_UTF8_NAME.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def _check_tree(m: LazyMount, image, *, subsecond_mtime: bool = True, ignore=()) -> None:
    problems = diff_tree(image.spec, m.mountpoint, subsecond_mtime=subsecond_mtime, ignore=ignore)
    assert problems == [], "\n".join(problems[:30]) + "\n" + m.log_tail()
    skip = tuple(b"  ./" + p.encode("utf-8", "surrogateescape") + b"\n" for p in ignore)
    lines = image.sums_path.read_bytes().splitlines(keepends=True)
    sums = m.root / "SHA256SUMS"
    sums.write_bytes(b"".join(line for line in lines if not line.endswith(skip)))
    done = subprocess.run(["sha256sum", "-c", "--quiet", str(sums)], cwd=m.mountpoint, capture_output=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")


WHOLE = ["features:gzip", "features:zstd", "features:uncompressed", "features:docker", "features:multiarch",
         "dups:gzip"]  # fmt: skip


@pytest.mark.parametrize("key", WHOLE)
def test_whole_layer_images_from_layouts(key: str, test_images, zsnap_mount) -> None:
    image = test_images[key]
    m = zsnap_mount(image.ref, *LAZY_ONLY)
    assert ", 0 lazy;" in m.ready_line
    _check_tree(m, image)


def test_whole_layers_from_registry_are_cached_in_the_store(
    test_images, registry, zsnap_mount, tmp_path: Path
) -> None:
    image = test_images["features:gzip"]
    ref = "docker://" + push(image, registry.host, "lazy/whole:gzip")
    root = tmp_path / "root"
    m = zsnap_mount(ref, root=root)
    blobs = sum(la.descriptor.size for la in image.layers)
    assert m.wait_stats(lambda s: "bytes_fetched" in s)["bytes_fetched"] >= blobs
    _check_tree(m, image)
    m.unmount()
    again = zsnap_mount(ref, root=root)  # everything is in the store now: nothing but the manifest/config
    assert again.wait_stats(lambda s: "bytes_fetched" in s)["bytes_fetched"] < 1000
    _check_tree(again, image)


@pytest.mark.slow
@pytest.mark.parametrize(
    "key", ["features:estargz", "features:stargz-zstdchunked", "features:skopeo-zstdchunked"]
)
def test_peer_images_mount_lazily(key: str, peer_images, test_images, zsnap_mount) -> None:
    m = zsnap_mount("docker://" + peer_images[key], *LAZY_ONLY)
    assert "3 layers, 3 lazy" in m.ready_line
    s = m.wait_stats(lambda s: "bytes_fetched" in s)
    assert s["bytes_fetched"] == s["toc_bytes"] < 64 * 1024
    # eStargz keeps whole-second mtimes only; skopeo 1.9.3 rewrites nothing
    _check_tree(
        m,
        test_images["features:gzip"],
        subsecond_mtime=key == "features:skopeo-zstdchunked",
        ignore=TOC_LOSSY,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zstd-chunked", "stargz-zstd-chunked"])
def test_zsnap_convert_output_mounts_lazily(
    fmt: str, test_images, registry, zsnap_mount, tmp_path: Path
) -> None:
    image = test_images["features:gzip"]
    dest = f"docker://{registry.host}/lazy/converted:{fmt}"
    done = subprocess.run(
        zsnap_command(tmp_path / "convert-root", "convert", "--quiet", "--format", fmt, image.ref, dest),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    m = zsnap_mount(dest, *LAZY_ONLY)
    assert "3 layers, 3 lazy" in m.ready_line
    _check_tree(m, image, subsecond_mtime=fmt == "zstd-chunked", ignore=TOC_LOSSY)


# -- a TOC naming a path outside the layer -------------------------------------------------------------


def _evil_layout(path: Path) -> str:
    """An OCI layout whose one zstd:chunked (c/storage v1) layer has a correctly signed TOC naming ../evil."""
    zc = zstandard.ZstdCompressor()
    payload = b"gotcha\n"
    frame = zc.compress(payload)
    data = frame
    toc = Toc(1, [TocEntry("dir", "etc/", mode=0o755),
                  TocEntry("reg", "../evil", mode=0o644, size=len(payload), digest=sha256_digest(payload),
                           offset=0, end_offset=len(frame))])  # fmt: skip
    toc_compressed = zc.compress(serialize_toc(toc, Dialect.CSTORAGE_V1))
    toc_offset = len(data) + 8
    blob = data + skippable_frame(toc_compressed)
    footer = Footer(
        Dialect.CSTORAGE_V1, toc_offset, len(toc_compressed), len(serialize_toc(toc, Dialect.CSTORAGE_V1))
    )
    from fs.format import footer_bytes

    blob += footer_bytes(footer)
    annotations = annotations_for(Dialect.CSTORAGE_V1, footer, sha256_digest(toc_compressed))
    layout = OciLayout(path)
    layout.init()
    layer_digest = layout.write_blob(blob)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b"unused")]},
        }
    ).encode()
    config_digest = layout.write_blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": layer_digest,
                    "size": len(blob), "annotations": annotations}],
    }).encode()  # fmt: skip
    manifest_digest = layout.write_blob(manifest)
    layout.set_tag("evil", {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": manifest_digest, "size": len(manifest)})  # fmt: skip
    return f"oci:{path}:evil"


@pytest.mark.parametrize("daemon", [False, True])
def test_toc_names_escaping_the_layer_are_rejected_at_mount(daemon: bool, tmp_path: Path) -> None:
    ref = _evil_layout(tmp_path / "layout")
    mp = tmp_path / "mnt"
    mp.mkdir()
    done = subprocess.run(
        zsnap_command(tmp_path / "root", "mount", *(["--daemon"] if daemon else []), ref, str(mp)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "escapes the layer" in done.stderr and "../evil" in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "evil").exists()


def test_many_layers_fit_the_overlay_options(tmp_path: Path, zsnap_mount) -> None:
    """80 layers: the lowerdir list no longer fits one page, short symlinks name the layer dirs instead."""
    from tests.fixtures.images import ImageSpec, LayerSpec, LayoutWriter, build_image, d, f, whiteout

    layers = [LayerSpec((d("many"), f(f"many/l{i:02d}", f"layer {i}\n".encode()))) for i in range(80)]
    layers.append(LayerSpec((d("many"), whiteout("many/l00"), f("many/l01", b"overwritten on top\n"))))
    spec = ImageSpec("many", tuple(layers), top_dirs=("many",))
    writer = LayoutWriter(tmp_path / "layout")
    try:
        image = build_image(writer, spec, "many", compression="uncompressed")
    finally:
        writer.close()
    m = zsnap_mount(image.ref, *LAZY_ONLY)
    assert "81 layers" in m.ready_line
    _check_tree(m, image)
    assert (m.mountpoint / "many/l01").read_bytes() == b"overwritten on top\n"
    assert not (m.mountpoint / "many/l00").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["stargz-zstd-chunked", "zstd-chunked"])
def test_prefetch_list_is_fetched_first(fmt: str, test_images, registry, zsnap_mount, tmp_path: Path) -> None:
    """``zsnap convert --prefetch-list``: the listed files are fetched at mount (before any read) at prefetch
    priority, and reading them later fetches nothing."""
    image = test_images["features:gzip"]
    listed = tmp_path / "prefetch.txt"
    listed.write_text("/feat/text-2M\n/etc/passwd\n")
    dest = f"docker://{registry.host}/lazy/prefetch:{fmt}"
    done = subprocess.run(
        zsnap_command(tmp_path / "convert-root", "convert", "--quiet", "--format", fmt, "--prefetch-list",
                      str(listed), image.ref, dest),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    m = zsnap_mount(dest, "--no-background-fetch")
    s = m.wait_stats(lambda s: s["prefetch_done"])
    assert s["bytes_by_priority"].get("prefetch", 0) > 0  # fetched at mount, before any read
    assert s["bytes_by_priority"].get("on_demand", 0) == 0
    time.sleep(1.1)
    before = m.stats()["bytes_fetched"]
    assert len((m.mountpoint / "feat/text-2M").read_bytes()) == 2 << 20
    assert (m.mountpoint / "etc/passwd").read_bytes().startswith(b"root:")
    time.sleep(1.1)
    assert m.stats()["bytes_fetched"] == before


@pytest.mark.slow
def test_estargz_prefetch_landmark_is_fetched_first(
    peer_images, registry, containerd, zsnap_mount, tmp_path: Path
) -> None:
    """ctr-remote eStargz with a record-in list: files before ``.prefetch.landmark`` arrive at mount."""
    source = peer_images["features:gzip"]
    record = tmp_path / "record.json"
    lines = [{"path": p, "manifestDigest": peer_images.digests["features:gzip"], "layerIndex": 1}
             for p in ("feat/text-2M", "feat/regular.txt")]  # fmt: skip
    record.write_text("".join(json.dumps(x) + "\n" for x in lines))
    target = f"{registry.host}/lazy/landmark:estargz"
    containerd.pull(source)
    try:
        containerd.ctr_remote("images", "convert", "--estargz", "--oci", "--estargz-record-in", str(record),
                              source, target)  # fmt: skip
        containerd.push(target)
    finally:
        for ref in (source, target):
            containerd.remove_image(ref)
    m = zsnap_mount(f"docker://{target}", "--no-background-fetch")
    s = m.wait_stats(lambda s: s["prefetch_done"])
    assert s["bytes_by_priority"].get("prefetch", 0) > 0 and not s["bytes_by_priority"].get("on_demand")
    time.sleep(1.1)
    before = m.stats()["bytes_fetched"]
    assert len((m.mountpoint / "feat/text-2M").read_bytes()) == 2 << 20
    time.sleep(1.1)
    assert m.stats()["bytes_fetched"] == before  # prefetched: no fetch on first read
