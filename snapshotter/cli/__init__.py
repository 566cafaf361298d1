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
import traceback
from collections.abc import Iterator
from pathlib import Path

from fs.errors import ZsnapError

DEFAULT_ROOT = "/var/lib/zsnap"

# Subcommand modules, in the order `zsnap --help` lists them.
_COMMAND_MODULES = ["store", "convert", "mount", "serve", "bench"]


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
    except (ZsnapError, KeyboardInterrupt, BaseExceptionGroup) as exc:
        leaves = list(exception_leaves(exc))
        if not all(isinstance(leaf, ZsnapError | KeyboardInterrupt) for leaf in leaves):
            raise  # a bug: keep the traceback
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            print("zsnap: interrupted", file=sys.stderr)
            return 130
        if args.verbose:
            traceback.print_exception(exc)
        for message in dict.fromkeys(str(leaf) for leaf in leaves):
            print(f"zsnap: error: {message}", file=sys.stderr)
        return 1


def exception_leaves(exc: BaseException) -> Iterator[BaseException]:
    """The individual errors inside (possibly nested) exception groups: concurrent work (several layers
    at once) can fail in several places, and each deserves its own line."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from exception_leaves(inner)
    else:
        yield exc


if __name__ == "__main__":
    sys.exit(main())
