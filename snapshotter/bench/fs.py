"""``zsnap bench fs``: the lazy file system against the native file system, measured in the same run.

Builds one image whose single layer holds a 1 GiB file, 10,000 small files and a few 4 KiB probe files
(the same bytes are kept on the native file system), converts it with ``zsnap convert`` into a private
loopback registry, then:

1. **sequential read of a 1 GiB cached file**: the store already holds every chunk (filled by background
   fetch in an earlier mount); the file is read through a fresh mount with 1 MiB reads, the FUSE page cache
   dropped (``POSIX_FADV_DONTNEED``) before each pass, so every byte goes through ``read`` of the FUSE
   server; beside the native file read hot from the page cache. One unmeasured first pass (it also brings
   back store files the kernel evicted meanwhile), then the median of ``--passes``. Target >= 1.5 GB/s.
2. **stat + open + read + close of 10,000 small cached files** through a fresh mount (kernel caches
   cold, store warm); beside the same on the native file system. Target <= 300 µs/file.
3. **cold first-read latency of a 4 KiB file in a 1 GB layer**: empty store, no prefetch/background
   fetch; stat + open + read of each probe file (registry on loopback). Target <= 20 ms.

Every mount runs ``zsnap mount`` as a subprocess; this process only reads. Prints a table and one JSON
line ``{"bench": "fs", …}``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from fs.errors import ZsnapError

__all__ = ["add_arguments", "run"]

MiB = 1 << 20
TARGETS = {"seq_gbps": 1.5, "small_us": 300.0, "cold_ms": 20.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--big-mib", type=int, default=1024, help="size of the big file (default %(default)s)"
    )
    parser.add_argument(
        "--small", type=int, default=10_000, help="number of small files (default %(default)s)"
    )
    parser.add_argument("--small-size", type=int, default=4096, help="bytes per small file")
    parser.add_argument("--probes", type=int, default=9, help="4 KiB files for the cold-read latency")
    parser.add_argument("--passes", type=int, default=5, help="measured sequential passes (median)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json_only:
        print(text, file=sys.stderr, flush=True)


def _zsnap(root: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "snapshotter", "--root", str(root), *argv]


# -- building the image ---------------------------------------------------------------------------------


def _build_tree(args: argparse.Namespace, native: Path) -> None:
    """The layer's files on the native file system (also the native side of every comparison)."""
    (native / "big").mkdir(parents=True)
    with open(native / "big/file.bin", "wb") as f:
        words = [os.urandom(4).hex().encode() for _ in range(4096)]
        for i in range(args.big_mib):
            # half random, half text-like: realistic compression, no two chunks alike
            rnd = os.urandom(MiB // 2)
            text = b" ".join(words[b % 4096] for b in rnd[: MiB // 18]) + b"%08d" % i
            f.write(rnd + text[: MiB // 2].ljust(MiB // 2, b"."))
    for i in range(args.small):
        d = native / "small" / f"d{i // 1000:02d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(args.small_size // 2) + bytes(args.small_size // 2))
    (native / "probe").mkdir()
    for i in range(args.probes):
        (native / "probe" / f"p{i}").write_bytes(os.urandom(4096))


def _layout(native: Path, work: Path) -> str:
    """An OCI layout with one uncompressed layer of ``native``; returns its ``oci:`` reference."""
    from fs.digest import Hasher
    from fs.registry import OciLayout

    tar_path = work / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for sub in ("probe", "small", "big"):  # probes first: scattered small files far from the big one
            tf.add(native / sub, arcname=sub)
    h = Hasher()
    with open(tar_path, "rb") as f:
        while piece := f.read(8 * MiB):
            h.update(piece)
    layout = OciLayout(work / "layout")
    layout.init()
    layer = layout.write_blob_from_file(tar_path)
    tar_path.unlink()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [h.digest()]}}).encode()  # fmt: skip
    config_digest = layout.write_blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                    "size": layout.blob_size(layer)}],
    }).encode()  # fmt: skip
    digest = layout.write_blob(manifest)
    layout.set_tag("bench", {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                             "size": len(manifest)})  # fmt: skip
    return f"oci:{layout.path}:bench"


# -- mounts ---------------------------------------------------------------------------------------------


class _Mount:
    """``zsnap mount`` in the foreground as a child process; stopped with SIGTERM."""

    def __init__(self, root: Path, ref: str, mountpoint: Path, *extra: str) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.stats_file = root / "stats.json"
        self.stats_file.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        self.log = open(root / "mount.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            _zsnap(root, "mount", ref, str(mountpoint), "--stats-file", str(self.stats_file), *extra),
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.mountpoint = mountpoint
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        if not ready or not self.proc.stdout.readline():
            self.stop()
            raise ZsnapError(f"zsnap mount failed: {(root / 'mount.log').read_text()[-2000:]}")

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(self.stats_file.read_text())  # the mount's JSON stats file
        return stats

    def wait(self, key: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s = self.stats()
                if s.get(key):
                    return s
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise ZsnapError(f"mount stats never showed {key}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)


# -- measurements ---------------------------------------------------------------------------------------


def _seq_read(path: Path, *, drop: bool) -> float:
    """GB/s of one sequential pass with 1 MiB reads (dropping the file's page cache first if asked)."""
    buf = bytearray(MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        total = 0
        t0 = time.perf_counter()
        while n := os.readv(fd, [buf]):
            total += n
        return total / (time.perf_counter() - t0) / 1e9
    finally:
        os.close(fd)


def _small_files(paths: list[Path]) -> float:
    """µs per file of stat + open + read-all + close."""
    t0 = time.perf_counter()
    for p in paths:
        os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        while os.read(fd, 65536):
            pass
        os.close(fd)
    return (time.perf_counter() - t0) / len(paths) * 1e6


def _probe_ms(path: Path) -> float:
    t0 = time.perf_counter()
    os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    data = os.read(fd, 4096)
    os.close(fd)
    assert len(data) == 4096
    return (time.perf_counter() - t0) * 1e3


def run(args: argparse.Namespace) -> int:
    from snapshotter.services import LocalRegistry

    work = Path(tempfile.mkdtemp(prefix="zsnap-bench-fs-", dir=args.dir))
    registry = None
    mounts: list[_Mount] = []
    try:
        native = work / "native"
        _say(args, f"building {args.big_mib} MiB + {args.small} small files under {work}")
        _build_tree(args, native)
        src = _layout(native, work)
        registry = LocalRegistry(work / "registry")
        ref = f"docker://{registry.host}/bench/fs:zstd-chunked"
        _say(args, "converting to zstd:chunked into a loopback registry")
        subprocess.run(_zsnap(work / "convert-root", "convert", "--quiet", src, ref), check=True)
        probes = sorted((native / "probe").iterdir())
        small = sorted(p for d in sorted((native / "small").iterdir()) for p in d.iterdir())

        _say(args, "(3) cold first reads, empty store")
        m = _Mount(work / "cold", ref, work / "mnt-cold", "--no-prefetch", "--no-background-fetch")
        mounts.append(m)
        cold = [_probe_ms(m.mountpoint / p.relative_to(native)) for p in probes]
        time.sleep(1.1)
        cold_stats = m.stats()
        m.stop()

        _say(args, "filling the store (background fetch)")
        m = _Mount(work / "warm", ref, work / "mnt-fill")
        mounts.append(m)
        m.wait("background_done")
        m.stop()

        _say(args, "(2) small files, (1) sequential read: fresh mount, warm store")
        m = _Mount(work / "warm", ref, work / "mnt", "--no-background-fetch")
        mounts.append(m)
        rel_small = [m.mountpoint / p.relative_to(native) for p in small]
        small_z = _small_files(rel_small)
        small_z2 = _small_files(rel_small)
        _small_files(small)
        small_n = _small_files(small)
        big_rel = m.mountpoint / "big/file.bin"
        _seq_read(native / "big/file.bin", drop=False)
        seq_n = statistics.median(_seq_read(native / "big/file.bin", drop=False) for _ in range(args.passes))
        seq_first = _seq_read(big_rel, drop=True)  # also pulls store files evicted meanwhile back in
        seq_passes = [_seq_read(big_rel, drop=True) for _ in range(args.passes)]
        seq_z, seq_best = statistics.median(seq_passes), max(seq_passes)
        seq_z_cached = _seq_read(big_rel, drop=False)
        time.sleep(1.1)
        warm_stats = m.stats()
        m.stop()
    finally:
        for mt in mounts:
            mt.stop()
        if registry is not None:
            registry.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    result = {
        "bench": "fs",
        "seq_read_gbps": round(seq_z, 3),
        "seq_read_native_gbps": round(seq_n, 3),
        "seq_read_ratio": round(seq_z / seq_n, 3),
        "seq_read_best_gbps": round(seq_best, 3),
        "seq_read_first_pass_gbps": round(seq_first, 3),
        "seq_reread_page_cache_gbps": round(seq_z_cached, 3),
        "small_us_per_file": round(small_z, 1),
        "small_us_per_file_warm_kernel": round(small_z2, 1),
        "small_native_us_per_file": round(small_n, 1),
        "small_ratio": round(small_z / small_n, 1),
        "cold_read_ms_p50": round(statistics.median(cold), 2),
        "cold_read_ms_max": round(max(cold), 2),
        "cold_bytes_fetched": cold_stats["bytes_fetched"],
        "cold_toc_bytes": cold_stats["toc_bytes"],
        "warm_fetches": warm_stats["requests"],
        "big_mib": args.big_mib,
        "small_files": args.small,
    }
    ok = {
        "seq": seq_z >= TARGETS["seq_gbps"],
        "small": small_z <= TARGETS["small_us"],
        "cold": statistics.median(cold) <= TARGETS["cold_ms"],
    }
    result["targets_met"] = ok
    if not args.json_only:
        rows = [
            ("(1) sequential read, 1 GiB cached", f"{seq_z:.2f} GB/s", f"{seq_n:.2f} GB/s",
             f"{seq_z / seq_n:.2f}x", f">= {TARGETS['seq_gbps']} GB/s", ok["seq"]),
            ("    first pass / best pass", f"{seq_first:.2f}/{seq_best:.2f}", "", "", "", None),
            ("    re-read from page cache", f"{seq_z_cached:.2f} GB/s", "", "", "", None),
            ("(2) stat+open+read, 10k cached files", f"{small_z:.0f} µs", f"{small_n:.1f} µs",
             f"{small_z / small_n:.0f}x", f"<= {TARGETS['small_us']:.0f} µs", ok["small"]),
            ("    second pass (kernel caches warm)", f"{small_z2:.0f} µs", "", "", "", None),
            ("(3) cold 4 KiB read, 1 GB layer (p50/max)",
             f"{statistics.median(cold):.1f}/{max(cold):.1f} ms", "", "", f"<= {TARGETS['cold_ms']:.0f} ms",
             ok["cold"]),
        ]  # fmt: skip
        for name, z, n, ratio, target, met in rows:
            verdict = "" if met is None else ("ok" if met else "MISSED")
            print(f"{name:<44} {z:>14} {n:>12} {ratio:>7} {target:>14} {verdict}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0
