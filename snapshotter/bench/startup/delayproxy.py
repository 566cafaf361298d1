"""A TCP proxy that adds round-trip latency: what netem would do, in userspace (this kernel has no netem).

Each direction of each connection delays every piece of data by half the round trip and keeps order, with
reads and delayed writes pipelined, so the proxy adds latency without capping bandwidth (bandwidth is
shaped by the namespace's tbf). Run it as a process inside the benchmark's namespace::

    python -m snapshotter.bench.startup.delayproxy --upstream 127.0.0.1:5000 --rtt-ms 20

It listens on ``--listen`` (default 127.0.0.1, a free port) and prints ``HOST:PORT`` on stdout once ready.
With ``--stats-file`` it keeps ``{"down": BYTES, "up": BYTES}`` there (bytes sent to clients / to the
upstream, refreshed every 0.1 s): the benchmark's mode-independent count of bytes fetched.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import trio

__all__ = ["main", "serve"]

_PIECE = 256 * 1024
_QUEUE = 256  # pieces in flight per direction: 64 MiB at most, far above bandwidth x delay
counters = {"down": 0, "up": 0}


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, delay: float, direction: str) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](_QUEUE)

    async def reader() -> None:
        async with send:
            try:
                while data := await src.receive_some(_PIECE):
                    await send.send((trio.current_time() + delay, data))
            except trio.BrokenResourceError:
                pass

    async def writer() -> None:
        async with receive:
            try:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await dst.send_all(data)
                    counters[direction] += len(data)
                await trio.sleep_until(trio.current_time() + delay)  # the FIN travels too
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer)


async def _handle(client: trio.SocketStream, upstream: tuple[str, int], delay: float) -> None:
    async with client:
        try:
            server = await trio.open_tcp_stream(*upstream)
        except OSError:
            return
        async with server, trio.open_nursery() as nursery:
            nursery.start_soon(_pump, client, server, delay, "up")
            nursery.start_soon(_pump, server, client, delay, "down")


async def serve(
    upstream: tuple[str, int],
    rtt: float,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Proxy connections to ``upstream``, adding ``rtt`` seconds to each round trip; runs until cancelled.

    ``task_status.started`` gets the listening ``(host, port)``.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, upstream, rtt / 2)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started((sockname[0], sockname[1]))


async def _write_stats(path: Path) -> None:
    last = None
    while True:
        if counters != last:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(counters))
            os.replace(tmp, path)
            last = dict(counters)
        await trio.sleep(0.1)


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", type=_hostport, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="added round trip (default %(default)s)")
    parser.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT (port 0: free)")
    parser.add_argument("--stats-file", type=Path, help="keep byte counts here (JSON)")
    args = parser.parse_args(argv)

    async def amain() -> None:
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                functools.partial(serve, host=args.listen[0], port=args.listen[1]),
                args.upstream,
                args.rtt_ms / 1000,
            )
            if args.stats_file:
                nursery.start_soon(_write_stats, args.stats_file)
            print(f"{host}:{port}", flush=True)

    try:
        trio.run(amain)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
