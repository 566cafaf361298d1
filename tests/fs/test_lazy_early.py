"""fs.lazy.early: hinted prefetch bytes fetched before the TOC is parsed stand in for the registry, never
for verification (real store, real peer layer from the skopeo vector's OCI layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fs.errors import FormatError, VerificationError
from fs.format.hints import PREFETCH_RANGES
from fs.lazy import early as early_mod
from fs.lazy.early import EarlyBudget, EarlyRanges, start_early_fetch
from fs.lazy.fetcher import open_fetcher
from fs.lazy.image import resolve_image
from fs.lazy.layer import LayerDescriptor, open_layer
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.stats import MountStats
from fs.registry import ImageReference, OciLayout
from fs.registry.endpoint import LayoutReader
from fs.store import Store


class CountingClient(LayoutReader):
    """The layout client, counting its range calls; ``gate`` (when set) holds every call until it is set;
    ``fail``: that many calls fail; ``corrupt``: every answer has a byte flipped."""

    def __init__(self, layout: OciLayout) -> None:
        super().__init__(layout)
        self.calls: list[list[tuple[int, int]]] = []
        self.gate: trio.Event | None = None
        self.fail = 0
        self.corrupt = False

    async def get_ranges(self, repo, digest, ranges):
        self.calls.append(list(ranges))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise OSError("connection reset (test)")
        out = await super().get_ranges(repo, digest, ranges)
        return [bytes([d[0] ^ 1]) + d[1:] for d in out] if self.corrupt else out


@pytest.fixture
async def blob(vectors_dir: Path):
    """(client, top layer descriptor of the skopeo vector, its bytes, another layer's digest)."""
    layout = OciLayout(vectors_dir / "skopeo-1.9.3-zstd-chunked")
    client = CountingClient(layout)
    image = await resolve_image(client, ImageReference.parse(f"oci:{layout.path}:features"))
    desc = image.layers[-1]
    data = (await client.get_ranges("", desc.digest, [(0, desc.size)]))[0]
    client.calls.clear()
    return client, desc, data, image.layers[0].digest


def _early(client, desc, ranges) -> EarlyRanges:
    return EarlyRanges(client, "", desc.digest, ranges, stats=MountStats(), budget=EarlyBudget())


async def test_hinted_ranges_are_answered_from_the_early_bytes(blob, monkeypatch):
    client, desc, data, other = blob
    monkeypatch.setattr(early_mod, "PIECE_BYTES", 1000)  # so that one read spans pieces
    early = _early(client, desc, [(100, 2600), (4000, 4500)])
    async with trio.open_nursery() as n:
        n.start_soon(early.run)
        got = await early.get_ranges("", desc.digest, [(150, 2500), (4000, 4500), (2500, 2600)])
        assert got == [data[150:2500], data[4000:4500], data[2500:2600]]
        # 2,500 + 500 bytes in pieces of up to 1,000: the registry saw only those three requests
        assert client.calls == [[(100, 1100)], [(1100, 2100)], [(2100, 2600), (4000, 4500)]]
        # not wholly inside the hint, or another blob: the registry answers
        assert await early.get_ranges("", desc.digest, [(2550, 2700)]) == [data[2550:2700]]
        await early.get_ranges("", other, [(100, 200)])
        assert client.calls[3:] == [[(2550, 2700)], [(100, 200)]]
        early.release()
    # released: everything goes to the registry again
    assert await early.get_ranges("", desc.digest, [(150, 250)]) == [data[150:250]]
    assert client.calls[-1] == [(150, 250)]


async def test_readers_waiting_on_a_dropped_or_failed_piece_go_to_the_registry(blob):
    client, desc, data, _ = blob
    client.gate = trio.Event()
    early = _early(client, desc, [(0, 3000)])
    async with trio.open_nursery() as n:
        n.start_soon(early.run)
        await trio.testing.wait_all_tasks_blocked()
        result: list[bytes] = []

        async def reader() -> None:
            result.extend(await early.get_ranges("", desc.digest, [(10, 20)]))

        n.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        early.release()  # the early request is still held at the gate
        client.gate.set()
    assert result == [data[10:20]] and client.calls[-1] == [(10, 20)]

    client.gate, client.fail = None, 1
    early = _early(client, desc, [(0, 3000)])
    async with trio.open_nursery() as n:
        n.start_soon(early.run)
        assert await early.get_ranges("", desc.digest, [(10, 20)]) == [data[10:20]]
        early.release()
    assert client.calls[-2:] == [[(0, 3000)], [(10, 20)]]


async def test_budget_cuts_hints_and_comes_back_on_release(blob, caplog):
    client, desc, _, _ = blob
    budget = EarlyBudget(5000)
    hinted = LayerDescriptor(desc.media_type, desc.digest, desc.size, {PREFETCH_RANGES: "0-3000,4000-8000"})
    async with trio.open_nursery() as n:
        first = start_early_fetch(n, client, "", hinted, stats=MountStats(), budget=budget)
        assert first is not None and first.hinted_bytes == 5000 and budget.left == 0
        assert start_early_fetch(n, client, "", hinted, stats=MountStats(), budget=budget) is None
        bad = LayerDescriptor(desc.media_type, desc.digest, desc.size, {PREFETCH_RANGES: "8000-4000"})
        assert start_early_fetch(n, client, "", bad, stats=MountStats(), budget=EarlyBudget()) is None
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 1 and "prefetch hint ignored" in warned[0] and desc.digest in warned[0]
        caplog.clear()
        first.release()
        assert budget.left == 5000


async def test_tampered_early_bytes_are_never_served_or_stored(blob, tmp_path):
    client, desc, _, _ = blob
    store = Store.open(tmp_path / "store")
    try:
        layer = await open_layer(client, "", desc, store=store, stats=MountStats(), holder="mount:test",
                                 scratch=tmp_path / "scratch")  # fmt: skip
        client.calls.clear()
        chunks = layer.chunks_by_offset()[:3]
        span = (chunks[0].compressed_offset, chunks[-1].compressed_end)
        client.corrupt = True  # the early bytes are tampered with
        early = _early(client, desc, [span])
        async with trio.open_nursery() as n:
            n.start_soon(early.run)
            layer.use_early(early)
            async with open_fetcher(store, FetchScheduler(), MountStats(), holder="mount:test",
                                    fetch_timeout=10) as fetcher:  # fmt: skip
                with pytest.raises((VerificationError, FormatError)):  # bad frame or bad digest
                    await fetcher.ensure(layer.source, chunks, Priority.PREFETCH)
                assert not any(store.has(c.digest) for c in chunks)
                assert client.calls[0] == [span] and len(client.calls) == 1  # served early, then refused
                layer.drop_early()
                assert layer.early is None and layer.source.client is client
                client.corrupt = False
                got = await fetcher.ensure(layer.source, chunks, Priority.ON_DEMAND)
                assert set(got) == {c.digest for c in chunks}
    finally:
        store.close()
