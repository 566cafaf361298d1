"""``zsnap bench store``: the store's chunk path against raw LMDB and raw file-system figures, same run.

Phases, on a fresh store in a temporary directory (``--dir`` to choose where):

* put: N distinct 64 KiB chunks, one durable ``put`` each, and again with ``put_many`` in batches; each
  interleaved with the same syscalls done raw (write + fdatasync + rename into a 256-way fan-out +
  directory fsync + one LMDB commit), so disk noise weighs on both alike.
* lookup: ``has`` over every digest; beside a raw LMDB ``get`` of the same keys in the same environment.
* get (cached): ``pread`` of a whole 64 KiB chunk from a hot working set (descriptor cache and page cache
  warm): the figure the < 50 µs target is about; beside ``os.pread`` on an open descriptor and
  open + pread + close.
* get (fd misses): ``pread`` round-robin over all N chunks (more than the descriptor cache holds).

Prints a table (store figure, raw figure, ratio) and one JSON line ``{"bench": "store", …}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["add_arguments", "run"]

CHUNK = 64 * 1024
TARGET_US = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunks", type=int, default=2000, help="64 KiB chunks (default %(default)s)")
    parser.add_argument("--batch", type=int, default=64, help="put_many batch size (default %(default)s)")
    parser.add_argument("--hot", type=int, default=128, help="hot working set for cached reads")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the scratch store")
    parser.add_argument("--keep", action="store_true", help="keep the scratch store")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json_only:
        print(text, file=sys.stderr, flush=True)


def _per_op_us(fn: Callable[[], None], ops: int, repeats: int = 5) -> float:
    """Median over ``repeats`` runs of ``fn`` (which performs ``ops`` operations), in µs per operation."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) / ops * 1e6)
    return statistics.median(samples)


class _RawPublisher:
    """The syscalls a durable put needs and nothing else: write, fdatasync, rename into a 256-way
    directory fan-out, directory fsync, one LMDB commit of a small record."""

    def __init__(self, root: Path, lmdb: ModuleType) -> None:
        from fs.store.files import fsync_dir

        self._fsync_dir = fsync_dir
        self.wip, self.data = root / "wip", root / "data"
        self.wip.mkdir(parents=True)
        for i in range(256):
            (self.data / f"{i:02x}").mkdir(parents=True)
        self.env = lmdb.open(str(root / "index"), map_size=1 << 30, max_dbs=2, metasync=False)
        self.db = self.env.open_db(b"b")

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        written = []
        for digest, data in items:
            tmp = self.wip / digest[7:]
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            written.append((fd, tmp, self.data / digest[7:9] / digest[7:]))
        for fd, _, _ in written:
            os.fdatasync(fd)
            os.close(fd)
        with self.env.begin(write=True, db=self.db) as txn:
            for (_, tmp, final), (digest, _) in zip(written, items, strict=True):
                os.rename(tmp, final)
                txn.put(digest.encode(), b"x" * 29)
            for d in {final.parent for _, _, final in written}:
                self._fsync_dir(d)

    def close(self) -> None:
        self.env.close()


def run(args: argparse.Namespace) -> int:
    import lmdb

    from fs.store import Store

    work = Path(tempfile.mkdtemp(prefix="zsnap-bench-store-", dir=args.dir))
    n = args.chunks
    hot = min(args.hot, n)
    results: dict[str, float] = {}
    try:
        chunks = [os.urandom(CHUNK) for _ in range(n)]
        store = Store.open(work / "store")
        try:
            # -- put: store and raw interleaved, so that a noisy disk weighs on both alike -----------
            _say(args, f"put: {n} x 64 KiB, one durable put each, interleaved with a raw publish")
            raw = _RawPublisher(work / "raw", lmdb)
            digests: list[str] = []
            put_s = raw_s = 0.0
            for i, data in enumerate(chunks):
                t0 = time.perf_counter()
                digests.append(store.put(data))
                t1 = time.perf_counter()
                raw.publish([(digests[-1], data)])
                put_s += t1 - t0
                raw_s += time.perf_counter() - t1
                if (i + 1) % max(n // 4, 1) == 0:
                    _say(args, f"  {i + 1}/{n}")
            results["put_us"] = put_s / n * 1e6
            results["raw_publish_us"] = raw_s / n * 1e6

            _say(args, f"put_many: {n} more chunks in batches of {args.batch}, interleaved with raw batches")
            more = [os.urandom(CHUNK) for _ in range(n)]
            put_s = raw_s = 0.0
            for i in range(0, n, args.batch):
                batch = more[i : i + args.batch]
                t0 = time.perf_counter()
                got = store.put_many([(d, None) for d in batch])
                t1 = time.perf_counter()
                raw.publish(list(zip(got, batch, strict=True)))
                put_s += t1 - t0
                raw_s += time.perf_counter() - t1
            results["put_many_us"] = put_s / n * 1e6
            results["raw_publish_batched_us"] = raw_s / n * 1e6
            raw.close()

            t0 = time.perf_counter()
            for data in chunks[: min(n, 500)]:
                store.put(data)
            results["put_dedup_us"] = (time.perf_counter() - t0) / min(n, 500) * 1e6

            # -- lookups ------------------------------------------------------------------------------
            _say(args, f"lookup: has() x {n}, raw LMDB get x {n}")
            index = store._index  # the same environment, for the raw figure
            keys = [d.encode() for d in digests]

            def lookups() -> None:
                for d in digests:
                    store.has(d)

            def raw_gets() -> None:
                for k in keys:
                    with index.env.begin(db=index.blobs) as txn:
                        txn.get(k)

            results["lookup_us"] = _per_op_us(lookups, n)
            results["raw_lmdb_get_us"] = _per_op_us(raw_gets, n)

            # -- cached reads -------------------------------------------------------------------------
            _say(args, f"get: pread 64 KiB from a hot set of {hot}")
            hot_digests = digests[:hot]
            reps = max(20000 // hot, 1)

            def cached_reads() -> None:
                for _ in range(reps):
                    for d in hot_digests:
                        store.pread(d, 0, CHUNK)

            cached_reads()  # warm descriptors and page cache
            results["get_cached_us"] = _per_op_us(cached_reads, reps * hot)
            paths = [str(store.path_of(d)) for d in hot_digests]
            fds = [os.open(p, os.O_RDONLY) for p in paths]

            def raw_preads() -> None:
                for _ in range(reps):
                    for fd in fds:
                        os.pread(fd, CHUNK, 0)

            def raw_open_reads() -> None:
                for _ in range(reps):
                    for p in paths:
                        fd = os.open(p, os.O_RDONLY)
                        os.pread(fd, CHUNK, 0)
                        os.close(fd)

            results["raw_pread_us"] = _per_op_us(raw_preads, reps * hot)
            results["raw_open_pread_close_us"] = _per_op_us(raw_open_reads, reps * hot)
            for fd in fds:
                os.close(fd)

            _say(args, f"get: pread round-robin over all {n} chunks (descriptor cache misses)")

            def spread_reads() -> None:
                for d in digests:
                    store.pread(d, 0, CHUNK)

            results["get_fd_miss_us"] = _per_op_us(spread_reads, n, repeats=3)
        finally:
            store.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    _report(args, n, results)
    return 0


def _report(args: argparse.Namespace, n: int, r: dict[str, float]) -> None:
    rows = [
        ("put 64 KiB (durable, 1 txn each)", r["put_us"], r["raw_publish_us"], "same syscalls, raw"),
        ("put_many 64 KiB (batched)", r["put_many_us"], r["raw_publish_batched_us"], "same syscalls, raw"),
        ("put of a stored chunk (dedup)", r["put_dedup_us"], None, ""),
        ("lookup (has)", r["lookup_us"], r["raw_lmdb_get_us"], "LMDB txn + get"),
        ("get cached: lookup + pread 64 KiB", r["get_cached_us"], r["raw_pread_us"], "os.pread, open fd"),
        ("  same, vs open+pread+close", r["get_cached_us"], r["raw_open_pread_close_us"], "open+pread+close"),
        ("get, fd cache misses", r["get_fd_miss_us"], r["raw_open_pread_close_us"], "open+pread+close"),
    ]  # fmt: skip
    ok = r["get_cached_us"] < TARGET_US
    if not args.json_only:
        from rich.console import Console, JustifyMethod
        from rich.table import Table

        table = Table(title=f"zsnap bench store ({n} chunks of 64 KiB)", title_justify="left")
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("operation", "left"), ("store µs/op", "right"), ("ops/s", "right"),
            ("raw µs/op", "right"), ("ratio", "right"), ("raw is", "left"),
        )  # fmt: skip
        for col, justify in columns:
            table.add_column(col, justify=justify)
        for name, us, raw, what in rows:
            ratio = f"{us / raw:.2f}x" if raw else "-"
            table.add_row(name, f"{us:.2f}", f"{1e6 / us:,.0f}", f"{raw:.2f}" if raw else "-", ratio, what)
        console = Console(stderr=True)
        if not console.is_terminal:
            console = Console(stderr=True, width=120)
        console.print(table)
        verdict = "[green]met[/]" if ok else "[red]missed[/]"
        console.print(f"target: cached lookup + pread of 64 KiB < {TARGET_US:.0f} µs: {verdict}")
    line = {"bench": "store", "chunks": n, "chunk_size": CHUNK, "target_met": ok}
    line.update({k: round(v, 3) for k, v in r.items()})
    line["lookups_per_s"] = round(1e6 / r["lookup_us"])
    line["gets_per_s"] = round(1e6 / r["get_cached_us"])
    line["puts_per_s"] = round(1e6 / r["put_us"])
    print(json.dumps(line, sort_keys=True), flush=True)
