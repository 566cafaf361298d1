"""LazyHost: several images in ONE FUSE session, layers shared and refcounted, attached and detached live.

The host runs in a subprocess (``python -m tests.fs.host_worker``); this process reads the FUSE tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.common import stop_process, wait_until
from tests.fixtures.fuse import REPO_ROOT, force_unmount
from tests.fixtures.images import push

pytestmark = pytest.mark.needs_root

SKOPEO = "skopeo-1.9.3-zstd-chunked"


@dataclass
class HostWorker:
    proc: subprocess.Popen[bytes]
    root: Path
    log_path: Path
    attached: dict[str, Any]

    def ask(self, line: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return _read_json(self.proc, timeout, self.log_path)

    def log_tail(self) -> str:
        return self.log_path.read_text()[-4000:]

    def stop(self) -> int | None:
        stop_process(self.proc, timeout=20)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        force_unmount(self.root / "mnt")
        return self.proc.returncode


def _read_json(proc: subprocess.Popen[bytes], timeout: float, log_path: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"host worker silent for {timeout}s:\n{log_path.read_text()[-4000:]}")
        piece = os.read(proc.stdout.fileno(), 65536)
        if not piece:
            raise RuntimeError(f"host worker exited {proc.wait()}:\n{log_path.read_text()[-4000:]}")
        line += piece
    return json.loads(line)


@pytest.fixture
def host_worker(tmp_path: Path) -> Iterator[Any]:
    workers: list[HostWorker] = []

    def start(*refs: str, args: tuple[str, ...] = ("--no-prefetch", "--no-background-fetch")) -> HostWorker:
        root = tmp_path / f"root{len(workers)}"
        root.mkdir()
        log_path = tmp_path / f"host{len(workers)}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.fs.host_worker", "--root", str(root), *args, *refs],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT,
            )  # fmt: skip
        w = HostWorker(proc, root, log_path, {})
        workers.append(w)
        w.attached = _read_json(proc, 120, log_path)
        return w

    try:
        yield start
    finally:
        for w in workers:
            w.stop()


def _base_image(vectors_dir: Path, dest: Path) -> str:
    """A copy of the skopeo vector layout with a second image ``base``: its two bottom layers only."""
    shutil.copytree(vectors_dir / SKOPEO, dest)
    index = json.loads((dest / "index.json").read_text())
    blobs = dest / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][:2]
    config.pop("history", None)

    def put(obj: dict[str, Any]) -> tuple[str, int]:
        data = json.dumps(obj).encode()
        hexd = hashlib.sha256(data).hexdigest()
        (blobs / hexd).write_bytes(data)
        return f"sha256:{hexd}", len(data)

    cfg_digest, cfg_size = put(config)
    manifest["config"] = {**manifest["config"], "digest": cfg_digest, "size": cfg_size}
    manifest["layers"] = manifest["layers"][:2]
    m_digest, m_size = put(manifest)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m_digest,
            "size": m_size,
            "annotations": {"org.opencontainers.image.ref.name": "base"},
        }
    )
    (dest / "index.json").write_text(json.dumps(index))
    return f"oci:{dest}:base"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_images_share_a_layer_and_detach_keeps_the_shared_one(
    registry, vectors_dir: Path, host_worker, tmp_path: Path
) -> None:
    registry.push_oci_layout(vectors_dir / SKOPEO, "host/features:v1")
    full = f"docker://{registry.host}/host/features:v1"
    base = _base_image(vectors_dir, tmp_path / "layout")
    w = host_worker(full, base)
    full_layers, base_layers = (list(map(Path, ls)) for ls in w.attached["layers"])
    assert len(full_layers) == 3 and base_layers == full_layers[:2]  # the two images share two layers
    assert all(all(lz) for lz in w.attached["lazy"])
    fuse_root = w.root / "mnt"
    assert sorted(os.listdir(fuse_root)) == sorted(p.name for p in full_layers)
    top = full_layers[2]
    # the skopeo vector: the top layer holds feat/, the bottom one etc/passwd
    passwd = full_layers[0] / "etc/passwd"
    assert passwd.read_bytes().startswith(b"root:")
    assert (top / "feat/regular.txt").is_file() and len((top / "feat/text-2M").read_bytes()) == 2 << 20
    ino = os.stat(passwd).st_ino
    assert ino >> 32 >= 1  # a layer slot above the root's
    state = w.ask("state")
    assert state["trees"] == 3 and state["holders"] == {
        "img0": sorted("sha256:" + p.name for p in full_layers),
        "img1": sorted("sha256:" + p.name for p in base_layers),
    }

    held = os.open(top / "feat/regular.txt", os.O_RDONLY)  # the kernel keeps this inode while open
    try:
        held_ino = os.fstat(held).st_ino
        assert w.ask("detach img0") == {"ok": True}
        assert sorted(os.listdir(fuse_root)) == sorted(p.name for p in base_layers)
        # the host queues the kernel's dentry invalidation (pyfuse3 runs it on its own thread)
        wait_until(lambda: not top.exists(), timeout=10, what="the detached layer to leave the tree")
        assert passwd.read_bytes().startswith(b"root:") and os.stat(passwd).st_ino == ino
        sums = (vectors_dir / "features.SHA256SUMS").read_text()
        assert f"{hashlib.sha256(os.pread(held, 1 << 16, 0)).hexdigest()}  /feat/regular.txt" in sums
        assert w.ask("state")["trees"] == 3  # unlinked, not freed: the kernel still holds one inode
        # attached again before the kernel forgot it: the same nodes come back
        assert w.ask(f"attach {full} img3")["layers"] == [str(p) for p in full_layers]
        assert os.stat(top / "feat/regular.txt").st_ino == held_ino
        assert w.ask("detach img3") == {"ok": True}
        wait_until(lambda: not top.exists(), timeout=10, what="the detached layer to leave the tree")
    finally:
        os.close(held)
    # the kernel was told to drop the detached layer: it forgets its inodes and the host frees them
    deadline = time.monotonic() + 10
    while (state := w.ask("state"))["trees"] != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state["trees"] == 2, state

    # attaching again gives the same inode numbers (slots are persistent per layer digest); by digest,
    # whatever the tag says (one manifest request, verified)
    manifest_digest = json.loads((vectors_dir / SKOPEO / "index.json").read_text())["manifests"][0]["digest"]
    wrong = "sha256:" + "0" * 64
    assert "error" in w.ask(f"attach docker://{registry.host}/host/features:nosuchtag img2 {wrong}")
    again = w.ask(f"attach docker://{registry.host}/host/features:nosuchtag img2 {manifest_digest}")
    assert list(map(Path, again["layers"])) == full_layers
    assert os.stat(top / "feat/regular.txt").st_ino == held_ino  # rebuilt: same numbers
    assert w.ask("detach img1") == {"ok": True} and w.ask("detach img2") == {"ok": True}
    assert os.listdir(fuse_root) == []
    assert w.ask("detach nobody") == {"ok": True}  # idempotent
    assert w.stop() == 0, w.log_tail()


def _vector_variant(layout: Path, tag: str, change) -> str:
    """In ``layout`` (a copy of the skopeo vector), image ``tag``: the vector's manifest after
    ``change(manifest, blobs_dir)``."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    change(manifest, blobs)
    data = json.dumps(manifest).encode()
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{hexd}",
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    return f"oci:{layout}:{tag}"


def _tampered_image(layout: Path) -> str:
    """Image ``bad``: the vector whose top layer's TOC digest annotation is wrong (the TOC will not
    verify)."""

    def wrong_toc_digest(manifest: dict[str, Any], blobs: Path) -> None:
        key = "io.containers.zstd-chunked.manifest-checksum"
        manifest["layers"][2]["annotations"][key] = "sha256:" + "1" * 64

    return _vector_variant(layout, "bad", wrong_toc_digest)


def test_attach_failure_leaves_nothing_behind(
    registry, vectors_dir: Path, host_worker, tmp_path: Path
) -> None:
    base = _base_image(vectors_dir, tmp_path / "layout")
    bad = _tampered_image(tmp_path / "layout")
    w = host_worker(base)
    answer = w.ask(f"attach docker://{registry.host}/host/missing:v1 nothere")
    assert "error" in answer
    answer = w.ask(f"attach {bad} bad")  # two layers shared with img0 open fine, the top one does not
    assert "TOC" in answer.get("error", "") or "digest" in answer.get("error", ""), answer
    state = w.ask("state")
    assert set(state["holders"]) == {"img0"} and len(state["linked"]) == 2 and state["trees"] == 2
    assert (Path(w.attached["layers"][0][0]) / "etc/passwd").read_bytes().startswith(b"root:")


def _image_with_config(layout: Path, tag: str, config: bytes) -> str:
    """Image ``tag``: the vector's layers with ``config``."""

    def replace_config(manifest: dict[str, Any], blobs: Path) -> None:
        cfg_hex = hashlib.sha256(config).hexdigest()
        (blobs / cfg_hex).write_bytes(config)
        manifest["config"] = {**manifest["config"], "digest": f"sha256:{cfg_hex}", "size": len(config)}

    return _vector_variant(layout, tag, replace_config)


def test_a_bad_config_fails_the_attach_while_its_layers_open(vectors_dir: Path, host_worker, tmp_path: Path):
    """The config is fetched while the lazy layers' TOCs are: when it turns out malformed (or lists
    the wrong number of DiffIDs), the attach fails naming it and keeps none of the layers it opened."""
    base = _base_image(vectors_dir, tmp_path / "layout")
    not_an_object = _image_with_config(tmp_path / "layout", "listcfg", b"[1, 2]")
    one_diff_id = _image_with_config(
        tmp_path / "layout",
        "shortcfg",
        json.dumps({"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}}).encode(),
    )
    w = host_worker(base)
    answer = w.ask(f"attach {not_an_object} listcfg")
    assert "config" in answer.get("error", "") and "malformed" in answer["error"], answer
    answer = w.ask(f"attach {one_diff_id} shortcfg")
    assert "1 diff_ids for 3 layers" in answer.get("error", ""), answer
    state = w.ask("state")
    assert set(state["holders"]) == {"img0"} and len(state["linked"]) == 2 and state["trees"] == 2, state
    assert w.ask(f"attach {base.rsplit(':', 1)[0]}:listcfg-not-there x").get("error")
    assert (Path(w.attached["layers"][0][0]) / "etc/passwd").read_bytes().startswith(b"root:")


def test_lazy_only_attaches_nothing_of_an_image_without_a_lazy_layer(
    registry, test_images, vectors_dir: Path, host_worker, tmp_path: Path
) -> None:
    """What the snapshotter asks for a CRI pull: an image of gzip layers is left to containerd's normal
    unpack (no layer downloaded whole into the host), a zstd:chunked one is attached as usual."""
    base = _base_image(vectors_dir, tmp_path / "layout")
    w = host_worker(base)
    gzip_ref = "docker://" + push(test_images["features:gzip"], registry.host, "host/lazy-only:gzip")
    assert w.ask(f"attach-lazy {gzip_ref} gz") == {"layers": []}
    state = w.ask("state")
    assert set(state["holders"]) == {"img0"} and state["trees"] == 2
    assert not any((w.root / "store").rglob("*.tar"))  # nothing was unpacked for it
    assert w.ask(f"attach-lazy {base} again")["layers"] == w.attached["layers"][0]
    assert w.ask(f"attach {gzip_ref} whole")["layers"]  # without lazy_only it is attached whole
    assert w.ask("state")["trees"] > 2


def test_registry_credentials_in_the_config_reach_the_host(
    auth_registry, vectors_dir: Path, host_worker, tmp_path: Path
) -> None:
    """A registry that wants a login: the daemon config's ``[registry.auth]`` reaches the host's own
    registry clients (the layers attach lazily and read right); a host without it is refused."""
    auth_registry.push_oci_layout(vectors_dir / SKOPEO, "host/private:v1")
    ref = f"docker://{auth_registry.host}/host/private:v1"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[registry.auth."{auth_registry.host}"]\n'
        f'username = "{auth_registry.username}"\npassword = "{auth_registry.password}"\n'
    )
    w = host_worker(ref, args=("--no-prefetch", "--no-background-fetch", "--config", str(config)))
    assert w.attached["lazy"] == [[True, True, True]]
    assert (Path(w.attached["layers"][0][0]) / "etc/passwd").read_bytes().startswith(b"root:")
    anonymous = host_worker()
    answer = anonymous.ask(f"attach {ref} nologin")
    assert "error" in answer and "401" in answer["error"], answer


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_twenty_converted_images_in_one_host(
    registry, vectors_dir: Path, host_worker, tmp_path: Path
) -> None:
    """20 distinct zstd:chunked images (a shared base layer + an own layer each) in one host: all
    readable; prints the host's RSS and attach times (measured, not asserted)."""
    from tests.fixtures.fuse import zsnap_command
    from tests.fixtures.images import ImageSpec, LayerSpec, LayoutWriter, build_image, d, f

    base = LayerSpec((d("etc"), f("etc/os-release", b"ID=zsnap-test\n")))
    writer = LayoutWriter(tmp_path / "src")
    batch = []
    for i in range(20):
        own = LayerSpec(
            (d("app"), *(f(f"app/file{j}.txt", f"image {i} file {j}\n".encode()) for j in range(200)))
        )
        build_image(writer, ImageSpec(f"img{i}", (base, own), ("app",)), f"i{i}")
        batch.append(f"oci:{writer.root}:i{i} docker://{registry.host}/host20/img{i}:v1\n")
    writer.close()
    (tmp_path / "batch").write_text("".join(batch))
    done = subprocess.run(zsnap_command(tmp_path / "convroot", "convert", "--quiet", "--from-file",
                                        str(tmp_path / "batch")), capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    registry.push_oci_layout(vectors_dir / SKOPEO, "host20/vector:v1")
    refs = [f"docker://{registry.host}/host20/vector:v1"]
    refs += [f"docker://{registry.host}/host20/img{i}:v1" for i in range(20)]
    w = host_worker(*refs)
    layers = w.attached["layers"]
    assert all(all(lz) for lz in w.attached["lazy"])
    for i in range(20):
        assert Path(layers[i + 1][-1], "app/file7.txt").read_bytes() == f"image {i} file 7\n".encode()
    assert len(os.listdir(w.root / "mnt")) == 3 + 1 + 20  # the vector, the shared base, 20 own layers
    seconds = w.attached["attach_seconds"]
    print(
        f"\nhost with 21 images: RSS {_rss_mb(w.proc.pid):.1f} MB; attach skopeo vector (4.4 MB) "
        f"{seconds[0] * 1000:.0f} ms; small images median {sorted(seconds[1:])[10] * 1000:.0f} ms"
    )


def test_a_detach_just_before_stopping_leaves_no_errors(registry, vectors_dir: Path, host_worker) -> None:
    """The kernel is told to drop a detached layer's cached entries (hundreds for a real image); a host that
    stops right after must neither send those on a closed session nor log an error for each."""
    registry.push_oci_layout(vectors_dir / SKOPEO, "host/stop:v1")
    w = host_worker(f"docker://{registry.host}/host/stop:v1")
    layers = [Path(p) for p in w.attached["layers"][0]]
    walked = sum(len(dirs) + len(files) for layer in layers for _, dirs, files in os.walk(layer))
    assert walked > 20  # the kernel now caches a dentry for each
    assert w.ask("detach img0") == {"ok": True}
    assert w.stop() == 0
    log = w.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
