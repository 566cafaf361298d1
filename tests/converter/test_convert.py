"""``zsnap convert`` / ``zsnap check`` end to end, against the real registry, zstd CLI and containerd.

Each test runs the real command line in a subprocess with its own ``--root``, so what is asserted is what
a user sees: exit codes, output lines, the manifests and blobs in the registry, the store afterwards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.fixtures.images import diff_stat_listing, push, stat_listing_script

ROOT = Path(__file__).resolve().parents[2]
ZSTD_CHUNKED_KEYS = (
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.github.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.tarsplit-position",
)
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def zsnap(root: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "snapshotter", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"zsnap {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def _get(url: str, accept: str | None = None) -> tuple[bytes, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read(), response.headers.get("Content-Type", "")


def manifest(host: str, repo: str, ref: str) -> dict:
    return json.loads(_get(f"http://{host}/v2/{repo}/manifests/{ref}", ACCEPT)[0])


def blob(host: str, repo: str, digest: str) -> bytes:
    data = _get(f"http://{host}/v2/{repo}/blobs/{digest}")[0]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    return data


def zstd_cli_sha256(data: bytes) -> str:
    """sha256 of what the zstd command-line tool (not our code) decompresses ``data`` to."""
    out = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=True).stdout
    return "sha256:" + hashlib.sha256(out).hexdigest()


def assert_converted(host: str, repo: str, tag: str, source_diff_ids: list[str]) -> dict:
    """The image at repo:tag is zstd:chunked and decompresses (zstd CLI) to ``source_diff_ids``."""
    m = manifest(host, repo, tag)
    assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    config = json.loads(blob(host, repo, m["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == source_diff_ids
    for layer, diff_id in zip(m["layers"], source_diff_ids, strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
        for key in ZSTD_CHUNKED_KEYS:
            assert key in layer["annotations"], key
        assert "containerd.io/snapshot/stargz/toc.digest" not in layer["annotations"]
        data = blob(host, repo, layer["digest"])
        assert data[-8:] == b"GNUlInUx"
        assert zstd_cli_sha256(data) == diff_id
    return m


def store_leftovers(root: Path) -> dict:
    stats = json.loads(zsnap(root, "store", "stats", "--json").stdout)
    files = [p for area in ("tmp", "wip", "locks") for p in (root / area).rglob("*") if p.is_file()]
    cache_temps = list((root / "convert-cache").glob(".*.tmp"))
    return {"temp_objects": stats["temp_objects"], "tmp_files": files + cache_temps}


def assert_no_leftovers(root: Path) -> None:
    left = store_leftovers(root)
    assert not left["temp_objects"] and not left["tmp_files"], left


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    text = (proc.stdout + proc.stderr).lower()
    for word in ("warn", "traceback", "failed to remove"):
        assert word not in text, f"{word!r} in output:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("variant", ["gzip", "uncompressed", "zstd", "docker"])
def test_convert_registry_to_registry_round_trips(variant, registry, test_images, tmp_path):
    image = test_images[f"features:{variant}"]
    src = push(image, registry.host, f"conv/src-{variant}:v1")
    proc = zsnap(tmp_path, "convert", f"docker://{src}", f"docker://{registry.host}/conv/out-{variant}:zc")
    assert_quiet(proc)
    source_diff_ids = [layer.diff_id for layer in image.layers]
    assert_converted(registry.host, f"conv/out-{variant}", "zc", source_diff_ids)
    check = zsnap(tmp_path, "check", "--full", f"docker://{registry.host}/conv/out-{variant}:zc")
    assert "OK" in check.stdout
    assert_no_leftovers(tmp_path)


def test_convert_oci_layout_to_oci_layout(test_images, tmp_path):
    image = test_images["features:gzip"]
    out = tmp_path / "out"
    zsnap(tmp_path / "root", "convert", image.ref, f"oci:{out}:converted")
    index = json.loads((out / "index.json").read_text())
    (desc,) = [
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "converted"
    ]
    m = json.loads((out / "blobs/sha256" / desc["digest"].split(":")[1]).read_bytes())
    for layer, source in zip(m["layers"], image.layers, strict=True):
        data = (out / "blobs/sha256" / layer["digest"].split(":")[1]).read_bytes()
        assert zstd_cli_sha256(data) == source.diff_id
    zsnap(tmp_path / "root", "check", "--full", f"oci:{out}:converted")


def test_layout_source_blob_with_other_bytes_fails_and_publishes_nothing(test_images, tmp_path):
    """A layout's blob is read in place and hashed by the read that converts it: a layer whose bytes
    are not its digest's (valid gzip of its tar with one byte changed) fails with the digest error naming
    it, and the destination layout gets no image."""
    image = test_images["features:gzip"]
    src = tmp_path / "src"
    shutil.copytree(image.layout, src)
    layer = max(image.layers, key=lambda x: x.tar_size)
    blob_path = src / "blobs/sha256" / layer.descriptor.digest.split(":")[1]
    tar = bytearray(gzip.decompress(blob_path.read_bytes()))
    tar[len(tar) // 2] ^= 0xFF
    blob_path.write_bytes(gzip.compress(bytes(tar), mtime=0))
    out = tmp_path / "out"
    proc = zsnap(tmp_path / "root", "convert", f"oci:{src}:{image.tag}", f"oci:{out}:converted", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = proc.stderr.split("zsnap: error:")[1]
    assert "hashes to" in error and layer.descriptor.digest in error, proc.stderr
    assert "Traceback" not in proc.stderr
    index = out / "index.json"
    assert not index.exists() or not json.loads(index.read_text())["manifests"], index.read_text()
    assert_no_leftovers(tmp_path / "root")


def test_duplicate_layers_convert_once_without_warnings(registry, test_images, tmp_path):
    image = test_images["dups:gzip"]
    layer_digests = [layer.descriptor.digest for layer in image.layers]
    assert len(set(layer_digests)) < len(layer_digests), "the dups image must repeat layers"
    src = push(image, registry.host, "conv/dups:src")
    proc = zsnap(tmp_path, "convert", "--json", f"docker://{src}", f"docker://{registry.host}/conv/dups:zc")
    assert_quiet(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["converted"] == len(layer_digests)  # every occurrence got a converted layer ...
    assert proc.stderr.count("layer converted") == len(set(layer_digests))  # ... each converted once
    m = assert_converted(registry.host, "conv/dups", "zc", [x.diff_id for x in image.layers])
    by_source = {}
    for source, converted in zip(layer_digests, m["layers"], strict=True):
        by_source.setdefault(source, set()).add(converted["digest"])
    assert all(len(v) == 1 for v in by_source.values())
    assert_no_leftovers(tmp_path)


def test_second_run_reuses_converted_layers(registry, test_images, tmp_path):
    src = push(test_images["features:gzip"], registry.host, "conv/reuse:src")
    dst = f"docker://{registry.host}/conv/reuse:zc"
    first = json.loads(zsnap(tmp_path, "convert", "--json", f"docker://{src}", dst).stdout.splitlines()[-1])
    second = json.loads(zsnap(tmp_path, "convert", "--json", f"docker://{src}", dst).stdout.splitlines()[-1])
    assert first["converted"] > 0 and second["converted"] == 0
    assert second["reused"] == first["converted"] and second["digest"] == first["digest"]


def test_batch_shares_layers_across_images(registry, test_images, tmp_path):
    dups, dups2 = test_images["dups:gzip"], test_images["dups2:gzip"]
    src1 = push(dups, registry.host, "batch/dups:src")
    src2 = push(dups2, registry.host, "batch/dups2:src")
    listing = tmp_path / "list"
    listing.write_text(
        f"# two images sharing layers\ndocker://{src1} docker://{registry.host}/batch/dups:zc\n"
        f"docker://{src2} docker://{registry.host}/batch/dups2:zc\n"
    )
    proc = zsnap(tmp_path / "root", "convert", "--from-file", str(listing))
    assert_quiet(proc)
    distinct = {x.descriptor.digest for x in dups.layers} | {x.descriptor.digest for x in dups2.layers}
    assert proc.stderr.count("layer converted") == len(distinct)
    assert_converted(registry.host, "batch/dups2", "zc", [x.diff_id for x in dups2.layers])


def test_index_all_platforms_and_host_platform(registry, test_images, tmp_path):
    image = test_images["features:multiarch"]
    src = push(image, registry.host, "conv/multi:src")
    zsnap(
        tmp_path, "convert", "--all-platforms", f"docker://{src}", f"docker://{registry.host}/conv/multi:all"
    )
    index = manifest(registry.host, "conv/multi", "all")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms = sorted(m["platform"]["architecture"] for m in index["manifests"])
    assert platforms == ["amd64", "arm64"]
    zsnap(tmp_path, "convert", f"docker://{src}", f"docker://{registry.host}/conv/multi:host")
    host_index = manifest(registry.host, "conv/multi", "host")
    assert [m["platform"]["architecture"] for m in host_index["manifests"]] == ["amd64"]
    zsnap(tmp_path, "check", f"docker://{registry.host}/conv/multi:all")


@pytest.mark.parametrize("fmt", ["zstd-chunked", "stargz-zstd-chunked"])
def test_converted_image_runs_in_containerd(fmt, registry, test_images, containerd_clean, tmp_path):
    """containerd unpacks what we wrote (for stargz output: the rewritten diff_ids must be right)."""
    image = test_images["features:gzip"]
    src = push(image, registry.host, "conv/run:src")
    dst = f"{registry.host}/conv/run:{fmt}"
    zsnap(tmp_path, "convert", "--format", fmt, f"docker://{src}", f"docker://{dst}")
    containerd_clean.pull(dst)
    sums_in_container = "/run/zsnap-check/SHA256SUMS"
    out = containerd_clean.run(
        dst,
        ["sh", "-c", stat_listing_script(image.spec, sums_in_container)],
        mounts=[(str(image.sums_path), sums_in_container)],
    )
    assert "SUMS-OK" in out
    problems = diff_stat_listing(image.spec, out)
    assert not problems, "\n".join(problems)


def test_not_enough_disk_space_fails_early_and_names_where(registry, test_images, tmp_path):
    src = push(test_images["large:gzip"], registry.host, "conv/disk:src")
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(root)], check=True)
    try:
        proc = zsnap(
            root, "convert", f"docker://{src}", f"docker://{registry.host}/conv/disk:zc", check=False
        )
        assert proc.returncode == 1
        assert "not enough free space" in proc.stderr and str(root) in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        subprocess.run(["umount", str(root)], check=True)


class Running:
    """A ``zsnap`` run in the background whose output is collected as it comes (for races)."""

    def __init__(self, root: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snapshotter", "--root", str(root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            # the tests SIGINT it: a suite started in the background of a non-interactive shell would
            # hand down an ignored SIGINT, and Python then installs no KeyboardInterrupt handler
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_for(self, predicate, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"run ended before {what}: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code, "".join(self.out) + "".join(self.err)


def _staging(root: Path, kind: str) -> bool:
    """True while a temp object of ``kind`` (source/converted) is being produced under ``root``."""
    prefix = quote(f"{kind}/", safe="")  # the store keeps temp object "x/y" as tmp/x%2Fy.<generation>
    tmp = root / "tmp"
    return tmp.is_dir() and any(p.name.startswith(prefix) for p in tmp.iterdir())


@pytest.fixture(scope="module")
def big_image(test_images):
    """~300 MB in 3 layers: big enough that a run is reliably caught mid-way."""
    return test_images.build_large(300, 3, seed=7)


def test_registry_dying_mid_conversion_is_a_clear_error(registry_factory, big_image, tmp_path):
    server = registry_factory(name="dying")
    src = push(big_image, server.host, "conv/dying:src")
    run = Running(tmp_path, "convert", f"docker://{src}", f"docker://{server.host}/conv/dying:zc")
    run.wait_for(lambda: _staging(tmp_path, "source"), "a source blob download")
    server.stop()
    try:
        code, output = run.finish()
    finally:
        server.start()
    assert code == 1, output
    assert "zsnap: error:" in output and "Traceback" not in output
    assert "sha256:" in output.split("zsnap: error:")[1]  # names the layer
    assert_no_leftovers(tmp_path)


def test_source_layer_that_fails_its_digest_is_converted_but_never_published(registry, big_image, tmp_path):
    """A layer is converted while it downloads; when the registry's bytes turn out not to match the
    layer's digest, the run fails with the verification error naming the layer (before the diff_id
    check, which would blame the config), publishes nothing made from those bytes, records nothing, and
    a later run with the true bytes converts it. The registry serves valid gzip of a tar with one byte
    changed: every byte converts."""
    src = push(big_image, registry.host, "conv/tampered:src")
    m = manifest(registry.host, "conv/tampered", "src")
    config = json.loads(blob(registry.host, "conv/tampered", m["config"]["digest"]))
    layer = max(m["layers"], key=lambda x: x["size"])
    bad_diff_id = config["rootfs"]["diff_ids"][m["layers"].index(layer)]
    data_path = next(registry.root.rglob(f"blobs/sha256/{layer['digest'][7:9]}/{layer['digest'][7:]}/data"))
    original = data_path.read_bytes()
    dest = f"docker://{registry.host}/conv/tampered:zc"
    try:
        tar = bytearray(gzip.decompress(original))
        tar[len(tar) // 2] ^= 0xFF  # inside some file's payload
        data_path.write_bytes(gzip.compress(bytes(tar), compresslevel=1, mtime=0))
        proc = zsnap(tmp_path, "convert", src_ref := f"docker://{src}", dest, check=False)
    finally:
        data_path.write_bytes(original)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = proc.stderr.split("zsnap: error:")[1]
    assert "hashes to" in error and layer["digest"] in error, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_no_leftovers(tmp_path)
    with pytest.raises(urllib.error.HTTPError):
        manifest(registry.host, "conv/tampered", "zc")
    # Layers streamed to the destination before the failure are the other layers' outputs, never a
    # (partial or complete) conversion of the tampered one.
    links = registry.root.rglob("repositories/conv/tampered/_layers/sha256/*/link")
    for link in links:
        digest = link.read_text().strip()
        data = blob(registry.host, "conv/tampered", digest)
        if digest != layer["digest"] and data[:4] == b"\x28\xb5\x2f\xfd":  # a zstd blob: one of ours
            assert zstd_cli_sha256(data) != bad_diff_id
    zsnap(tmp_path, "convert", src_ref, dest)
    converted = manifest(registry.host, "conv/tampered", "zc")
    assert_converted(registry.host, "conv/tampered", "zc", config["rootfs"]["diff_ids"])
    assert len(converted["layers"]) == len(m["layers"])


@pytest.mark.slow
def test_cancelled_run_never_disturbs_a_concurrent_one(registry, test_images, big_image, tmp_path):
    """The original bug: duplicate layers, two images sharing layers converted concurrently, one run
    cancelled midway. The other must succeed, print no warning, and leave no temp file behind."""
    dups = test_images["dups:gzip"]
    shared = {x.descriptor.digest for x in dups.layers} & {x.descriptor.digest for x in big_image.layers}
    assert shared, "the two images must share a layer (the busybox base)"
    src1 = push(dups, registry.host, "race/dups:src")
    src2 = push(big_image, registry.host, "race/big:src")
    root = tmp_path / "shared-root"
    victim = Running(
        root, "convert", "--jobs", "2", f"docker://{src2}", f"docker://{registry.host}/race/big:zc"
    )
    victim.wait_for(lambda: _staging(root, "converted"), "the victim to be converting")
    survivor = Running(
        root, "convert", "--jobs", "2", f"docker://{src1}", f"docker://{registry.host}/race/dups:zc"
    )
    survivor.wait_for(
        lambda: any("convert start" in line or "layer" in line for line in survivor.err),
        "the survivor to be working",
    )
    victim.proc.send_signal(signal.SIGINT)
    v_code, v_output = victim.finish()
    s_code, s_output = survivor.finish()
    assert v_code == 130, v_output
    assert s_code == 0, s_output
    for text in (s_output, v_output):
        assert "warn" not in text.lower() and "Traceback" not in text, text
    assert_converted(registry.host, "race/dups", "zc", [x.diff_id for x in dups.layers])
    assert_no_leftovers(root)


@pytest.mark.slow
def test_killed_run_leaves_nothing_after_the_next(registry, big_image, tmp_path):
    src = push(big_image, registry.host, "kill/big:src")
    dst = f"docker://{registry.host}/kill/big:zc"
    run = Running(tmp_path, "convert", f"docker://{src}", dst)
    run.wait_for(lambda: _staging(tmp_path, "converted"), "a conversion in progress")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish()
    assert _staging(tmp_path, "converted"), "the kill must leave a half-written temp object to reclaim"
    proc = zsnap(tmp_path, "convert", f"docker://{src}", dst)
    assert_quiet(proc)
    assert_converted(registry.host, "kill/big", "zc", [x.diff_id for x in big_image.layers])
    assert_no_leftovers(tmp_path)


@pytest.mark.parametrize(
    "key", ["features:skopeo-zstdchunked", "features:stargz-zstdchunked", "features:estargz"]
)
def test_check_accepts_what_the_peers_write(key, peer_images, tmp_path):
    """`zsnap check --full` verifies skopeo's and ctr-remote's zstd:chunked and eStargz output: every
    chunk of every file and the diff_ids (the same decoding the lazy mount uses)."""
    proc = zsnap(tmp_path, "check", "--full", "--json", f"docker://{peer_images[key]}")
    report = json.loads(proc.stdout)
    assert report["ok"] and len(report["layers"]) == 3
    assert all(layer["diff_id_checked"] and layer["chunks"] > 0 for layer in report["layers"])


def test_check_rejects_a_tampered_chunk(registry, test_images, tmp_path):
    """A blob whose bytes no longer match its TOC (flipped in the registry's own storage) fails check,
    naming the layer and the file."""
    image = test_images["features:gzip"]
    src = push(image, registry.host, "tamper/src:v1")
    zsnap(tmp_path, "convert", f"docker://{src}", f"docker://{registry.host}/tamper/out:zc")
    m = manifest(registry.host, "tamper/out", "zc")
    layer = max(m["layers"], key=lambda x: x["size"])
    data_path = next((registry.root).rglob(f"blobs/sha256/{layer['digest'][7:9]}/{layer['digest'][7:]}/data"))
    original = data_path.read_bytes()
    try:
        tampered = bytearray(original)
        tampered[len(tampered) // 3] ^= 0xFF  # inside the data region: some chunk breaks
        data_path.write_bytes(bytes(tampered))
        proc = zsnap(tmp_path / "fresh", "check", f"docker://{registry.host}/tamper/out:zc", check=False)
    finally:
        data_path.write_bytes(original)
    assert proc.returncode == 1
    err = proc.stderr
    assert "zsnap: error:" in err and "Traceback" not in err
    assert layer["digest"] in err  # the staged blob's own digest check catches the flip first


def test_check_names_the_file_of_a_bad_chunk(test_images, tmp_path):
    """Below the blob digest: a chunk that does not match the TOC is reported with its file's path."""
    from converter.check import _check_blob
    from fs.errors import FormatError, VerificationError
    from fs.format import decode_and_verify_toc, toc_location_from_annotations
    from fs.registry.manifests import Descriptor

    out = tmp_path / "out"
    zsnap(tmp_path / "root", "convert", test_images["features:gzip"].ref, f"oci:{out}:zc")
    index = json.loads((out / "index.json").read_text())
    m = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_bytes())
    layer = Descriptor.from_json(max(m["layers"], key=lambda x: x["size"]), where="layer")
    blob = bytearray((out / "blobs/sha256" / layer.digest[7:]).read_bytes())
    location = toc_location_from_annotations(layer.annotations, layer.media_type)
    toc = decode_and_verify_toc(bytes(blob[location.offset : location.offset + location.length]), location)
    victim = next(e for e in toc.entries if e.type == "reg" and e.size > 1000)
    blob[victim.offset + 20] ^= 0xFF  # inside that file's first zstd frame
    bad = tmp_path / "bad.blob"
    bad.write_bytes(bytes(blob))
    with pytest.raises((VerificationError, FormatError)) as err:  # bad digest, or no longer valid zstd
        _check_blob(bad, layer, None)
    assert err.value.path == victim.name.lstrip("./")


def test_zstd_chunked_sources_old_dialects_convert_and_ours_are_carried_over(registry, peer_images, tmp_path):
    """skopeo 1.9.3's and ctr-remote's zstd:chunked layers are converted to the current format (their
    skippable frames decompress to nothing); a layer already in the target format is copied as is."""
    for key in ("features:skopeo-zstdchunked", "features:stargz-zstdchunked"):
        repo = "again/" + key.split(":")[1]
        proc = zsnap(
            tmp_path,
            "convert",
            "--json",
            f"docker://{peer_images[key]}",
            f"docker://{registry.host}/{repo}:zc",
        )
        assert json.loads(proc.stdout.splitlines()[-1])["converted"] == 3
        config = json.loads(
            blob(registry.host, repo, manifest(registry.host, repo, "zc")["config"]["digest"])
        )
        assert_converted(registry.host, repo, "zc", config["rootfs"]["diff_ids"])
    again = zsnap(
        tmp_path,
        "convert",
        "--json",
        f"docker://{registry.host}/{repo}:zc",
        f"docker://{registry.host}/{repo}:twice",
    )
    result = json.loads(again.stdout.splitlines()[-1])
    assert result["converted"] == 0 and result["copied"] == 3
    assert manifest(registry.host, repo, "twice")["layers"] == manifest(registry.host, repo, "zc")["layers"]


@pytest.fixture(scope="module")
def one_big_layer(test_images):
    """busybox + one ~600 MB layer: converting it takes seconds, so a second run surely waits on it."""
    return test_images.build_large(600, 1, seed=11)


@pytest.mark.slow
def test_waiters_survive_the_cancelled_producer_of_their_layer(registry, one_big_layer, tmp_path):
    """Two runs on one store convert the same image: the second waits on the layer the first is
    producing. SIGINT the first mid-conversion: the second takes over that layer and succeeds, quietly."""
    src = push(one_big_layer, registry.host, "handover/big:src")
    big = max(one_big_layer.layers, key=lambda x: x.descriptor.size).descriptor.digest
    short = big.split(":")[1][:12]
    root = tmp_path / "shared-root"
    args = ("convert", "--jobs", "1", f"docker://{src}")
    victim = Running(root, *args, f"docker://{registry.host}/handover/big:victim")
    victim.wait_for(lambda: any(f"convert start layer={short}" in x for x in victim.err), "the big layer")
    waiter = Running(root, *args, f"docker://{registry.host}/handover/big:waiter")
    waiter.wait_for(lambda: any("plan" in line for line in waiter.err), "the second run to be planned")
    time.sleep(0.7)  # the second run reaches the big layer, which the first one is producing, and waits
    assert not any(f"layer converted layer={short}" in x for x in victim.err), "victim finished too soon"
    victim.proc.send_signal(signal.SIGINT)
    v_code, v_output = victim.finish()
    w_code, w_output = waiter.finish()
    assert v_code == 130, v_output
    assert w_code == 0, w_output
    assert f"convert start layer={short}" in w_output  # the waiter took the layer over
    assert "warn" not in w_output.lower() and "Traceback" not in w_output
    assert_converted(registry.host, "handover/big", "waiter", [x.diff_id for x in one_big_layer.layers])
    assert_no_leftovers(root)
