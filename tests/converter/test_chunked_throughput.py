"""Throughput of the layer writer (not a regular test: the machine is shared and noisy).

Run as a script to measure MB/s of uncompressed input and peak RSS, one subprocess per tar::

    .venv/bin/python -m tests.converter.test_chunked_throughput [--mb 1024] [TAR ...]

Without TAR arguments it builds (under $TMPDIR, once) (a) a tar of real files from /usr/share and
/usr/lib capped at ``--mb`` MB and (b) a tar of two big half-random, half-text files of the same size.
As a pytest test it runs only when ``ZSNAP_BENCH=1`` is set (then with 256 MB tars and a loose floor).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

_MEASURE = """
import json, os, sys, time

def hwm_kib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

sys.path.insert(0, {repo!r})
from converter.chunked import write_zstd_chunked
path = {path!r}
with open(path, "rb") as f:  # warm the page cache: measure conversion, not the disk
    while f.read(16 << 20):
        pass
with open(path, "rb") as src, open(os.devnull, "wb") as dst:
    start = time.perf_counter(); cpu = time.process_time()
    layer = write_zstd_chunked(src, dst, level={level}, threads={threads})
    wall = time.perf_counter() - start; cpu = time.process_time() - cpu
print(json.dumps({{"bytes": layer.uncompressed_size, "out": layer.size, "wall": wall, "cpu": cpu,
                   "entries": len(layer.toc.entries),
                   "rss_mib": hwm_kib() // 1024}}))
"""


def measure(path: Path, *, level: int = 3, threads: int = 2) -> dict:
    """Convert ``path`` in a fresh interpreter; return bytes, wall/cpu seconds, MB/s and peak RSS."""
    script = _MEASURE.format(repo=str(REPO), path=str(path), level=level, threads=threads)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    result["mb_per_s"] = result["bytes"] / result["wall"] / 1e6
    return result


def build_mixed(path: Path, limit: int) -> Path:
    """A PAX tar of real files (dirs, symlinks, small and big files) from /usr, about ``limit`` bytes."""
    if path.exists():
        return path
    total = 0
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for top in ("/usr/share", "/usr/lib"):
            for root, dirs, files in os.walk(top):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    try:
                        tf.add(full, recursive=False)
                        total += os.lstat(full).st_size
                    except OSError:
                        continue
                    if total >= limit:
                        return path
    return path


def build_big(path: Path, limit: int) -> Path:
    """A tar of two files, each alternating 1 MiB of random bytes and 1 MiB of word soup."""
    if path.exists():
        return path
    rng = random.Random(1)
    words = [bytes(rng.choice(b"abcdefghijklmnop ") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    half = limit // 2
    blob = bytearray()
    while len(blob) < half:
        blob += rng.randbytes(1 << 20)
        blob += b" ".join(rng.choice(words) for _ in range(200_000))[: 1 << 20]
    data = bytes(blob[:half])
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("big/file1", "big/file2"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _report(name: str, r: dict) -> str:
    return (
        f"{name}: {r['bytes'] / 1e6:.0f} MB, {r['entries']} TOC entries -> {r['out'] / 1e6:.0f} MB in "
        f"{r['wall']:.2f} s = {r['mb_per_s']:.0f} MB/s (cpu {r['cpu']:.1f} s), peak RSS {r['rss_mib']} MiB"
    )


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ZSNAP_BENCH") != "1", reason="benchmark: set ZSNAP_BENCH=1")
def test_throughput(tmp_path_factory: pytest.TempPathFactory) -> None:
    where = tmp_path_factory.mktemp("bench")
    for tar in (build_mixed(where / "mixed.tar", 256 << 20), build_big(where / "big.tar", 256 << 20)):
        result = measure(tar)
        print(_report(tar.name, result))
        assert result["rss_mib"] < 300
        assert result["mb_per_s"] > 50  # loose: a shared 2-core machine; the target (200) is reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("tars", nargs="*", type=Path)
    parser.add_argument("--mb", type=int, default=1024, help="size of the generated tars (MB)")
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per tar; the best is reported")
    args = parser.parse_args()
    tars = args.tars
    if not tars:
        where = Path(tempfile.gettempdir()) / "zsnap-bench"
        where.mkdir(exist_ok=True)
        limit = args.mb * 1_000_000
        tars = [
            build_mixed(where / f"mixed-{args.mb}.tar", limit),
            build_big(where / f"big-{args.mb}.tar", limit),
        ]
    for tar in tars:
        runs = [measure(tar, level=args.level, threads=args.threads) for _ in range(args.repeat)]
        print(_report(str(tar), max(runs, key=lambda r: r["mb_per_s"])), flush=True)


if __name__ == "__main__":
    main()
