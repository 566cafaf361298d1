"""``zsnap bench NAME [ARGS…]``: benchmarks that print their figures beside raw ceilings measured in the
same run, then one JSON line ``{"bench": NAME, …}``.

Each benchmark is a module ``snapshotter.bench.<name>`` exposing ``add_arguments(parser)`` and
``run(args) -> int``. Adding one is one line in ``BENCHMARKS``. A benchmark module is imported only when it
runs (``zsnap bench NAME --help`` included), so other commands never pay for its imports.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, one-line help), in the order `zsnap bench --help` lists them.
BENCHMARKS = {
    "store": ("snapshotter.bench.store", "store put/get of 64 KiB chunks vs raw LMDB and pread"),
    "convert": ("snapshotter.bench.convert", "zsnap convert vs skopeo and ctr-remote on one image"),
    "fs": ("snapshotter.bench.fs", "lazy FUSE reads (sequential, small files, cold) vs native reads"),
    "startup": (
        "snapshotter.bench.startup",
        "container startup of large images: lazy (zsnap serve) vs full pull",
    ),
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark (" + ", ".join(BENCHMARKS) + ")",
        description="Run a benchmark; `zsnap bench NAME --help` lists its options.",
    )
    sub = bench.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name, (_, text) in BENCHMARKS.items():
        # prefix_chars without "-": every option (and --help) goes to the benchmark's own parser.
        parser = sub.add_parser(name, help=text, add_help=False, prefix_chars="+")
        parser.add_argument("bench_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    module_name, text = BENCHMARKS[args.bench_name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"zsnap bench {args.bench_name}",
        description=module.__doc__ or text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    bench_args = parser.parse_args(args.bench_args)
    for key, value in vars(args).items():  # --root, --verbose, …
        if key not in ("bench_args", "func") and not hasattr(bench_args, key):
            setattr(bench_args, key, value)
    return int(module.run(bench_args) or 0)
