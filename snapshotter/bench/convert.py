"""``zsnap bench convert``: zsnap against skopeo and ctr-remote on the same image, in the same run.

One deterministic image (:func:`snapshotter.sample_image.bench_layers`, gzip layers) is pushed to a private
registry; then each tool converts it to zstd:chunked at the same zstd level into the same registry:

* zsnap: ``zsnap convert docker://… docker://…`` (fresh store, so nothing is cached);
* skopeo: ``skopeo copy --dest-compress-format zstd:chunked`` under ``unshare -m`` with a tmpfs over its
  blob-info cache (otherwise it silently reuses the gzip blobs, see docs/DESIGN.md);
* ctr-remote: ``ctr-remote images convert --zstdchunked --oci`` inside a private containerd, after the
  ``ctr pull`` it needs first (timed separately).

Prints seconds, output size, MB/s of uncompressed input and the time ratio against zsnap, then one JSON
line ``{"bench": "convert", ...}``.

``--baseline DIR`` also runs the zsnap of another checkout (``python -m snapshotter`` from ``DIR``) as
``zsnap-baseline``, and ``--rounds N`` alternates the two N times (median seconds reported): on a shared,
noisy machine only a same-run ratio says whether a change helped. ``--image-cache DIR`` keeps the built
image between runs (building it costs more CPU than converting it). ``--bandwidth MBIT`` puts the
registry behind the startup benchmark's network (a namespace whose link sends at MBIT Mbit/s, plus
``--rtt-ms`` of delay): a converter that reads a layer only after downloading it pays the whole download
there, and the tools run inside that namespace (ctr pulls and pushes in its own process).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fs.errors import ZsnapError
from snapshotter.bench.convert_seed import SEED_TAG, SIBLING_TAG, build_seed_layout
from snapshotter.bench.startup.network import network
from snapshotter.sample_image import bench_layers, build_image, system_layers
from snapshotter.services import LocalContainerd, LocalRegistry

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size-mb", type=int, default=1300, help="uncompressed image size (default %(default)s)"
    )
    parser.add_argument("--layers", type=int, default=5, help="layer count (default %(default)s)")
    parser.add_argument(
        "--content",
        choices=["system", "synthetic"],
        default="system",
        help="system: real files from /usr (default; realistic compression speed); synthetic: seeded data",
    )
    parser.add_argument(
        "--level", type=int, default=3, help="zstd level for every tool (default %(default)s)"
    )
    parser.add_argument("--jobs", type=int, default=None, help="zsnap --jobs")
    parser.add_argument("--skip-skopeo", action="store_true")
    parser.add_argument("--skip-ctr-remote", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="also time the zsnap of this checkout (same image, same run) as zsnap-baseline",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="zsnap (and baseline) runs, alternated; median reported"
    )
    parser.add_argument(
        "--shape",
        choices=["single", "seed"],
        default="single",
        help="single: one image (default); seed: a batch of a seed-shaped image (18 layers, repeated big "
        "and empty layers) and a sibling sharing its biggest layer; --size-mb is then the distinct size",
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        metavar="MBIT",
        help="serve the registry from a network namespace whose link sends at MBIT Mbit/s (tbf), behind "
        "the delay proxy, as bench startup does; every tool converts across it (default: plain loopback)",
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=20.0,
        help="round-trip time added with --bandwidth (default %(default)s)",
    )
    parser.add_argument(
        "--image-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="build the OCI layout here once and reuse it in later runs",
    )


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="zsnap-bench-convert-"))
    results: dict[str, dict[str, Any]] = {}
    try:
        with contextlib.ExitStack() as stack:
            data = work / "registry-data"
            registry = LocalRegistry(work / "registry", data=data)
            stack.callback(registry.stop)
            if args.shape == "seed":
                layout, uncompressed = _seed_layout(args, work)
                tags = {SEED_TAG: SEED_TAG, SIBLING_TAG: SIBLING_TAG}
                args.skip_skopeo = args.skip_ctr_remote = True  # they take one image at a time
            else:
                layout = _layout(args, work)
                uncompressed = _uncompressed_size(layout)
                tags = {"src": "bench"}
            for name, tag in tags.items():
                _sh(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                     f"docker://{registry.host}/bench/{name}:gzip"])  # fmt: skip
            link = Link(registry.host, [], "host loopback")
            if args.bandwidth is not None:
                registry.stop()  # the same storage, served in the shaped namespace from now on
                net = stack.enter_context(
                    network(data, work / "net", bandwidth_mbit=args.bandwidth, rtt_ms=args.rtt_ms)
                )
                link = Link(net.registry_host, net.prefix, net.description)
            _say(f"source and destination registry: {link.description}")
            sources = {name: f"{link.host}/bench/{name}:gzip" for name in tags}
            _run_zsnap(args, work, link, sources, results)
            if not args.skip_skopeo:
                _run_skopeo(args, link, sources["src"], results)
            if not args.skip_ctr_remote:
                _run_ctr_remote(args, work, link, sources["src"], results)
            _report(results, uncompressed, _source_bytes(layout, list(tags.values())), args, link)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class Link:
    """Where the tools reach the registry: ``host`` from inside ``prefix`` (a shaped namespace, or [])."""

    host: str
    prefix: list[str]
    description: str


def _run_zsnap(
    args: argparse.Namespace,
    work: Path,
    link: Link,
    sources: dict[str, str],
    results: dict[str, dict[str, Any]],
) -> None:
    variants = {"zsnap": _REPO_ROOT}
    if args.baseline is not None:
        variants["zsnap-baseline"] = args.baseline.resolve()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for round_no in range(args.rounds):
        for name, checkout in variants.items():
            _say(f"{name} convert (round {round_no + 1}/{args.rounds})")
            listing = work / f"list-{name}-{round_no}"
            outputs = {tag: f"bench/out-{tag}-{name}-{round_no}" for tag in sources}
            listing.write_text(
                "".join(
                    f"docker://{sources[tag]} docker://{link.host}/{outputs[tag]}:zsnap\n" for tag in sources
                )
            )
            cmd = link.prefix + _zsnap_command(args, work / f"{name}-{round_no}", listing)
            cpu_before = _children_cpu()
            seconds[name].append(_timed(cmd, cwd=checkout))
            cpu[name].append(_children_cpu() - cpu_before)
            shutil.rmtree(work / f"{name}-{round_no}", ignore_errors=True)  # its store: the disk is needed
            bytes_out = sum(_image_size(link, repo, "zsnap") for repo in outputs.values())
            results[name] = {"seconds": statistics.median(seconds[name]), "runs": seconds[name],
                             "cpu_seconds": statistics.median(cpu[name]), "cpu_runs": cpu[name],
                             "bytes_out": bytes_out}  # fmt: skip


def _run_skopeo(args: argparse.Namespace, link: Link, src: str, results: dict[str, dict[str, Any]]) -> None:
    _say("skopeo copy --dest-compress-format zstd:chunked")
    script = (
        "set -e; mkdir -p /var/lib/containers/cache; mount -t tmpfs tmpfs /var/lib/containers/cache; "
        f"exec skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false "
        f"--dest-compress-format zstd:chunked --dest-compress-level {args.level} "
        f"docker://{src} docker://{link.host}/bench/out:skopeo"
    )
    results["skopeo"] = {
        "seconds": _timed([*link.prefix, "unshare", "-m", "sh", "-c", script]),
        "bytes_out": _image_size(link, "bench/out", "skopeo"),
    }


def _run_ctr_remote(
    args: argparse.Namespace, work: Path, link: Link, src: str, results: dict[str, dict[str, Any]]
) -> None:
    containerd = LocalContainerd(work / "containerd")
    try:
        # ctr pulls and pushes in its own process (containerd only stores): it runs across the link
        where = ["--address", containerd.address, "--namespace", containerd.NAMESPACE]
        ctr = [*link.prefix, "ctr", *where]
        _say("ctr pull (ctr-remote converts inside containerd, so it needs the image there first)")
        pull_s = _timed([*ctr, "images", "pull", "--plain-http", src])
        _say("ctr-remote images convert --zstdchunked --oci")
        dst = f"{link.host}/bench/out:ctr-remote"
        convert = [*link.prefix, "ctr-remote", *where, "images", "convert", "--zstdchunked", "--oci"]
        convert_s = _timed([*convert, "--estargz-compression-level", str(args.level), src, dst])
        _sh([*ctr, "images", "push", "--plain-http", dst, dst])
        results["ctr-remote"] = {
            "seconds": convert_s,
            "pull_seconds": pull_s,
            "bytes_out": _image_size(link, "bench/out", "ctr-remote"),
        }
    finally:
        containerd.stop()


_REPO_ROOT = Path(__file__).resolve().parents[2]


def _layout(args: argparse.Namespace, work: Path) -> Path:
    """The bench image as an OCI layout: built in ``work``, or reused from / saved to ``--image-cache``."""
    if args.image_cache is not None:
        layout: Path = args.image_cache / f"{args.content}-{args.size_mb}mb-{args.layers}l"
        if (layout / "index.json").exists():
            _say(f"reusing the image in {layout}")
            return layout
    else:
        layout = work / "layout"
    _say(f"building a {args.size_mb} MB, {args.layers}-layer image ({args.content} content)")
    builders = (system_layers if args.content == "system" else bench_layers)(args.size_mb, args.layers)
    partial = layout.with_name(layout.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    build_image(partial, builders, tag="bench")
    os.replace(partial, layout)
    return layout


def _seed_layout(args: argparse.Namespace, work: Path) -> tuple[Path, int]:
    """The seed-shaped batch's layout and its distinct uncompressed bytes (cached like ``_layout``)."""
    base = args.image_cache if args.image_cache is not None else work
    layout = base / f"seed-v2-{args.size_mb}mb"
    size_file = layout / "distinct-bytes"
    if not size_file.exists():
        _say(f"building a seed-shaped batch of {args.size_mb} MB distinct (system content)")
        partial = layout.with_name(layout.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "distinct-bytes").parent.mkdir(parents=True)
        distinct = build_seed_layout(partial, args.size_mb)
        (partial / "distinct-bytes").write_text(str(distinct))
        os.replace(partial, layout)
    else:
        _say(f"reusing the seed-shaped batch in {layout}")
    return layout, int(size_file.read_text())


def _zsnap_command(args: argparse.Namespace, root: Path, listing: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "snapshotter", "--root", str(root), "convert", "--quiet",
        "--level", str(args.level), "--from-file", str(listing),
    ]  # fmt: skip
    if args.jobs:
        cmd += ["--jobs", str(args.jobs)]
    return cmd


def _report(
    results: dict[str, dict[str, Any]],
    uncompressed: int,
    source_bytes: int,
    args: argparse.Namespace,
    link: Link,
) -> None:
    from rich.console import Console
    from rich.table import Table

    base = results["zsnap"]["seconds"]
    table = Table(
        title=f"zstd:chunked conversion of {uncompressed / 1e6:.0f} MB (uncompressed"
        f"{', distinct, seed-shaped batch' if args.shape == 'seed' else ''}), level {args.level}, "
        f"registry over {link.description}"
    )
    for column in ("tool", "seconds", "CPU s", "output MB", "MB/s in", "time vs zsnap"):
        table.add_column(column, justify="right" if column != "tool" else "left")
    for tool, r in results.items():
        r["mb_per_s"] = uncompressed / 1e6 / r["seconds"]
        r["ratio_vs_zsnap"] = r["seconds"] / base
        table.add_row(
            tool,
            f"{r['seconds']:.1f}",
            f"{r['cpu_seconds']:.1f}" if "cpu_seconds" in r else "",
            f"{r['bytes_out'] / 1e6:.1f}",
            f"{r['mb_per_s']:.1f}",
            f"{r['ratio_vs_zsnap']:.2f}x",
        )
    Console().print(table)
    print(
        json.dumps(
            {
                "bench": "convert",
                "shape": args.shape,
                "uncompressed_bytes": uncompressed,
                "source_bytes": source_bytes,
                "level": args.level,
                "network": link.description,
                "bandwidth_mbit": args.bandwidth,
                "rtt_ms": args.rtt_ms if args.bandwidth is not None else 0.0,
                "results": results,
            }
        )
    )


def _uncompressed_size(layout: Path) -> int:
    from isal import igzip

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
    total = 0
    for layer in manifest["layers"]:
        with igzip.open(_blob_path(layout, layer["digest"]), "rb") as stream:
            while block := stream.read(1 << 22):
                total += len(block)
    return total


def _source_bytes(layout: Path, tags: list[str]) -> int:
    """Compressed bytes of the distinct source layers of the images ``tags`` (what crosses the link)."""
    index = json.loads((layout / "index.json").read_text())
    sizes: dict[str, int] = {}
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") in tags:
            for layer in json.loads(_blob(layout, entry["digest"]))["layers"]:
                sizes[layer["digest"]] = layer["size"]
    return sum(sizes.values())


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _blob(layout: Path, digest: str) -> bytes:
    return _blob_path(layout, digest).read_bytes()


def _image_size(link: Link, repo: str, tag: str) -> int:
    """Total layer bytes of the tool's output, after checking that it really is zstd:chunked (a tool
    that silently reused the gzip blobs would otherwise win the benchmark)."""
    accept = (
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    )
    url = f"http://{link.host}/v2/{repo}/manifests/{tag}"
    # curl inside the link's namespace (where the registry may be the only place it is reachable)
    cmd = [*link.prefix, "curl", "-sf", "--max-time", "30", "-H", f"Accept: {accept}", url]
    manifest = json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)
    for layer in manifest["layers"]:
        keys = layer.get("annotations", {})
        if not layer["mediaType"].endswith("+zstd") or not any("zstd-chunked.manifest" in k for k in keys):
            raise ZsnapError(f"{repo}:{tag} layer {layer['digest']} is not zstd:chunked: {layer}")
    return sum(layer["size"] for layer in manifest["layers"])


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far (the convert runs): less noisy
    than wall time on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(cmd: list[str], cwd: Path | None = None) -> float:
    started = time.monotonic()
    _sh(cmd, cwd)
    return time.monotonic() - started


def _sh(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise ZsnapError(f"{' '.join(cmd[:4])} … failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


def _say(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)
