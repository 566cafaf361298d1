"""The built-in demo: zsnap's main job from end to end, on this machine, with real parts.

1. Build a demo image of a few hundred MB (a Debian root whose start runs ``python3`` and ``bash``, plus
   bulk data it never reads) as an OCI layout with gzip layers; cached, so a second run reuses it.
2. Push it to a private ``docker-registry`` with skopeo, ``zsnap convert`` it to zstd:chunked, and
   ``zsnap check --full`` the result.
3. Put the registry behind a 200 Mbit/s, 20 ms network (a network namespace of its own), start a private
   containerd with ``zsnap serve`` as its snapshotter, pull the image through CRI (lazily) and run it; then
   the same with containerd's own full pull. Print both startup times and the bytes each fetched.

Every process started is stopped by PID at the end and the work directory removed (the image cache stays
in ``--cache-dir``). Run: ``bash scripts/demo.sh``.
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
from typing import TYPE_CHECKING

from fs.errors import ZsnapError
from snapshotter.services import LocalRegistry

if TYPE_CHECKING:
    from snapshotter.bench.startup.images import BuiltImage

DEFAULT_CACHE = Path("/var/cache/zsnap/bench-startup")
REPO = "demo/app"
TAGS = {"full": "gzip", "lazy": "zstd-chunked"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=0.3, help="image size (default %(default)s GB)")
    parser.add_argument("--base", choices=["debian", "busybox"], default="debian",
                        help="debian (debootstrap, once) or busybox (offline)")  # fmt: skip
    parser.add_argument("--network", choices=["shaped", "loopback"], default="shaped",
                        help="shaped: 200 Mbit/s + 20 ms RTT in a netns (default); loopback")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="image cache (%(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="zsnap-demo-"))
    registry = None
    try:
        from snapshotter.bench.startup import images

        _step(
            f"building a {args.size_gb:g} GB demo image ({args.base} + a workload + bulk data it never reads)"
        )
        image = images.build(images.ImageSpec(args.size_gb, args.base), args.cache_dir, say=print)
        print(f"{image.size_bytes / 1e6:.0f} MB in {len(image.bulk_layers) + 2} layers, "
              f"{image.compressed_bytes / 1e6:.0f} MB gzip; cached in {image.layout.parent}")  # fmt: skip
        data = work / "registry-data"
        registry = LocalRegistry(work / "registry", data=data)
        host = registry.host
        _step(f"pushing it to a private docker-registry at {host} with skopeo")
        _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
              f"oci:{image.layout}:bench", f"docker://{host}/{REPO}:gzip"])  # fmt: skip
        zsnap = [sys.executable, "-m", "snapshotter", "--root", str(work / "zsnap")]
        _step("converting to zstd:chunked")
        started = time.monotonic()
        _run([*zsnap, "convert", f"docker://{host}/{REPO}:gzip", f"docker://{host}/{REPO}:zstd-chunked"])
        convert_s = time.monotonic() - started
        _step("verifying TOC digests, every chunk, and the diff_ids")
        _run([*zsnap, "check", "--full", f"docker://{host}/{REPO}:zstd-chunked"])
        total = _image_bytes(host, REPO, "zstd-chunked")
        registry.stop()
        registry = None
        _containerd_start(args, image, data, work, total)
        print(f"\ndemo done: conversion took {convert_s:.1f}s")
        return 0
    except subprocess.CalledProcessError as exc:
        print(f"\ndemo failed: {' '.join(map(str, exc.cmd[:6]))} … exited {exc.returncode}", file=sys.stderr)
        return 1
    except (ZsnapError, FileNotFoundError) as exc:  # a service that did not start, a missing tool
        hint = " (try --base busybox offline)" if "debootstrap" in str(exc) else ""
        print(f"\ndemo failed: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo interrupted", file=sys.stderr)
        return 130
    finally:
        if registry:
            registry.stop()
        if not args.keep:
            subprocess.run(["umount", "-R", "-l", str(work)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


def _containerd_start(
    args: argparse.Namespace, image: BuiltImage, data: Path, work: Path, total: int
) -> None:
    """Full pull vs lazy pull through containerd + CRI, each from cold (the benchmark's sample)."""
    from snapshotter.bench.startup import modes, network

    shaped = args.network == "shaped"
    with network.network(data, work, shaped=shaped) as net:
        _step(f"network: {net.description}")
        target = modes.Target(
            refs={mode: f"{net.registry_host}/{REPO}:{tag}" for mode, tag in TAGS.items()},
            start_cmd=image.start_cmd, readall_cmd=image.readall_cmd, prefix=net.prefix,
            registry_host=net.registry_host, work=work, proxy_stats=net.proxy_stats, timeout=1800,
        )  # fmt: skip
        results = {}
        for mode, what in (
            ("lazy", "containerd + zsnap serve: CRI PullImage (lazy), ctr run"),
            ("full", "containerd's overlayfs snapshotter: CRI PullImage (full), ctr run"),
        ):
            _step(what)
            s = modes.sample(target, image.name, mode, 0, readall=False, cpu_hog=False)
            print(s.output, end="")
            print(f"pull {s.pull_s:.2f}s + create {s.create_s:.2f}s + first output {s.run_s:.2f}s "
                  f"= {s.total_s:.2f}s; {(s.fetched_bytes or 0) / 1e6:.1f} MB fetched")  # fmt: skip
            results[mode] = s
    lazy, full = results["lazy"], results["full"]
    assert lazy.total_s is not None and full.total_s is not None  # modes.sample sets it or raises
    fetched = lazy.fetched_bytes or 0
    print(f"\nstartup: lazy {lazy.total_s:.2f}s vs full pull {full.total_s:.2f}s "
          f"({full.total_s / lazy.total_s:.1f}x faster); lazy fetched {fetched / 1e6:.1f} MB of "
          f"{total / 1e6:.1f} MB ({100 * fetched / total:.1f}%) before the first output")  # fmt: skip


def _image_bytes(host: str, repo: str, tag: str) -> int:
    request = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return sum(layer["size"] for layer in json.loads(response.read())["layers"])


def _step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _run(cmd: list[str]) -> None:
    shown = ["zsnap", *cmd[3:]] if cmd[:3] == [sys.executable, "-m", "snapshotter"] else cmd
    print("$ " + " ".join(shown), flush=True)
    subprocess.run(cmd, check=True)


if __name__ == "__main__":
    sys.exit(main())
