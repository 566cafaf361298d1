"""Lazy pulls through the real containerd 1.6 and ``zsnap serve``, beyond the basic CRI handshake
(tests/snapshotter/test_containerd.py): ``ctr-remote images rpull`` (the stargz labels), images that share
layers and an image that names one layer several times, and a 1 GiB image whose container reads a few files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from snapshotter import cri
from snapshotter.proto import snapshots_pb2 as pb
from tests.fixtures.common import wait_until
from tests.fixtures.images import push
from tests.snapshotter.daemon import REPO, zsnap_command
from tests.snapshotter.test_containerd import (
    TOC_LOSSY,
    Stack,
    check_image_runs,
    convert,
    image_chain,
    run_in,
    running_stack,
    scrape,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lazy_stack(registry) -> Iterator[Stack]:
    """Background fetch off, so that what crossed the network is what the containers read."""
    with running_stack(registry.host, settings="background_fetch = false\n") as s:
        yield s


def metric(stack: Stack, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", scrape(stack), re.MULTILINE)
    assert match, f"metric {name} not exported"
    return float(match.group(1))


def layer_blobs(manifest: dict) -> set[str]:
    return {layer["digest"] for layer in manifest["layers"]}


def content_digests(stack: Stack, namespace: str) -> set[str]:
    return set(stack.ctrd.ctr("content", "ls", "-q", namespace=namespace).stdout.split())


def served_layer_dirs(stack: Stack) -> set[str]:
    """Top-level directories of the daemon's one FUSE session: one per attached layer (digest hex)."""
    return set(os.listdir(stack.daemon.root / "mnt"))


def publish(registry, image, repo: str, tmp_path) -> str:
    """Push ``image`` (gzip) and convert it to zstd:chunked; return the converted reference."""
    src = push(image, registry.host, f"{repo}:gzip")
    ref = f"{registry.host}/{repo}:zstd-chunked"
    convert(src, ref, tmp_path)
    return ref


def lazy_pull(stack: Stack, registry, image, repo: str, tmp_path) -> str:
    """:func:`publish` ``image`` and CRI-pull the result; return its reference."""
    ref = publish(registry, image, repo, tmp_path)
    cri.pull_image(stack.ctrd.address, ref, timeout=300)
    return ref


def remove_and_wait(stack: Stack, ref: str, chains: list[str]) -> None:
    cri.remove_image(stack.ctrd.address, ref)
    wait_until(lambda: not set(chains) & {i.name for i in stack.snapshots()}, timeout=60,
               what="containerd's GC to remove the lazy snapshots")  # fmt: skip


def test_ctr_remote_rpull_is_lazy(lazy_stack: Stack, registry, test_images, tmp_path) -> None:
    """``ctr-remote images rpull`` sends the stargz labels (no ``cri.*``): zsnap resolves the image from
    them, commits every layer lazily, containerd downloads no layer blob, and the container sees the image."""
    stack = lazy_stack
    image = test_images["features:gzip"]
    ref = publish(registry, image, "serve/rpull", tmp_path)
    ns = stack.ctrd.namespace
    stack.ctrd.ctr_remote("images", "rpull", "--plain-http", "--snapshotter", "zsnap", ref, namespace=ns)
    chains, manifest = image_chain(stack, ref, ns)
    by_name = {i.name: i for i in stack.snapshots()}
    for parent, chain in zip(["", *chains], chains, strict=False):
        info = by_name[chain]
        assert (info.kind, info.parent) == (pb.COMMITTED, parent)
        assert "containerd.io/snapshot/remote/stargz.reference" in info.labels
    assert not content_digests(stack, ns) & layer_blobs(manifest)  # no layer was downloaded
    check_image_runs(stack, image, ref, ns, ignore=TOC_LOSSY)
    stack.ctrd.remove_image(ref)
    wait_until(lambda: not set(chains) & {i.name for i in stack.snapshots()}, timeout=60,
               what="containerd's GC to remove the lazy snapshots")  # fmt: skip


def test_images_sharing_layers_share_them(lazy_stack: Stack, registry, test_images, tmp_path) -> None:
    """``dups`` names one content layer twice and the empty layer three times; ``dups2`` shares its base,
    the empty layer and that content layer. Both pulled lazily: every distinct layer is served once (one
    directory of the FUSE session, fetched once), both containers see their own image, and removing one
    image keeps the layers the other still uses."""
    stack = lazy_stack
    dups, dups2 = test_images["dups:gzip"], test_images["dups2:gzip"]
    ref1 = lazy_pull(stack, registry, dups, "serve/share-a", tmp_path)
    ref2 = lazy_pull(stack, registry, dups2, "serve/share-b", tmp_path)
    chains1, manifest1 = image_chain(stack, ref1, cri.CRI_NAMESPACE)
    chains2, manifest2 = image_chain(stack, ref2, cri.CRI_NAMESPACE)
    hexes1 = {d.removeprefix("sha256:") for d in layer_blobs(manifest1)}
    hexes2 = {d.removeprefix("sha256:") for d in layer_blobs(manifest2)}
    assert hexes1 & hexes2, "the converted images must share layers"
    assert len(hexes1) < len(manifest1["layers"]), "dups must name a layer more than once"
    assert served_layer_dirs(stack) >= hexes1 | hexes2
    assert metric(stack, "zsnap_mounted_layers") == len(hexes1 | hexes2)
    assert not content_digests(stack, cri.CRI_NAMESPACE) & (layer_blobs(manifest1) | layer_blobs(manifest2))
    check_image_runs(stack, dups, ref1, cri.CRI_NAMESPACE, ignore=TOC_LOSSY)
    check_image_runs(stack, dups2, ref2, cri.CRI_NAMESPACE, ignore=TOC_LOSSY)
    remove_and_wait(stack, ref1, [c for c in chains1 if c not in chains2])
    wait_until(lambda: not (hexes1 - hexes2) & served_layer_dirs(stack), timeout=30,
               what="the layers only dups used to leave the FUSE session")  # fmt: skip
    assert served_layer_dirs(stack) >= hexes2
    check_image_runs(
        stack, dups2, ref2, cri.CRI_NAMESPACE, ignore=TOC_LOSSY
    )  # still served after the removal
    remove_and_wait(stack, ref2, chains2)


def test_gigabyte_image_starts_lazily(lazy_stack: Stack, registry, test_images, tmp_path) -> None:
    """A 1.1 GiB image (busybox + two data layers of big and small files), converted and CRI-pulled: no layer
    blob is downloaded, the container hashes a few files right, and what crossed the network is a small
    fraction of the image. Prints a JSON line with the pull and run times and the bytes fetched."""
    stack = lazy_stack
    image = test_images.build_large(1100, 2, seed=7)
    ref = publish(registry, image, "serve/gigabyte", tmp_path)
    fetched_before = metric(stack, "zsnap_fetched_bytes_total")
    read_before = metric(stack, "zsnap_read_bytes_total")
    started = time.monotonic()
    cri.pull_image(stack.ctrd.address, ref, timeout=300)
    pull_s = time.monotonic() - started
    chains, manifest = image_chain(stack, ref, cri.CRI_NAMESPACE)
    size = sum(layer.tar_size for layer in image.layers)  # what a full pull unpacks
    assert size > 1 << 30
    assert not content_digests(stack, cri.CRI_NAMESPACE) & layer_blobs(manifest)
    expected = {}
    for line in image.sums_path.read_text(errors="surrogateescape").splitlines():
        digest, path = line.split("  ", 1)
        if path.startswith(("./bin/busybox", "./data/l0/small/", "./data/l1/big/")):
            expected.setdefault(path.split("/")[2] if "/data/" in path else "bin", []).append((path, digest))
    picked = [expected["bin"][0], *expected["l0"][:5], expected["l1"][0]]
    started = time.monotonic()
    out = run_in(stack.ctrd, ref, ["sha256sum", *(p.removeprefix(".") for p, _ in picked)],
                 namespace=cri.CRI_NAMESPACE)  # fmt: skip
    run_s = time.monotonic() - started
    got = {path: digest for digest, path in (line.split("  ", 1) for line in out.splitlines())}
    assert got == {p.removeprefix("."): d for p, d in picked}
    fetched = metric(stack, "zsnap_fetched_bytes_total") - fetched_before
    (big_file,) = [e for e in image.spec.layers[2].entries if e.path == picked[-1][0].removeprefix("./")]
    big = big_file.data.size
    assert 0 < fetched < big + 64 * 1024 * 1024  # the files read (one big one), not the image
    assert metric(stack, "zsnap_read_bytes_total") - read_before >= big  # sha256sum read all of it
    print(json.dumps({"test": "gigabyte_image_starts_lazily", "image_bytes": size, "pull_s": round(pull_s, 2),
                      "run_s": round(run_s, 2), "fetched_bytes": int(fetched)}))  # fmt: skip
    remove_and_wait(stack, ref, chains)


def _pull_and_read(stack: Stack, ref: str, path: str) -> tuple[float, float, str]:
    """CRI-pull ``ref``, then ``sha256sum /path`` in a container: (bytes fetched by the pull, bytes
    fetched by the run, the digest printed); the image is removed afterwards."""
    before = metric(stack, "zsnap_fetched_bytes_total")
    cri.pull_image(stack.ctrd.address, ref, timeout=300)
    by_pull = metric(stack, "zsnap_fetched_bytes_total") - before
    out = run_in(stack.ctrd, ref, ["sha256sum", f"/{path}"], namespace=cri.CRI_NAMESPACE)
    by_run = metric(stack, "zsnap_fetched_bytes_total") - before - by_pull
    chains, _ = image_chain(stack, ref, cri.CRI_NAMESPACE)
    remove_and_wait(stack, ref, chains)
    return by_pull, by_run, out.split()[0]


def test_prefetch_list_with_and_without_waiting_for_it(
    lazy_stack: Stack, registry, test_images, tmp_path
) -> None:
    """An image converted with a prefetch list (busybox and one incompressible big file). As shipped
    (``prefetch_wait = 0``) the CRI pull returns at once and the container's reads join the prefetch: every
    byte crosses the network once. With ``prefetch_wait`` the pull returns only once the listed files'
    chunks are stored, and the container that reads them fetches almost nothing more."""
    image = test_images.build_large(48, 2, seed=11)
    big = next(e for e in image.spec.layers[2].entries
               if e.path.startswith("data/l1/big/") and e.data.style == "random")  # fmt: skip
    listing = tmp_path / "prefetch.txt"
    listing.write_text(f"/bin/busybox\n/{big.path}\n")
    src = push(image, registry.host, "serve/prefetch:gzip")
    ref = f"{registry.host}/serve/prefetch:zstd-chunked"
    cmd = [*zsnap_command(tmp_path / "conv"), "convert", "--prefetch-list", str(listing),
           f"docker://{src}", f"docker://{ref}"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    sums = dict(
        (path, digest)
        for digest, path in (
            line.split("  ", 1) for line in image.sums_path.read_text(errors="surrogateescape").splitlines()
        )
    )
    with running_stack(registry.host, settings="background_fetch = false\nprefetch_wait = 60\n") as waiting:
        by_pull, by_run, digest = _pull_and_read(waiting, ref, big.path)
        log = waiting.daemon.log()
    assert digest == sums[f"./{big.path}"]
    # the layers' prefetch hints were fetched while their TOCs were parsed, and the prefetch read them
    early = [int(m[1]) for m in re.finditer(r"early prefetch of layer \S+: \d+ of \d+ hinted bytes fetched, "
                                            r"(\d+) of them read through it", log)]  # fmt: skip
    assert early and sum(early) >= big.data.size, log[-3000:]
    assert by_pull >= big.data.size  # the big file's chunks landed before the pull returned
    assert by_run < 512 * 1024, "the container read what the prefetch list named: no more to fetch"

    shipped_pull, shipped_run, digest = _pull_and_read(lazy_stack, ref, big.path)
    assert digest == sums[f"./{big.path}"]
    # the reads that came before the prefetch reached their chunks joined its fetches instead of
    # fetching them again: the same bytes crossed as when the pull waited
    assert big.data.size <= shipped_pull + shipped_run < by_pull + by_run + 512 * 1024
