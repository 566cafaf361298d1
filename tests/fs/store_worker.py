"""Helper process for the multi-process store tests: ``python store_worker.py MODE ROOT [options]``.

Modes (each prints one status line per event on stdout, flushed):

* ``acquire NAME``: acquire temp object NAME; the producer appends ``<pid>`` to ``--count`` then sleeps
  ``--produce-seconds`` then writes ``--content`` (or raises with ``--fail``). Prints ``READY <path>
  <content>`` or ``FAILED <message>``, holds for ``--hold-seconds`` (-1: until stdin closes), releases,
  prints ``RELEASED``.
* ``hold NAME``: like acquire, then holds forever (to be SIGKILLed).
* ``produce-forever NAME``: appends to ``--count``, prints ``PRODUCING`` and never finishes (SIGKILL it).
* ``bind HOLDER``: bind HOLDER to this process, put + ref one blob (``--content``), print ``READY
  <digest>``, hold forever.
* ``put-loop``: put, ref, unref and gc random chunks forever, printing ``PUT <digest>`` after each put
  returned (the crash test SIGKILLs it at random points; ``--slow-publish`` widens the window between
  renaming a file into ``data/`` and committing its record, so kills land there often).
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from fs.errors import ProducerFailed
from fs.store import Store

WORKER = Path(__file__).resolve()


def spawn(mode: str, root: Path, *args: str, stdin: bool = False) -> subprocess.Popen:
    """Start a worker (unbuffered binary stdout, so :func:`expect` can select() on it).

    With ``stdin=True`` the worker gets a pipe; ``--hold-seconds -1`` then holds until it is closed.
    """
    return subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(root), *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        bufsize=0,
        cwd=WORKER.parents[2],
    )


def expect(proc: subprocess.Popen, prefix: str, timeout: float = 20.0) -> str:
    """Read stdout lines until one starts with ``prefix``; return it. Fails on EOF or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"worker {proc.pid}: no {prefix!r} line within {timeout}s")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            continue
        line = proc.stdout.readline().decode()
        if not line:
            raise EOFError(f"worker {proc.pid} exited ({proc.wait()}) before printing {prefix!r}")
        if line.startswith(prefix):
            return line.rstrip("\n")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL by PID and reap (a reaped child is dead for the store's liveness check too)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def _say(*parts: object) -> None:
    print(*parts, flush=True)


def _producer(args: argparse.Namespace):
    def produce(path: Path) -> None:
        if args.count:
            with open(args.count, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(args.produce_seconds)
        if args.fail:
            raise RuntimeError("worker producer told to fail")
        path.write_text(args.content)

    return produce


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("root", type=Path)
    parser.add_argument("arg", nargs="?")
    parser.add_argument("--count")
    parser.add_argument("--content", default="shared content")
    parser.add_argument("--produce-seconds", type=float, default=0.0)
    parser.add_argument("--hold-seconds", type=float, default=0.0)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--slow-publish", action="store_true", help="widen the rename -> commit window (fault injection)"
    )
    args = parser.parse_args()
    if args.slow_publish:
        import fs.store.blobs as blobs

        real_fsync_dir = blobs.fsync_dir

        def slow_fsync_dir(path: Path) -> None:
            time.sleep(0.003)  # between the rename into data/ and the index commit
            real_fsync_dir(path)

        blobs.fsync_dir = slow_fsync_dir

    with Store.open(args.root) as store:
        if args.mode in ("acquire", "hold"):
            try:
                handle = store.acquire(args.arg, _producer(args), holder=f"worker:{os.getpid()}")
            except ProducerFailed as exc:
                _say("FAILED", exc)
                return 3
            _say("READY", handle.path, handle.path.read_text())
            if args.mode == "hold":
                while True:
                    time.sleep(60)
            if args.hold_seconds < 0:
                sys.stdin.read()  # hold until the test closes our stdin
            else:
                time.sleep(args.hold_seconds)
            handle.release()
            _say("RELEASED")
        elif args.mode == "produce-forever":

            def forever(path: Path) -> None:
                with open(args.count, "a") as f:
                    f.write(f"{os.getpid()}\n")
                path.write_text("partial")
                _say("PRODUCING")
                while True:
                    time.sleep(60)

            store.acquire(args.arg, forever)
        elif args.mode == "bind":
            store.bind_holder(args.arg)
            digest = store.put(args.content.encode(), holder=args.arg)
            _say("READY", digest)
            while True:
                time.sleep(60)
        elif args.mode == "put-loop":
            rng = random.Random(args.seed)
            held: list[str] = []
            while True:
                size = rng.choice([1, 100, 4096, 65536, 300_000])
                data = rng.randbytes(size)
                holder = f"layer:{rng.randrange(3)}" if rng.random() < 0.5 else None
                if rng.random() < 0.4:  # a batch: two or more new small blobs share a pack file
                    batch = [(data, None)] + [(rng.randbytes(size), None) for _ in range(rng.randrange(1, 4))]
                    digests = store.put_many(batch, holder=holder)
                else:
                    digests = [store.put(data, holder=holder)]
                for digest in digests:
                    _say("PUT", digest)
                if holder:
                    held.extend((d, holder) for d in digests)
                if held and rng.random() < 0.3:
                    store.unref(*held.pop(rng.randrange(len(held))))
                if rng.random() < 0.05:
                    store.gc()
        else:
            parser.error(f"unknown mode {args.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
