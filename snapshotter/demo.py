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
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fs.errors import ZsnapError
from snapshotter.sample_image import build_image, demo_layers
from snapshotter.services import LocalRegistry


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
        build_image(layout, demo_layers(args.data_mb), tag="demo")
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
    except subprocess.CalledProcessError as exc:
        print(f"\ndemo failed: {' '.join(map(str, exc.cmd[:6]))} … exited {exc.returncode}", file=sys.stderr)
        return 1
    except (ZsnapError, FileNotFoundError) as exc:  # a service that did not start, a missing tool
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1
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
    # Background fetch off, so the numbers show what starting the shell really needed.
    _run([*zsnap, "mount", "--daemon", "--no-background-fetch", "--stats-file", str(stats),
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
        total = _image_bytes(host, "demo/app", "zstd-chunked")
        print(f"tree ready in {ready_s:.2f}s, first output in {first_output_s:.2f}s, "
              f"{fetched / 1e6:.2f} MB fetched of {total / 1e6:.1f} MB ({100 * fetched / total:.1f}%)")
    finally:
        _run([*zsnap, "umount", str(mountpoint)])


def _image_bytes(host: str, repo: str, tag: str) -> int:
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return sum(layer["size"] for layer in json.loads(response.read())["layers"])


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
