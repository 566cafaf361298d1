"""``zsnap serve`` (the containerd snapshotter daemon) and ``zsnap install-units``.

``zsnap [--root DIR] serve [--config FILE] [--socket PATH] [--metrics-address HOST:PORT] [--no-lazy]``
reads the TOML config (``/etc/zsnap/config.toml`` if it exists), applies the flags over it and runs in the
foreground until SIGTERM/SIGINT; under systemd it reports ``READY=1`` through ``$NOTIFY_SOCKET``.
A bad config or flag is one ``zsnap: error:`` line and exit status 1, before anything starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from snapshotter.cli import DEFAULT_ROOT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the containerd proxy snapshotter daemon",
        description="Serve containerd's Snapshots API on a unix socket; layers of images pulled through "
        "CRI (or ctr-remote rpull) are served lazily from their registry.",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML (default /etc/zsnap/config.toml)")
    serve.add_argument("--socket", type=Path, metavar="PATH", help="default /run/zsnap/zsnap.sock")
    serve.add_argument("--metrics-address", metavar="HOST:PORT", help='Prometheus endpoint ("" turns it off)')
    serve.add_argument("--no-lazy", action="store_true", help="take the normal path for every layer")
    serve.set_defaults(func=_serve)

    units = subparsers.add_parser(
        "install-units", help="install the systemd unit and a sample config",
        description="Write etc/systemd/system/zsnap.service and (unless present) etc/zsnap/config.toml.",
    )  # fmt: skip
    units.add_argument("--prefix", type=Path, default=Path("/"), help="install below this dir (default /)")
    units.set_defaults(func=_install_units)


def _serve(args: argparse.Namespace) -> int:
    import trio

    from snapshotter.config import load_config, parse_metrics_address
    from snapshotter.daemon import serve_snapshotter

    config = load_config(args.config)
    root_given = args.root != Path(DEFAULT_ROOT) or "ZSNAP_ROOT" in os.environ
    config = config.with_overrides(
        root=args.root.resolve() if root_given else None,
        socket=args.socket.absolute() if args.socket else None,
        lazy=False if args.no_lazy else None,
    )
    if args.metrics_address is not None:  # "" turns the endpoint off
        metrics = parse_metrics_address(args.metrics_address, "--metrics-address")
        config = dataclasses.replace(config, metrics_address=metrics)
    root_logger = logging.getLogger()
    root_logger.setLevel(min(root_logger.level, logging.INFO))  # a daemon says what it does
    trio.run(serve_snapshotter, config)
    return 0


def _install_units(args: argparse.Namespace) -> int:
    from snapshotter.units import install_units

    for path, what in install_units(args.prefix):
        print(f"{path}: {what}")
    if args.prefix == Path("/"):
        print("next: systemctl daemon-reload && systemctl enable --now zsnap (and see systemd/README.md)")
    return 0
