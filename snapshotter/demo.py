"""The built-in demo: zsnap's main job from end to end, on this machine, with real parts.

1. Build a small image (busybox base, an app layer of many small files, a data layer with one big file)
   as an OCI layout with gzip layers, and push it to a private ``docker-registry`` with skopeo.
2. ``zsnap convert`` it to zstd:chunked in the same registry, and ``zsnap check --full`` the result.
3. ``zsnap mount --daemon`` it lazily, run ``chroot MOUNT /bin/sh -c ...`` on it, and show how few bytes
   were fetched compared with the image size; then ``zsnap umount``.

Everything runs under a temp directory and stops by PID at the end. Run: ``bash scripts/demo.sh``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "cat", "ls", "echo", "sha256sum", "head", "wc", "find", "stat"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data-mb", type=int, default=128, help="size of the big file (default %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zsnap-demo-"))
    registry = None
    try:
        _step("building the demo image (busybox + app + data) as an OCI layout with gzip layers")
        layout = work / "layout"
        build_demo_image(layout, data_mb=args.data_mb)
        registry = LocalRegistry(work / "registry")
        host = registry.host
        _step(f"pushing it to a private docker-registry at {host} with skopeo")
        _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
              f"oci:{layout}:demo", f"docker://{host}/demo/app:gzip"])
        zsnap = [sys.executable, "-m", "snapshotter", "--root", str(work / "zsnap")]
        _step("converting to zstd:chunked")
        started = time.monotonic()
        _run([*zsnap, "convert", f"docker://{host}/demo/app:gzip", f"docker://{host}/demo/app:zstd-chunked"])
        convert_s = time.monotonic() - started
        _step("verifying TOC digests, every chunk, and the diff_ids")
        _run([*zsnap, "check", "--full", f"docker://{host}/demo/app:zstd-chunked"])
        if _has_command(zsnap, "mount"):
            _lazy_start(zsnap, host, work)
        else:
            print("(lazy mount not available in this build; skipping the start)")
        print(f"\ndemo done: conversion took {convert_s:.1f}s")
        return 0
    finally:
        if registry:
            registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


def _lazy_start(zsnap: list[str], host: str, work: Path) -> None:
    mountpoint = work / "rootfs"
    mountpoint.mkdir()
    stats = work / "mount-stats.json"
    _step("mounting lazily and starting a shell in it")
    started = time.monotonic()
    _run([*zsnap, "mount", "--daemon", "--stats-file", str(stats),
          f"docker://{host}/demo/app:zstd-chunked", str(mountpoint)])
    ready_s = time.monotonic() - started
    try:
        out = subprocess.run(
            ["chroot", str(mountpoint), "/bin/sh", "-c", "cat /etc/motd; sha256sum /app/bin/hello"],
            check=True, capture_output=True, text=True,
        ).stdout
        first_output_s = time.monotonic() - started
        print(out, end="")
        time.sleep(1.2)  # the stats file is refreshed every second
        fetched = json.loads(stats.read_text()).get("bytes_fetched", 0)
        print(f"tree ready in {ready_s:.2f}s, first output in {first_output_s:.2f}s, "
              f"{fetched / 1e6:.1f} MB fetched")
    finally:
        _run([*zsnap, "umount", str(mountpoint)])


# --------------------------------------------------------------------------------------------------
# The demo image


def build_demo_image(layout: Path, *, data_mb: int) -> None:
    """Write a 3-layer gzip OCI image tagged ``demo`` into ``layout``."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for build in (_base_layer, _app_layer, lambda tar: _data_layer(tar, data_mb)):
        raw = _tar_bytes(build)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append(_write_blob(blobs, gzip.compress(raw, 6, mtime=0),
                                  "application/vnd.oci.image.layer.v1.tar+gzip"))
    config = {
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _write_blob(blobs, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layers}
    manifest_desc = _write_blob(blobs, json.dumps(manifest).encode(), manifest["mediaType"])
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": "demo"}
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))


def _write_blob(blobs: Path, data: bytes, media_type: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def _tar_bytes(build) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    end = tar.offset  # two zero blocks, without tarfile's 10 KiB record padding (Go/docker style)
    return buf.getvalue()[:end]


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", mode: int = 0o644, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def _dir(tar: tarfile.TarFile, name: str) -> None:
    _add(tar, name, mode=0o755, type=tarfile.DIRTYPE)


def _base_layer(tar: tarfile.TarFile) -> None:
    for d in ("bin", "etc", "tmp", "app", "app/bin", "data"):
        _dir(tar, d)
    _add(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in APPLETS:
        _add(tar, f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
    _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _add(tar, "etc/motd", b"hello from a lazily mounted zstd:chunked image\n")


def _app_layer(tar: tarfile.TarFile) -> None:
    rng = random.Random(1)
    _add(tar, "app/bin/hello", b"#!/bin/sh\necho hello\n", 0o755)
    for i in range(2000):
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "zsnap"]) for _ in range(200))
        _add(tar, f"app/lib/module{i // 100:02d}/file{i:04d}.txt", words.encode())


def _data_layer(tar: tarfile.TarFile, data_mb: int) -> None:
    rng = random.Random(2)
    noise = rng.randbytes(1 << 20)
    parts = []
    for i in range(data_mb * 16):  # 64 KiB pieces: 32 KiB incompressible, 32 KiB text
        start = (i * 7919) % ((1 << 20) - (1 << 15))
        parts.append(noise[start : start + (1 << 15)] + (b"weights %07d\n" % i)[:16] * 2048)
    _add(tar, "data/model.bin", b"".join(parts))


# --------------------------------------------------------------------------------------------------
# Tools


class LocalRegistry:
    """A private Debian ``docker-registry`` on a free loopback port, stopped by PID."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.host = f"127.0.0.1:{port}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, redirect: {{disable: true}}}}\n"
            f"http: {{addr: {self.host}}}\n"
        )
        self._proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("docker-registry did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


def _has_command(zsnap: list[str], name: str) -> bool:
    return subprocess.run([*zsnap, name, "--help"], capture_output=True).returncode == 0


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(cmd: list[str]) -> None:
    shown = ["zsnap", *cmd[3:]] if cmd[:3] == [sys.executable, "-m", "snapshotter"] else cmd
    print("$ " + " ".join(shown), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    sys.exit(main())
