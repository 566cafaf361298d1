"""The ``zsnap bench startup`` command: options, the run loop and its clean-up (see the package doc)."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fs.errors import ZsnapError

__all__ = ["add_arguments", "run"]

DEFAULT_CACHE = Path("/var/cache/zsnap/bench-startup")


def _sizes(text: str) -> list[float]:
    return [float(s) for s in text.split(",") if s]


def _modes(text: str) -> list[str]:
    from snapshotter.bench.startup.modes import MODES

    modes = [m for m in text.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise argparse.ArgumentTypeError(f"unknown mode {m!r} (choose from {', '.join(MODES)})")
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[0.5, 2.0],
        help="image sizes in GB, comma-separated (default 0.5,2; 10 and 30 are opt-in)",
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        default=["full", "lazy", "lazy-prefetch", "stargz"],
        help="comma-separated: full,lazy,lazy-prefetch,stargz (default all)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="cold samples per image and mode (default 3)")
    parser.add_argument(
        "--base",
        choices=["debian", "busybox"],
        default="debian",
        help="image base: debian (debootstrap, default) or busybox (quick)",
    )
    parser.add_argument("--seed", type=int, default=1, help="bulk data seed (default 1)")
    parser.add_argument("--no-readall", action="store_true", help="skip the read-everything workload")
    parser.add_argument("--readall-repeat", type=int, default=1,
                        help="repetitions that also read everything (default 1)")  # fmt: skip
    parser.add_argument("--cpu-hog", action="store_true", help="also read everything with one core busy")
    parser.add_argument(
        "--network",
        choices=["shaped", "loopback"],
        default="shaped",
        help="shaped: own netns, tbf + delay proxy (default); loopback: host loopback as is",
    )
    parser.add_argument("--bandwidth-mbit", type=float, default=200.0, help="shaped bandwidth (default 200)")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="added round trip (default 20)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="default %(default)s")
    parser.add_argument("--json", type=Path, help="write every sample and the medians here")
    parser.add_argument("--chart", type=Path, help="write the stacked-bar chart (PNG) here")
    parser.add_argument("--timeout", type=float, default=3600.0, help="per pull/container (default 3600)")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")  # fmt: skip


def _check_space(args: argparse.Namespace, selected: list[str]) -> None:
    """Refuse to start what would fill the disk: each image not yet cached needs its layout plus one
    registry copy per mode in the cache, and a sample needs about twice the largest image in /tmp."""
    from snapshotter.bench.startup import images

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    cached = args.cache_dir / "images"
    keys = {size: images.image_key(images.ImageSpec(size, args.base, args.seed)) for size in args.sizes}
    new = [size for size, key in keys.items() if not (cached / key / "image.json").exists()]
    need_cache = sum(new) * 1e9 * (1 + len(selected))
    need_tmp = 2 * max(args.sizes) * 1e9
    for path, need in ((args.cache_dir, need_cache), (Path(tempfile.gettempdir()), need_tmp)):
        free = shutil.disk_usage(path).free
        if need > free:
            raise ZsnapError(
                f"{path} has {free / 1e9:.1f} GB free; these sizes need about {need / 1e9:.0f} GB"
            )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from snapshotter.bench.startup import chart, images, modes, network, prepare, report
    from snapshotter.services import LocalRegistry

    console = Console(stderr=True, quiet=args.json_only, width=None if sys.stderr.isatty() else 150)
    say = console.print
    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C, through every finally below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    selected = []
    for mode in args.modes:
        why = modes.mode_unavailable(mode)
        if why:
            say(f"[yellow]{why}[/]")
        else:
            selected.append(mode)
    if not selected:
        raise ZsnapError("no mode can run here")
    cache = args.cache_dir
    registry_data = cache / "registry"
    _check_space(args, selected)
    built = [
        images.build(images.ImageSpec(size, args.base, args.seed), cache, say=say) for size in args.sizes
    ]

    work = Path(tempfile.mkdtemp(prefix="zsnap-bench-startup-"))
    cleanup = contextlib.ExitStack()
    samples: list[modes.Sample] = []
    try:
        host_registry = LocalRegistry(work / "prep-registry", data=registry_data)
        try:
            for image in built:
                prepare.prepare(image, host_registry.host, selected, work, say)
        finally:
            host_registry.stop()

        net = cleanup.enter_context(network.network(
            registry_data, work, shaped=args.network == "shaped", bandwidth_mbit=args.bandwidth_mbit,
            rtt_ms=args.rtt_ms,
        ))  # fmt: skip
        say(f"network: {net.description}")
        total = len(built) * len(selected) * args.repeat
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("samples", total=total)
            for image in built:
                repo = prepare.repository(image)
                target = modes.Target(
                    refs={m: f"{net.registry_host}/{repo}:{modes.TAGS[m]}" for m in selected},
                    start_cmd=image.start_cmd, readall_cmd=image.readall_cmd, prefix=net.prefix,
                    registry_host=net.registry_host, work=work, proxy_stats=net.proxy_stats,
                    timeout=args.timeout,
                )  # fmt: skip
                for rep in range(args.repeat):
                    for mode in selected:  # interleaved, so drift on a shared machine hits every mode alike
                        progress.update(task, description=f"{image.name} {mode} #{rep + 1}")
                        readall = not args.no_readall and rep < args.readall_repeat
                        s = modes.sample(target, image.name, mode, rep, readall=readall,
                                         cpu_hog=readall and args.cpu_hog)  # fmt: skip
                        samples.append(s)
                        progress.console.print(
                            f"{image.name:>14} {mode:<14} #{rep + 1} pull {s.pull_s:.2f}s "
                            f"create {s.create_s:.2f}s run {s.run_s:.2f}s "
                            f"fetched {(s.fetched_bytes or 0) / 1e6:.1f} MB"
                            + (f" readall {s.readall_s:.2f}s" if s.readall_s is not None else "")
                        )
                        progress.advance(task)
    finally:
        cleanup.close()
        subprocess.run(["umount", "-R", "-l", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    summary = report.summarize([(i.name, i.size_bytes) for i in built], samples)
    shaped = args.network == "shaped"
    meta = {"network": args.network, "bandwidth_mbit": args.bandwidth_mbit if shaped else None,
            "rtt_ms": args.rtt_ms if shaped else 0.0, "repeat": args.repeat,
            "base": args.base, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    console.print(report.render_table(summary))
    if args.json:
        report.write_json(summary, args.json, **meta)
    if args.chart:
        chart.draw(summary, args.chart)
        say(f"chart: {args.chart}")
    print(report.json_line(summary, **meta), flush=True)
    return 0
