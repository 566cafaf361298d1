"""Prefetch/background fill under registry failures: bounded retries with back-off, then skip (real store,
real peer layer from a local OCI layout; the client fails as an unreachable registry does)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import trio

from fs.errors import RegistryUnavailable
from fs.lazy.fetcher import open_fetcher
from fs.lazy.image import resolve_image
from fs.lazy.layer import open_layer
from fs.lazy.prefetch import batches, run_prefetch
from fs.lazy.scheduler import FetchScheduler
from fs.lazy.stats import MountStats
from fs.registry import ImageReference, OciLayout
from fs.registry.endpoint import LayoutReader
from fs.retry import RetryPolicy
from fs.store import Store

HOLDER = "mount:test"
#: the production back-off (1 s doubling) scaled down; the bounds are what is tested
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, total_time=20.0)


class FailingClient(LayoutReader):
    """The layout client; the first ``fail`` range requests fail like an unreachable registry, and
    ``corrupt`` flips a byte in every answer."""

    def __init__(self, layout: OciLayout) -> None:
        super().__init__(layout)
        self.calls = 0
        self.fail = 0
        self.corrupt = False

    async def get_ranges(self, repo, digest, ranges):
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            raise RegistryUnavailable("connection refused (test)")
        out = await super().get_ranges(repo, digest, ranges)
        if self.corrupt:
            out = [bytes(b ^ 0x01 if i == len(d) // 2 else b for i, b in enumerate(d)) for d in out]
        return out


@pytest.fixture
async def layer_env(vectors_dir: Path, tmp_path: Path):
    """(client, store, top layer of the skopeo vector opened lazily)."""
    layout = OciLayout(vectors_dir / "skopeo-1.9.3-zstd-chunked")
    client = FailingClient(layout)
    image = await resolve_image(client, ImageReference.parse(f"oci:{layout.path}:features"))
    store = Store.open(tmp_path / "store")
    try:
        layer = await open_layer(client, "", image.layers[-1], store=store, stats=MountStats(), holder=HOLDER,
                                 scratch=tmp_path / "scratch")  # fmt: skip
        client.calls = 0
        yield client, store, layer
    finally:
        store.close()


def _messages(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage() and r.levelno == logging.INFO]


async def _background(store, layer, **kwargs) -> tuple[MountStats, int]:
    """Run the background fill to its end; returns the stats and the number of batches it had."""
    stats = MountStats()
    async with open_fetcher(store, FetchScheduler(), stats, holder=HOLDER, fetch_timeout=5) as fetcher:
        n_batches = len(batches(layer.chunks_by_offset(), fetcher.max_request))
        with trio.fail_after(60):  # it must end: the retries are bounded
            await run_prefetch([layer], fetcher, FetchScheduler(), stats, prefetch=False, **kwargs)
    return stats, n_batches


async def test_background_fill_rides_out_a_short_outage(layer_env, caplog) -> None:
    client, store, layer = layer_env
    client.fail = 2
    stats, _ = await _background(store, layer, retry=FAST)
    assert stats.background_done
    assert all(c.zeros or store.has(c.digest) for c in layer.chunks_by_offset())
    assert len(_messages(caplog, "retrying background fetch of")) >= 1
    assert _messages(caplog, "skipped") == []


async def test_background_fill_skips_batches_after_the_budget_then_reads_still_fetch(
    layer_env, caplog
) -> None:
    client, store, layer = layer_env
    client.fail = 10**9  # the registry stays away
    t0 = trio.current_time()
    _, n_batches = await _background(store, layer, retry=FAST)
    assert trio.current_time() - t0 < 30
    skipped = _messages(caplog, "skipped")
    assert len(skipped) == n_batches  # one INFO line per batch
    assert all("failed after 3 attempt(s)" in m and "on-demand reads still fetch them" in m for m in skipped)
    assert client.calls >= FAST.attempts * n_batches  # every batch used its whole budget, no more
    assert not any(store.has(c.digest) for c in layer.chunks_by_offset() if not c.zeros)
    # the registry is back: an on-demand read fetches what the fill skipped
    client.fail = 0
    node = layer.index.nodes["feat/text-2M"]
    async with open_fetcher(store, FetchScheduler(), MountStats(), holder=HOLDER, fetch_timeout=5) as fetcher:
        data = await fetcher.read(layer.source, node.chunks, node.size, 0, node.size)
    assert "sha256:" + hashlib.sha256(data).hexdigest() == node.digest


async def test_bad_content_is_not_retried(layer_env, caplog) -> None:
    client, store, layer = layer_env
    client.corrupt = True
    stats, n_batches = await _background(store, layer, retry=FAST)
    assert _messages(caplog, "retrying") == []
    assert client.calls < FAST.attempts * n_batches  # one try per request, not the budget
    assert stats.background_done
    assert any(not c.zeros and not store.has(c.digest) for c in layer.chunks_by_offset())  # bad: not cached
