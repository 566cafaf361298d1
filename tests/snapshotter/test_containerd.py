"""The real containerd 1.6 using ``zsnap serve`` as its proxy snapshotter: ctr pull + run, CRI pulls, and
the lazy ALREADY_EXISTS handshake."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter import cri
from snapshotter.proto import snapshots_pb2 as pb
from tests.fixtures.common import wait_until
from tests.fixtures.containerd import (
    CRI_ENABLED,
    Containerd,
    chain_id,
    cri_config_toml,
    mounts_below,
    start_containerd,
)
from tests.fixtures.images import NON_UTF8_NAME, diff_stat_listing, push, stat_listing_script
from tests.snapshotter.daemon import REPO, short_tempdir, start_daemon, zsnap_command

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


class Stack:
    """One zsnap daemon and one containerd (CRI on) that routes the ``zsnap`` snapshotter to it."""

    def __init__(
        self, base: Path, registry_host: str, *, module: str = "snapshotter", settings: str = ""
    ) -> None:
        self.base = base
        self.module = module
        self.config = (
            f'metrics_address = "127.0.0.1:0"\n{settings}[registry]\nplain_http = ["{registry_host}"]\n'
        )
        self.daemon = start_daemon(base, config=self.config, module=module)
        try:
            self.ctrd = start_containerd(
                proxy_snapshotters={"zsnap": str(self.daemon.socket)},
                disabled_plugins=CRI_ENABLED,
                extra_config=cri_config_toml(snapshotter="zsnap", plain_http=[registry_host]),
            )
        except BaseException:
            self.daemon.close()
            raise

    def restart_daemon(self) -> None:
        """SIGTERM the daemon and start it again on the same root and socket (containerd re-dials)."""
        assert self.daemon.terminate() == 0, self.daemon.log()[-3000:]
        self.daemon.close()
        self.daemon = start_daemon(self.base, config=self.config, module=self.module)

        def reconnected() -> bool:  # containerd re-dials a proxy snapshotter with back-off (<= 3 s)
            probe = ["snapshots", "--snapshotter", "zsnap", "ls"]
            return self.ctrd.ctr(*probe, check=False, namespace=cri.CRI_NAMESPACE).returncode == 0

        wait_until(reconnected, timeout=30, what="containerd to reconnect to the restarted daemon")

    def snapshots(self) -> list[pb.Info]:
        return [i for r in self.daemon.stub().List(pb.ListSnapshotsRequest()) for i in r.info]

    def close(self) -> None:
        try:
            self.ctrd.stop()
            if not mounts_below(self.ctrd.base):
                shutil.rmtree(self.ctrd.base, ignore_errors=True)
        finally:
            self.daemon.close()


@contextlib.contextmanager
def running_stack(registry_host: str, module: str = "snapshotter", settings: str = "") -> Iterator[Stack]:
    """A :class:`Stack` under a short temp dir; ``settings`` are top-level config lines for the daemon."""
    base = short_tempdir()
    s = Stack(base, registry_host, module=module, settings=settings)
    try:
        yield s
    finally:
        s.close()
        if not mounts_below(base):
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(registry) -> Iterator[Stack]:
    """The daemon as shipped (lazy layers on) behind a CRI-enabled containerd."""
    with running_stack(registry.host) as s:
        yield s


@pytest.fixture(scope="module")
def handshake_stack(registry) -> Iterator[Stack]:
    """The daemon with the unpacking stand-in host (tests/snapshotter/unpacking_host.py)."""
    with running_stack(registry.host, "tests.snapshotter.unpacking_host") as s:
        yield s


def run_in(ctrd: Containerd, ref: str, cmd: list[str], *, namespace: str, mounts=()) -> str:
    """``ctr run --rm --snapshotter zsnap`` in ``namespace``; returns stdout."""
    cid = f"zsnap-{uuid.uuid4().hex[:12]}"
    args = ["run", "--rm", "--snapshotter", "zsnap", "--runc-root", str(ctrd.base / "runc"),
            "--fifo-dir", str(ctrd.base / "fifo")]  # fmt: skip
    for src, dst in mounts:
        args += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:ro"]
    return ctrd.ctr(*args, ref, cid, *cmd, namespace=namespace, timeout=120).stdout


#: What a zstd:chunked TOC cannot name (JSON turns the non-UTF-8 name into U+FFFD), as fs/lazy documents.
TOC_LOSSY = (NON_UTF8_NAME, NON_UTF8_NAME.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))


def check_image_runs(stack: Stack, image, ref: str, namespace: str, ignore: tuple[str, ...] = ()) -> None:
    """Run the image and compare every file's content and metadata with the model (minus ``ignore``)."""
    sums = "/run/zsnap-check/SHA256SUMS"
    skip = tuple(b"  ./" + p.encode("utf-8", "surrogateescape") + b"\n" for p in ignore)
    lines = image.sums_path.read_bytes().splitlines(keepends=True)
    sums_file = stack.base / f"SHA256SUMS-{uuid.uuid4().hex[:8]}"
    sums_file.write_bytes(b"".join(line for line in lines if not line.endswith(skip)))
    script = stat_listing_script(image.spec, sums)
    out = run_in(stack.ctrd, ref, ["sh", "-c", script], namespace=namespace, mounts=[(str(sums_file), sums)])
    assert "SUMS-OK" in out
    problems = diff_stat_listing(image.spec, out, ignore=ignore)
    assert not problems, "\n".join(problems)


def convert(src: str, dst: str, tmp_path: Path) -> None:
    """``zsnap convert`` (zstd:chunked) from one registry reference to another."""
    cmd = [*zsnap_command(tmp_path / "conv"), "convert", f"docker://{src}", f"docker://{dst}"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)


def scrape(stack: Stack) -> str:
    url = f"http://127.0.0.1:{stack.daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def image_chain(stack: Stack, ref: str, namespace: str) -> tuple[list[str], dict]:
    """The chain IDs of the image's layers, bottom first, and its (amd64) manifest."""
    ctrd = stack.ctrd
    target = ctrd.ctr("images", "ls", namespace=namespace).stdout.splitlines()
    digest = next(line.split()[2] for line in target[1:] if line.split()[0] == ref)
    get = lambda d: json.loads(ctrd.ctr("content", "get", d, namespace=namespace).stdout)  # noqa: E731
    doc = get(digest)
    if "manifests" in doc:
        doc = get(next(m["digest"] for m in doc["manifests"] if m["platform"]["architecture"] == "amd64"))
    diff_ids = get(doc["config"]["digest"])["rootfs"]["diff_ids"]
    return [chain_id(diff_ids[: i + 1]) for i in range(len(diff_ids))], doc


def test_ctr_pull_and_run_take_the_normal_path(stack: Stack, registry, test_images) -> None:
    """ctr sends no labels: zsnap unpacks through Prepare/Commit like overlayfs, and the container sees the
    image exactly (every file's content, mode, owner, link; whiteouts applied)."""
    image = test_images["features:gzip"]
    ref = push(image, registry.host, "serve/ctr:gzip")
    stack.ctrd.pull(ref, snapshotter="zsnap")
    committed = {i.name: i for i in stack.snapshots() if i.kind == pb.COMMITTED}
    chains, _ = image_chain(stack, ref, stack.ctrd.namespace)
    assert len(committed) >= len(chains)  # containerd names them "<ns>/<n>/<chainID>"
    assert all(any(name.endswith(c) for name in committed) for c in chains)
    check_image_runs(stack, image, ref, stack.ctrd.namespace)
    stack.ctrd.remove_image(ref)  # --sync: containerd's GC removes our snapshots too
    assert not [i for i in stack.snapshots() if any(i.name.endswith(c) for c in chains)]


def test_cri_pull_of_a_gzip_image_falls_back_to_the_normal_path(stack: Stack, registry, test_images) -> None:
    """A CRI pull sends the labels; a gzip layer cannot be served lazily, so containerd unpacks it."""
    image = test_images["features:gzip"]
    ref = push(image, registry.host, "serve/cri:gzip")
    image_id = cri.pull_image(stack.ctrd.address, ref, timeout=120)
    assert image_id.startswith("sha256:")
    status = cri.image_status(stack.ctrd.address, ref)
    assert status is not None and status.id == image_id
    check_image_runs(stack, image, ref, cri.CRI_NAMESPACE)
    assert "takes the normal path" in stack.daemon.log()
    cri.remove_image(stack.ctrd.address, ref)
    assert cri.image_status(stack.ctrd.address, ref) is None


def test_cri_pull_of_zstd_chunked_is_lazy(stack: Stack, registry, test_images, tmp_path) -> None:
    """The ALREADY_EXISTS handshake: containerd records our lazily committed snapshots, downloads no layer,
    and the container reads the image through the lazy host."""
    image = test_images["features:gzip"]
    src = push(image, registry.host, "serve/lazy:gzip")
    ref = f"{registry.host}/serve/lazy:zstd-chunked"
    convert(src, ref, tmp_path)
    cri.pull_image(stack.ctrd.address, ref, timeout=120)
    chains, manifest = image_chain(stack, ref, cri.CRI_NAMESPACE)
    by_name = {i.name: i for i in stack.snapshots()}
    for parent, chain in zip(["", *chains], chains, strict=False):
        info = by_name[chain]  # committed under the target name itself, not "<ns>/<n>/..."
        assert info.kind == pb.COMMITTED and info.parent == parent
        assert info.labels["containerd.io/snapshot.ref"] == chain
    content = set(stack.ctrd.ctr("content", "ls", "-q", namespace=cri.CRI_NAMESPACE).stdout.split())
    assert not content & {layer["digest"] for layer in manifest["layers"]}  # no layer was downloaded
    check_image_runs(stack, image, ref, cri.CRI_NAMESPACE, ignore=TOC_LOSSY)
    metrics = scrape(stack)
    assert "zsnap_mounted_images 1.0" in metrics and "zsnap_fetched_bytes_total" in metrics
    cri.remove_image(stack.ctrd.address, ref)
    wait_until(lambda: not set(chains) & {i.name for i in stack.snapshots()}, timeout=30,
               what="containerd's GC to remove the lazy snapshots")  # fmt: skip
    assert "zsnap_mounted_images 0.0" in scrape(stack)  # the image was detached from the host


def test_lazy_handshake_with_real_containerd(handshake_stack: Stack, registry, test_images) -> None:
    """CRI pull of a zstd image: every layer is committed by zsnap under its chain ID and answered with
    ALREADY_EXISTS; containerd accepts them (List/Stat re-check), downloads no layer, and the container
    runs on overlay mounts whose lowerdirs are the host's layer directories. Removing the image removes
    our snapshots and detaches the image from the host."""
    stack = handshake_stack
    image = test_images["features:zstd"]
    ref = push(image, registry.host, "serve/handshake:zstd")
    cri.pull_image(stack.ctrd.address, ref, timeout=120)
    chains, manifest = image_chain(stack, ref, cri.CRI_NAMESPACE)
    by_name = {i.name: i for i in stack.snapshots()}
    for parent, chain in zip(["", *chains], chains, strict=False):
        info = by_name[chain]  # committed under the target name itself, not "<ns>/<n>/..."
        assert (info.kind, info.parent) == (pb.COMMITTED, parent)
        assert info.labels["containerd.io/snapshot.ref"] == chain
        assert info.labels["containerd.io/snapshot/cri.image-ref"] == ref
    content = set(stack.ctrd.ctr("content", "ls", "-q", namespace=cri.CRI_NAMESPACE).stdout.split())
    assert not content & {layer["digest"] for layer in manifest["layers"]}  # no layer was downloaded
    check_image_runs(stack, image, ref, cri.CRI_NAMESPACE)
    assert "zsnap_mounted_images 1.0" in scrape(stack)
    holder = f"snapshots:{by_name[chains[0]].labels['containerd.io/snapshot/cri.manifest-digest']}"
    detached = stack.daemon.root / "test-host" / "detached"
    for pulls in (1, 2):  # removed, then pulled again (attached again) and removed again
        cri.remove_image(stack.ctrd.address, ref)
        wait_until(lambda: not set(chains) & {i.name for i in stack.snapshots()}, timeout=30,
                   what="containerd's GC to remove the lazy snapshots")  # fmt: skip
        assert detached.read_text().split() == [holder] * pulls  # once, when its last snapshot went
        assert "zsnap_mounted_images 0.0" in scrape(stack)
        if pulls == 1:
            cri.pull_image(stack.ctrd.address, ref, timeout=120)
            assert set(chains) <= {i.name for i in stack.snapshots()}


def test_layers_the_host_cannot_serve_take_the_normal_path(
    handshake_stack: Stack, registry, test_images
) -> None:
    """gzip layers (not lazily readable) fall back with one log line each and containerd unpacks them; the
    image is never attached to the host (its layers would be downloaded twice)."""
    stack = handshake_stack
    image = test_images["features:gzip"]
    ref = push(image, registry.host, "serve/handshake:gzip")
    detached = stack.daemon.root / "test-host" / "detached"
    detached_before = len(detached.read_text().split()) if detached.exists() else 0
    cri.pull_image(stack.ctrd.address, ref, timeout=120)
    chains, _ = image_chain(stack, ref, cri.CRI_NAMESPACE)
    normal = [line for line in stack.daemon.log().splitlines() if "takes the normal path" in line]
    assert len([line for line in normal if "serve/handshake:gzip" in line]) == len(chains)  # one line each
    # the host saw no lazily readable layer in the manifest: nothing was attached (nothing to detach)
    assert (len(detached.read_text().split()) if detached.exists() else 0) == detached_before
    assert "zsnap_mounted_images 0.0" in scrape(stack)
    assert not set(chains) & {i.name for i in stack.snapshots()}  # unpacked under containerd's own keys
    check_image_runs(stack, image, ref, cri.CRI_NAMESPACE)
    cri.remove_image(stack.ctrd.address, ref)


@pytest.mark.parametrize("which", ["handshake_stack", "stack"])
def test_lazy_snapshots_survive_a_daemon_restart(which, request, registry, test_images, tmp_path) -> None:
    """After a restart (without an fd store: the FUSE session is unmounted and mounted afresh) the daemon
    attaches the image again before READY=1: a container of an image pulled lazily before the restart
    runs (stand-in host and real host). tests/snapshotter/test_restart.py restarts under an fd store."""
    stack = request.getfixturevalue(which)
    image = test_images["features:gzip"]
    if which == "stack":
        src = push(image, registry.host, "serve/restart:gzip")
        ref = f"{registry.host}/serve/restart:zstd-chunked"
        convert(src, ref, tmp_path)
    else:
        image = test_images["features:zstd"]
        ref = push(image, registry.host, "serve/restart:zstd")
    cri.pull_image(stack.ctrd.address, ref, timeout=120)
    chains, _ = image_chain(stack, ref, cri.CRI_NAMESPACE)
    stack.restart_daemon()
    assert set(chains) <= {i.name for i in stack.snapshots()}
    check_image_runs(stack, image, ref, cri.CRI_NAMESPACE, ignore=TOC_LOSSY if which == "stack" else ())
    assert "zsnap_mounted_images 1.0" in scrape(stack)  # attached again by the restarted daemon
    cri.remove_image(stack.ctrd.address, ref)
