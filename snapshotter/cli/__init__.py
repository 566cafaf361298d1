"""The ``zsnap`` command line: one front door for every component.

Each subcommand group lives in its own module next to this one and exposes
``register(subparsers: argparse._SubParsersAction) -> None``, which adds its parser(s) and sets
``func=<callable(args) -> int>``. Modules import their heavy dependencies (trio, httpx, pyfuse3) inside the
command function, so ``zsnap --help`` and ``zsnap store stats`` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from fs.errors import ZsnapError

DEFAULT_ROOT = "/var/lib/zsnap"

# Subcommand modules, in the order `zsnap --help` lists them.
_COMMAND_MODULES = ["store", "convert", "mount", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zsnap",
        description="zstd:chunked converter, lazy filesystem and containerd snapshotter",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("ZSNAP_ROOT", DEFAULT_ROOT)),
        help="state directory: store, mounts, sockets (env ZSNAP_ROOT; default %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ZsnapError as exc:
        print(f"zsnap: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("zsnap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
