"""Benchmark: parse + index a synthetic c/storage TOC of N entries; time and peak RSS, one process per run.

Usage: PYTHONPATH=. python scripts/bench_toc_parse.py N [--exact]   (``--exact`` runs the pure-Python
reference parser). For the baseline of an older tree run it with ``PYTHONPATH=<that tree>``. Prints a human
line and a JSON line. Each run is its own process so that peak RSS (``ru_maxrss``) belongs to that run
alone; compare runs made together (the machine is shared and noisy).
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time


def make_toc(n: int) -> bytes:
    """A c/storage TOC shaped like a real root file system: one directory per 50 files."""
    parts = ['{"version":1,"entries":[']
    offset = 100
    first = True
    for i in range(n):
        if i % 50 == 0:
            e = {
                "type": "dir",
                "name": f"usr/lib/pkg{i // 50}/",
                "mode": 493,
                "modtime": "2024-01-02T03:04:05Z",
            }
        else:
            digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
            e = {
                "type": "reg",
                "name": f"usr/lib/pkg{i // 50}/file{i}.so",
                "mode": 420,
                "size": 1000 + i % 977,
                "modtime": "2024-01-02T03:04:05Z",
                "digest": digest,
                "offset": offset,
                "endOffset": offset + 400,
                "chunkSize": 1000 + i % 977,
            }
            offset += 400
        parts.append(("" if first else ",") + json.dumps(e, separators=(",", ":")))
        first = False
    parts.append("]}")
    return "".join(parts).encode()


def main() -> None:
    n = int(sys.argv[1])
    exact = "--exact" in sys.argv
    from fs.format import Dialect, build_index, parse_toc

    try:  # this tree: the pure-Python reference parser the fast path falls back to
        from fs.format.tocexact import parse_toc_exact as exact_parser
    except ImportError:  # a tree before the fast path (PYTHONPATH=/path/to/old/tree): its only parser
        exact_parser = parse_toc

    data = make_toc(n)
    blob_size = 100 + 400 * n + 1000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if exact:
        toc = exact_parser(data, Dialect.CSTORAGE, max_size=len(data))
    else:
        toc = parse_toc(data, Dialect.CSTORAGE, max_size=len(data))
    t1 = time.perf_counter()
    index = build_index(toc, Dialect.CSTORAGE, blob_size)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "bench": "toc_parse",
        "entries": n,
        "parser": "exact" if exact else "fast",
        "toc_bytes": len(data),
        "parse_s": round(t1 - t0, 3),
        "index_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
        "peak_rss_mb": round(rss / 1024, 1),
        "rss_growth_mb": round((rss - rss0) / 1024, 1),
        "nodes": len(index),
    }
    print(
        f"{n} entries ({out['parser']}): parse {out['parse_s']} s, index {out['index_s']} s, "
        f"peak RSS {out['peak_rss_mb']} MB (+{out['rss_growth_mb']} MB over the generated TOC)"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
