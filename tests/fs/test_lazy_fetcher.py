"""ChunkFetcher against the real store and real peer layers (a local OCI layout as the blob source)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from fs.errors import FormatError, RegistryUnavailable, VerificationError
from fs.lazy.fetcher import open_fetcher
from fs.lazy.image import resolve_image
from fs.lazy.layer import OpenedLayer, open_layer
from fs.lazy.readahead import BlobReadahead
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.stats import MountStats
from fs.registry import ImageReference, OciLayout
from fs.registry.endpoint import LayoutReader
from fs.store import Store

HOLDER = "mount:test"


class CountingClient(LayoutReader):
    """The layout client, counting range requests; optionally corrupting or stalling them."""

    def __init__(self, layout: OciLayout) -> None:
        super().__init__(layout)
        self.calls: list[list[tuple[int, int]]] = []
        self.corrupt = False
        self.stall = False
        self.delay = 0.0

    async def get_ranges(self, repo, digest, ranges):
        self.calls.append(list(ranges))
        if self.stall:
            await trio.sleep_forever()
        await trio.sleep(self.delay)
        out = await super().get_ranges(repo, digest, ranges)
        if self.corrupt:
            out = [bytes(b ^ 0x01 if i == len(d) // 2 else b for i, b in enumerate(d)) for d in out]
        return out


@pytest.fixture
async def feat_layer(vectors_dir: Path, tmp_path: Path):
    """(client, store, top layer of the skopeo vector opened lazily)."""
    layout = OciLayout(vectors_dir / "skopeo-1.9.3-zstd-chunked")
    client = CountingClient(layout)
    ref = ImageReference.parse(f"oci:{layout.path}:features")
    image = await resolve_image(client, ref)
    store = Store.open(tmp_path / "store")
    try:
        layer = await open_layer(client, "", image.layers[-1], store=store, stats=MountStats(), holder=HOLDER,
                                 scratch=tmp_path / "scratch")  # fmt: skip
        client.calls.clear()
        yield client, store, layer
    finally:
        store.close()


def _file(layer: OpenedLayer, path: str):
    assert layer.index is not None
    node = layer.index.nodes[path]
    return node, node.chunks


async def test_concurrent_reads_share_one_fetch(feat_layer) -> None:
    client, store, layer = feat_layer
    client.delay = 0.05
    node, chunks = _file(layer, "feat/regular.txt")
    stats = MountStats()
    results: list[bytes] = []
    async with open_fetcher(store, FetchScheduler(), stats, holder=HOLDER, fetch_timeout=5) as fetcher:

        async def read() -> None:
            results.append(await fetcher.read(layer.source, chunks, node.size, 0, 4096))

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(read)
        assert len(client.calls) == 1
        assert all(r == results[0] for r in results) and len(results[0]) == node.size
        assert "sha256:" + hashlib.sha256(results[0]).hexdigest() == node.digest
        assert stats.chunks_verified == 1 and stats.cache_misses == 5
        await fetcher.wait_idle()
        assert store.refs(chunks[0].digest) == {HOLDER}
        # now a hit: no request, served by pread
        assert await fetcher.read(layer.source, chunks, node.size, 10, 5) == results[0][10:15]
        assert len(client.calls) == 1 and stats.cache_hits == 1
    assert store.has(chunks[0].digest) and store.refs(chunks[0].digest) == set()  # released at exit


async def test_multi_chunk_file_with_zeros_and_readahead(feat_layer) -> None:
    client, store, layer = feat_layer
    node, chunks = _file(layer, "feat/sparse-8M")
    assert any(c.zeros for c in chunks) and len(chunks) > 3
    async with open_fetcher(store, FetchScheduler(), MountStats(), holder=HOLDER, fetch_timeout=5) as fetcher:
        data = bytearray()
        for off in range(0, node.size, 1 << 20):
            data += await fetcher.read(layer.source, chunks, node.size, off, 1 << 20)
        assert await fetcher.read(layer.source, chunks, node.size, node.size, 10) == b""
    assert "sha256:" + hashlib.sha256(data).hexdigest() == node.digest
    assert len(client.calls) < len([c for c in chunks if not c.zeros])  # coalesced + read ahead


async def test_bad_bytes_are_never_cached(feat_layer) -> None:
    client, store, layer = feat_layer
    node, chunks = _file(layer, "feat/text-2M")
    stats = MountStats()
    client.corrupt = True
    async with open_fetcher(
        store, FetchScheduler(), stats, holder=HOLDER, fetch_timeout=5, readahead=0
    ) as fetcher:
        with pytest.raises((VerificationError, FormatError)):
            await fetcher.read(layer.source, chunks, node.size, 0, 4096)
        assert not store.has(chunks[0].digest)
        assert stats.verify_failures == 1 or stats.fetch_errors == 0
        client.corrupt = False
        data = await fetcher.read(layer.source, chunks, node.size, 0, 4096)
        await fetcher.wait_idle()
        assert len(data) == 4096 and store.has(chunks[0].digest)


async def test_stalled_registry_times_out_then_recovers(feat_layer) -> None:
    client, store, layer = feat_layer
    node, chunks = _file(layer, "feat/random-3M")
    stats = MountStats()
    client.stall = True
    async with open_fetcher(store, FetchScheduler(), stats, holder=HOLDER, fetch_timeout=0.3) as fetcher:
        t0 = trio.current_time()
        with pytest.raises(RegistryUnavailable):
            await fetcher.read(layer.source, chunks, node.size, 0, 4096)
        assert trio.current_time() - t0 < 1.0
        client.stall = False
        await trio.sleep(0.2)  # the stalled fetch itself gives up at its own deadline
        data = await fetcher.read(layer.source, chunks, node.size, 0, 4096)
        assert len(data) == 4096
    assert stats.fetch_errors >= 1


async def test_on_demand_read_promotes_a_queued_background_fetch(feat_layer) -> None:
    client, store, layer = feat_layer
    a_node, a_chunks = _file(layer, "feat/text-2M")
    b_node, b_chunks = _file(layer, "feat/regular.txt")
    client.delay = 0.6
    sched = FetchScheduler()
    async with open_fetcher(
        store, sched, MountStats(), holder=HOLDER, fetch_timeout=5, readahead=0
    ) as fetcher:
        async with trio.open_nursery() as n:
            n.start_soon(fetcher.read, layer.source, a_chunks, a_node.size, 0, 10)  # on demand, 0.6 s
            await trio.sleep(0.05)
            n.start_soon(fetcher.ensure, layer.source, b_chunks, Priority.BACKGROUND)
            await trio.sleep(0.05)
            assert sched.statistics().waiting == (0, 0, 1)  # background waits for the on-demand fetch
            t0 = trio.current_time()
            data = await fetcher.read(layer.source, b_chunks, b_node.size, 0, 4096)
            elapsed = trio.current_time() - t0
        assert len(data) == b_node.size
        assert elapsed < 0.95  # started at once (promoted), did not wait for the first fetch to end
        assert len(client.calls) == 2  # and was not fetched twice
        assert sched.statistics().granted == (2, 0, 0)


async def test_prefetch_sets_from_landmarks_and_toc_list(vectors_dir: Path, feat_layer) -> None:
    import dataclasses

    _, _, layer = feat_layer
    assert layer.prefetch_chunks() == []  # c/storage layer without a list: nothing marked
    listed = dataclasses.replace(layer.index, prefetch_paths=["feat/text-2M", "feat/empty"])
    marked = dataclasses.replace(layer, index=listed).prefetch_chunks()
    assert {c.digest for c in marked} == {c.digest for c in _file(layer, "feat/text-2M")[1]}
    # ctr-remote layers carry .no.prefetch.landmark: no prefetch at all
    client = LayoutReader(OciLayout(vectors_dir / "ctr-remote-0.12-zstdchunked"))
    image = await resolve_image(client, ImageReference.parse(f"oci:{client.layout.path}:features"))
    top = await open_layer(client, "", image.layers[-1], store=None, stats=MountStats(), holder=HOLDER,
                           scratch=Path("/nonexistent"))  # fmt: skip
    assert top.index is not None and top.index.no_prefetch and top.prefetch_chunks() == []
    assert len(top.chunks_by_offset()) > 0


async def test_the_files_the_runtime_reads_at_create_are_prefetched_without_a_list(
    vectors_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """containerd's CRI reads /etc/passwd and /etc/group of the image while it creates the container: a
    layer that has them prefetches them (and nothing else) though its TOC has no prefetch list; not
    when the image made them implausibly big."""
    import fs.lazy.layer

    client = LayoutReader(OciLayout(vectors_dir / "skopeo-1.9.3-zstd-chunked"))
    image = await resolve_image(client, ImageReference.parse(f"oci:{client.layout.path}:features"))

    async def bottom() -> OpenedLayer:
        return await open_layer(client, "", image.layers[0], store=None, stats=MountStats(), holder=HOLDER,
                                scratch=Path("/nonexistent"))  # fmt: skip

    layer = await bottom()
    assert layer.index is not None and not layer.index.prefetch_paths  # no list in this layer
    passwd, group = (layer.index.nodes[p] for p in ("etc/passwd", "etc/group"))
    assert {c.digest for c in layer.prefetch_chunks()} == {c.digest for c in passwd.chunks + group.chunks}
    monkeypatch.setattr(fs.lazy.layer, "RUNTIME_READ_MAX_SIZE", min(passwd.size, group.size) - 1)
    assert (await bottom()).prefetch_chunks() == []


async def test_store_writes_never_run_on_the_trio_thread(feat_layer) -> None:
    import threading

    from fs.lazy.storeio import StoreIO

    _, store, layer = feat_layer
    trio_thread = threading.get_ident()
    writes: list[tuple[str, int]] = []

    class Recording:
        def __getattr__(self, name):
            attr = getattr(store, name)
            if name in ("put_many", "put_file", "ref", "unref", "drop_holder", "bind_holder"):

                def recorded(*args, **kwargs):
                    writes.append((name, threading.get_ident()))
                    return attr(*args, **kwargs)

                return recorded
            return attr

    rec = Recording()
    sio = StoreIO(rec)
    node, chunks = _file(layer, "feat/text-2M")
    async with open_fetcher(rec, FetchScheduler(), MountStats(), holder=HOLDER, fetch_timeout=5,
                            store_limiter=sio.limiter) as fetcher:  # fmt: skip
        await fetcher.read(layer.source, chunks, node.size, 0, 4096)
        await fetcher.wait_idle()
    await sio.ref(chunks[0].digest, "other")
    await sio.drop_holder("other")
    names = {n for n, _ in writes}
    assert {"put_many", "drop_holder", "ref"} <= names
    assert all(tid != trio_thread for _, tid in writes), writes


async def test_reading_files_in_blob_order_is_read_ahead(feat_layer) -> None:
    """A reader walking the layer's files in blob order (find | xargs sha256sum) needs few requests:
    each window of read-ahead covers the files that follow; the same walk without the layer's chunk list
    (no blob-order read-ahead) needs a request per file or so."""
    client, store, layer = feat_layer
    assert layer.index is not None
    files = [n for _, n in layer.index if n.type == "reg" and n.chunks and not n.chunks[0].zeros]
    files.sort(key=lambda n: n.chunks[0].compressed_offset)
    layer.seal()  # as the host does once the tree is built: the layer keeps its chunks in blob order
    assert len(files) >= 8

    async def walk(fetcher, *, blob_order: bool) -> int:
        client.calls.clear()
        for node in files:
            data = bytearray()
            for off in range(0, node.size, 128 * 1024):  # the kernel's FUSE reads
                if blob_order:
                    data += await layer.read(fetcher, store, node.chunks, node.size, off, 128 * 1024)
                else:
                    data += await fetcher.read(layer.source, node.chunks, node.size, off, 128 * 1024)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == node.digest, node.path
        await fetcher.wait_idle()
        return len(client.calls)

    async with open_fetcher(store, FetchScheduler(), MountStats(), holder=HOLDER, fetch_timeout=5) as fetcher:
        without = await walk(fetcher, blob_order=False)
    store.drop_holder(HOLDER)
    store.gc(max_size=0)
    async with open_fetcher(store, FetchScheduler(), MountStats(), holder=HOLDER, fetch_timeout=5) as fetcher:
        fetcher.blob_ahead = BlobReadahead(min_window=16 * 1024, max_window=1 << 20)
        with_ahead = await walk(fetcher, blob_order=True)
    assert with_ahead * 2 <= without, (with_ahead, without)


async def test_deferred_puts_serve_readers_from_memory_and_store_after_the_window(feat_layer, monkeypatch):
    """While a container starts (defer_puts) verified chunks are not stored: readers find them in memory
    (a hit, no request), the prefetch backlog does not count them, and they are stored when the window
    ends; past the byte cap a put is not held back."""
    from fs.lazy import flights as flights_mod

    client, store, layer = feat_layer
    node, chunks = _file(layer, "feat/regular.txt")
    big, big_chunks = _file(layer, "feat/text-2M")
    stats = MountStats()
    async with open_fetcher(store, FetchScheduler(), stats, holder=HOLDER, fetch_timeout=5,
                            readahead=0) as fetcher:  # fmt: skip
        fetcher.flights.defer_puts(0.5)
        t0 = trio.current_time()
        first = await fetcher.read(layer.source, chunks, node.size, 0, node.size)
        assert "sha256:" + hashlib.sha256(first).hexdigest() == node.digest
        await trio.sleep(0.1)  # long enough for a put, were it not held back
        assert not store.has(chunks[0].digest)
        with trio.fail_after(0.2):  # held, not part of the backlog
            await fetcher.wait_backlog(0)
        hits = stats.cache_hits
        assert await fetcher.read(layer.source, chunks, node.size, 5, 10) == first[5:15]
        assert len(client.calls) == 1 and stats.cache_hits == hits + 1  # from memory
        monkeypatch.setattr(flights_mod, "MAX_DEFERRED_BYTES", 1000)  # over the cap: stored at once
        await fetcher.read(layer.source, big_chunks, big.size, 0, 4096)
        with trio.fail_after(0.3):
            while not store.has(big_chunks[0].digest):
                await trio.sleep(0.01)
        assert not store.has(chunks[0].digest)
        await fetcher.wait_idle()
        assert trio.current_time() - t0 >= 0.5
        assert store.has(chunks[0].digest) and store.refs(chunks[0].digest) == {HOLDER}
