"""Prometheus metrics of the daemon, in a registry of our own, served over HTTP on a configured address.

Series (all prefixed ``zsnap_``)::

    grpc_requests_total{method,code}     Snapshots calls served, by method and gRPC status code
    mounted_images, mounted_layers       images and layers attached to the lazy host for snapshots
    fetched_bytes_total, fetch_requests_total   bytes and range requests fetched from registries
    toc_fetched_bytes_total              the part of fetched_bytes that was footers and TOCs
    read_bytes_total                     bytes served to readers of lazy layers
    fetch_seconds (histogram)            registry fetch latency
    cache_hits_total, cache_misses_total, cache_evictions_total   chunk cache (store) outcomes
    verification_failures_total          chunks whose bytes did not match their TOC digest
    store_bytes, store_objects           what the chunk store holds

Counts kept by the lazy host (``host.stats``) are read at scrape time by :class:`LazyCollector`, so nothing
on the read path knows about Prometheus; fetch latencies are observed through :func:`tap_fetches`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["LazyCollector", "Metrics", "tap_fetches"]

log = logging.getLogger(__name__)

#: host.stats attribute -> (series name, help). Absent attributes are skipped.
_HOST_COUNTERS = {
    "bytes_fetched": ("fetched_bytes", "Bytes fetched from registries."),
    "requests": ("fetch_requests", "Range requests sent to registries."),
    "cache_hits": ("cache_hits", "Chunk reads served from the store."),
    "cache_misses": ("cache_misses", "Chunk reads that had to fetch."),
    "evictions": ("cache_evictions", "Chunks evicted from the store under its size cap."),
    "verify_failures": ("verification_failures", "Chunks whose bytes did not match their digest."),
    "read_bytes": ("read_bytes", "Bytes served to readers of lazy layers (FUSE READ replies)."),
    "toc_bytes": ("toc_fetched_bytes", "Bytes of footers and TOCs fetched (part of fetched_bytes)."),
}


class LazyCollector(Collector):
    """Reads the lazy host's, the remote adapter's and the store's numbers at scrape time.

    Args:
        host_stats: returns the host's stats object (attributes as in ``fs.lazy.stats.MountStats``), or None.
        attached: returns (images, layers) attached for snapshots.
        store_stats: returns ``fs.store.StoreStats`` (or None).
    """

    def __init__(self, host_stats: Callable[[], Any], attached: Callable[[], tuple[int, int]],
                 store_stats: Callable[[], Any]) -> None:  # fmt: skip
        self._host_stats = host_stats
        self._attached = attached
        self._store_stats = store_stats

    def collect(self) -> Iterator[Metric]:
        images, layers = self._attached()
        yield GaugeMetricFamily("zsnap_mounted_images", "Images attached to the lazy host.", value=images)
        yield GaugeMetricFamily("zsnap_mounted_layers", "Layers attached to the lazy host.", value=layers)
        stats = self._host_stats()
        for attr, (name, text) in _HOST_COUNTERS.items():
            value = getattr(stats, attr, None) if stats is not None else None
            yield CounterMetricFamily(f"zsnap_{name}", text, value=float(value or 0))
        try:
            store = self._store_stats()
        except Exception as exc:  # a scrape must not fail because the store is busy or closing
            log.debug("store stats unavailable: %s", exc)
            store = None
        if store is not None:
            yield GaugeMetricFamily("zsnap_store_bytes", "Bytes of blobs in the store.", value=store.bytes)
            yield GaugeMetricFamily("zsnap_store_objects", "Blobs in the store.", value=store.objects)


class Metrics:
    """The daemon's registry and the series it updates directly."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.grpc_requests = Counter(
            "zsnap_grpc_requests", "Snapshots calls served, by method and status code.",
            ["method", "code"], registry=self.registry,
        )  # fmt: skip
        self.fetch_seconds = Histogram(
            "zsnap_fetch_seconds", "Registry fetch latency.", registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )  # fmt: skip
        self._server: Any = None

    def count_call(self, method: str, code: str) -> None:
        self.grpc_requests.labels(method, code).inc()

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def tap_fetches(stats: Any, observe: Callable[[float], None]) -> None:
    """Make ``stats.record_fetch(nbytes, seconds, ...)`` (``MountStats``) also report each latency."""
    record = getattr(stats, "record_fetch", None)
    if record is None:
        return

    def record_and_observe(nbytes: int, seconds: float, *args: Any, **kwargs: Any) -> None:
        record(nbytes, seconds, *args, **kwargs)
        observe(seconds)

    stats.record_fetch = record_and_observe
