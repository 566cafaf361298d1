"""Test-only entry point: serve images from ONE :class:`~fs.lazy.host.LazyHost` in this process.

    python -m tests.fs.host_worker --root ROOT [--no-prefetch] [--no-background-fetch] [--config TOML] REF...

Opens the store at ROOT and a host (FUSE session at ``ROOT/mnt``), attaches each REF under holder
``img<i>``, prints one JSON line ``{"layers": [[path, ...] per REF], "lazy": [[bool, ...] per REF],
"attach_seconds": [float per REF]}``, then
serves until SIGTERM/SIGINT. ``--config`` reads the daemon's config file and builds the host options the
way the daemon does (``[limits]`` included). Commands on stdin, one per line, each answered by one JSON line:

    attach REF HOLDER [MANIFEST-DIGEST]  -> {"layers": [path, ...]}       (or {"error": "..."})
    attach-lazy REF HOLDER               -> the same, attaching nothing unless a layer reads lazily
    detach HOLDER       -> {"ok": true}
    state               -> {"trees": N, "linked": [...], "nodes": N, "stats": {...}, "holders": {...}}

(The tests read the mount from their own process: a FUSE server must never read itself.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from fs.errors import ZsnapError
from fs.lazy.host import LazyHost
from fs.lazy.hostsession import open_lazy_host
from fs.lazy.options import HostOptions
from fs.store import Store


def _say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _commands(host: LazyHost, done: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))  # cancellable, unlike a file read in a worker thread
    buf = b""
    while True:
        while b"\n" not in buf:
            piece = await stdin.receive_some()
            if not piece:
                done.cancel()  # stdin closed: the test is gone
                return
            buf += piece
        line, _, buf = buf.partition(b"\n")
        words = line.decode().split()
        if not words:
            continue
        try:
            if words[0] in ("attach", "attach-lazy"):
                digest = words[3] if len(words) > 3 else None
                layers = await host.attach_image(
                    words[1], holder=words[2], manifest_digest=digest, lazy_only=words[0] == "attach-lazy"
                )
                _say({"layers": [str(la.path) for la in layers]})
            elif words[0] == "detach":
                await host.detach(words[1])
                _say({"ok": True})
            elif words[0] == "state":
                table = host.ops.table
                _say(
                    {
                        "trees": len(table.trees()),
                        "linked": table.layer_names,
                        "nodes": len(table),
                        "stats": host.stats.to_dict(),
                        "holders": host.holders,
                    }
                )
            else:
                _say({"error": f"unknown command {words[0]!r}"})
        except ZsnapError as exc:
            _say({"error": str(exc)})


async def main(args: argparse.Namespace) -> None:
    store = await trio.to_thread.run_sync(Store.open, args.root)
    try:
        options = HostOptions()
        if args.config is not None:
            from snapshotter.config import load_config
            from snapshotter.remote import host_options

            options = host_options(load_config(args.config))
        options = dataclasses.replace(
            options, prefetch=not args.no_prefetch, background_fetch=not args.no_background_fetch
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_lazy_host(args.root, store, options=options) as host, trio.open_nursery() as n:
                attached, seconds = [], []
                for i, ref in enumerate(args.refs):
                    t0 = trio.current_time()
                    attached.append(await host.attach_image(ref, holder=f"img{i}"))
                    seconds.append(trio.current_time() - t0)
                _say(
                    {
                        "layers": [[str(la.path) for la in layers] for layers in attached],
                        "lazy": [[la.lazy for la in layers] for layers in attached],
                        "attach_seconds": seconds,
                    }
                )
                n.start_soon(_commands, host, n.cancel_scope)
                async for _ in signals:
                    n.cancel_scope.cancel()
                    break
    finally:
        await trio.to_thread.run_sync(store.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="host_worker")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--no-prefetch", action="store_true")
    parser.add_argument("--no-background-fetch", action="store_true")
    parser.add_argument("--config", type=Path)
    parser.add_argument("refs", nargs="*")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(main, parser.parse_args())
