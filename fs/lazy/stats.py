"""Per-mount counters, written as JSON by ``zsnap mount --stats-file`` every second and at exit.

Fields (all cumulative since the mount started):

* ``bytes_fetched``: compressed bytes received from the registry for chunks, TOCs and whole blobs;
  ``toc_bytes`` of them for footers/TOCs, ``bytes_by_priority`` splits chunk bytes into ``on_demand``,
  ``prefetch`` and ``background``.
* ``requests``: HTTP range/blob requests issued (a multi-range request counts once).
* ``cache_hits`` / ``cache_misses``: chunk lookups served from the store vs. needing a fetch.
* ``chunks_verified``: fetched chunks whose sha256 matched the TOC digest (then cached).
* ``verify_failures``: fetched chunks that did not match (never cached, the read got EIO).
* ``fetch_errors``: fetches that failed (registry unreachable, timeouts, refused).
* ``eio``: FUSE requests answered with EIO.
* ``reads`` / ``read_bytes``: FUSE READ requests served and the bytes they returned.
* ``fetch_latency``: ``{"count", "p50", "p95", "max"}`` in seconds over range GETs (a bounded reservoir of
  the most recent 10,000 samples for the percentiles; ``max`` over all).
* ``prefetch_done`` / ``background_done``: whether those passes finished.
"""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MountStats", "percentile"]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` in [0, 100] of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


@dataclass
class MountStats:
    """Mutable counters owned by one mount (only touched from its trio thread)."""

    bytes_fetched: int = 0
    requests: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    chunks_verified: int = 0
    verify_failures: int = 0
    fetch_errors: int = 0
    eio: int = 0
    reads: int = 0
    read_bytes: int = 0
    toc_bytes: int = 0
    prefetch_done: bool = False
    background_done: bool = False
    bytes_by_priority: dict[str, int] = field(default_factory=dict)
    _latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    _latency_count: int = 0
    _latency_max: float = 0.0

    def record_fetch(self, nbytes: int, seconds: float, *, requests: int = 1, priority: str = "") -> None:
        """Account one completed registry request of ``nbytes`` taking ``seconds`` (at ``priority``)."""
        self.bytes_fetched += nbytes
        if priority:
            key = priority.lower()
            self.bytes_by_priority[key] = self.bytes_by_priority.get(key, 0) + nbytes
        self.requests += requests
        self._latencies.append(seconds)
        self._latency_count += 1
        self._latency_max = max(self._latency_max, seconds)

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self._latencies)
        return {
            "bytes_fetched": self.bytes_fetched,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "chunks_verified": self.chunks_verified,
            "verify_failures": self.verify_failures,
            "fetch_errors": self.fetch_errors,
            "eio": self.eio,
            "reads": self.reads,
            "read_bytes": self.read_bytes,
            "toc_bytes": self.toc_bytes,
            "bytes_by_priority": dict(self.bytes_by_priority),
            "prefetch_done": self.prefetch_done,
            "background_done": self.background_done,
            "fetch_latency": {
                "count": self._latency_count,
                "p50": percentile(lat, 50),
                "p95": percentile(lat, 95),
                "max": self._latency_max,
            },
        }

    def write(self, path: Path, **extra: Any) -> None:
        """Atomically replace ``path`` with the JSON of :meth:`to_dict` (plus ``extra`` keys)."""
        data = self.to_dict()
        data.update(extra)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
        os.replace(tmp, path)
