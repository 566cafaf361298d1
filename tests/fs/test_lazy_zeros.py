"""Zero runs on the read path: the first read of a big one hashes it in a worker thread, never on the trio
(FUSE) thread, and a zeros chunk whose digest is not that of its zero bytes is still refused (EIO)."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import trio

from fs.errors import VerificationError
from fs.format.tree import Chunk
from fs.lazy import decode
from fs.lazy.fetcher import INLINE_ZEROS_HASH, BlobSource, open_fetcher
from fs.lazy.scheduler import FetchScheduler
from fs.lazy.stats import MountStats
from fs.store import Store

MiB = 1 << 20


class NoRegistry:
    """Zero runs are never fetched: any request is a bug."""

    async def get_ranges(self, repository, digest, ranges):
        raise AssertionError(f"zeros were fetched: {ranges}")


SOURCE = BlobSource(client=NoRegistry(), repository="r", digest="sha256:" + "1" * 64, codec="zstd", label="l")


def _zeros(size: int, digest: str | None = None, file_offset: int = 0) -> Chunk:
    digest = digest or "sha256:" + hashlib.sha256(bytes(size)).hexdigest()
    return Chunk(file_offset, size, 0, 0, digest, zeros=True)


@pytest.fixture
def hashing_threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(size, thread id) of every zero run actually hashed."""
    seen: list[tuple[int, int]] = []
    real = decode._hash_zeros

    def recording(size: int) -> str:
        seen.append((size, threading.get_ident()))
        return real(size)

    monkeypatch.setattr(decode, "_hash_zeros", recording)
    monkeypatch.setattr(decode, "_ZEROS_DIGESTS", {})  # nothing cached from other tests
    return seen


async def test_big_zero_run_is_hashed_off_the_trio_thread_once(tmp_path: Path, hashing_threads) -> None:
    size = 8 * MiB + 3
    chunks = [_zeros(size)]
    trio_thread = threading.get_ident()
    with Store.open(tmp_path / "store") as store:
        async with open_fetcher(store, FetchScheduler(), MountStats(), holder="mount:t") as fetcher:
            async with trio.open_nursery() as n:  # several first readers: one hash
                for off in (0, MiB, size - 10):
                    n.start_soon(fetcher.read, SOURCE, chunks, size, off, 4096)
            assert await fetcher.read(SOURCE, chunks, size, size - 5, 4096) == bytes(5)
    assert [s for s, _ in hashing_threads] == [size]
    assert all(thread != trio_thread for _, thread in hashing_threads)


async def test_small_zero_run_is_hashed_inline(tmp_path: Path, hashing_threads) -> None:
    size = INLINE_ZEROS_HASH
    with Store.open(tmp_path / "store") as store:
        async with open_fetcher(store, FetchScheduler(), MountStats(), holder="mount:t") as fetcher:
            assert await fetcher.read(SOURCE, [_zeros(size)], size, 0, size) == bytes(size)
    assert hashing_threads == [(size, threading.get_ident())]


@pytest.mark.parametrize("size", [1000, 4 * MiB])  # hashed inline / in a thread
async def test_zeros_chunk_with_a_wrong_digest_is_refused(tmp_path: Path, hashing_threads, size: int) -> None:
    lie = _zeros(size, digest="sha256:" + hashlib.sha256(b"x" * size).hexdigest())
    honest = _zeros(size, file_offset=size)
    with Store.open(tmp_path / "store") as store:
        async with open_fetcher(store, FetchScheduler(), MountStats(), holder="mount:t") as fetcher:
            for _ in range(2):  # refused the first time (digest just hashed) and when it is cached
                with pytest.raises(VerificationError, match="zero bytes"):
                    await fetcher.read(SOURCE, [lie, honest], 2 * size, 0, 2 * size)
            assert await fetcher.read(SOURCE, [lie, honest], 2 * size, size, size) == bytes(size)
    assert [s for s, _ in hashing_threads] == [size]
