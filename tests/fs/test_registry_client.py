"""RegistryClient against the real distribution registry (and nginx fronts for the quirks)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import time
from pathlib import Path

import httpx
import pytest
import trio

from fs.errors import AuthError, NotFoundError, RegistryError, RegistryUnavailable, VerificationError
from fs.registry import (
    Credentials,
    OciLayout,
    RetryPolicy,
    TokenCache,
    open_registry_client,
    range_support,
)

SKOPEO = "skopeo-1.9.3-zstd-chunked"
MANIFEST = "sha256:099535181a8140d836ed80aeb52e237a374a7169620e677676997723712aeee1"
BIG = "sha256:058cfdd58f8daac15818b18473ff2907d9a38fda1d6eae52bb84a0645867c3ac"  # 4455890 bytes
SMALL = "sha256:6ce47a4892c7b2baee4b7ba7112255ae80e3ed1e99c912c3427a7b06dd34de33"  # 986 bytes
REPO = "demo/features"
MISSING = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def layout(vectors_dir: Path) -> OciLayout:
    return OciLayout(vectors_dir / SKOPEO)


@pytest.fixture(scope="module")
def pushed(registry, layout: OciLayout) -> str:
    assert registry.push_oci_layout(layout.path, f"{REPO}:v1") == MANIFEST
    return registry.host


@pytest.fixture(scope="module")
def big_blob(layout: OciLayout) -> bytes:
    return layout.read_blob(BIG)


def _random_ranges(size: int, count: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        start = rng.randrange(0, size - 1)
        out.append((start, min(size, start + rng.randrange(1, 70_000))))
    return out


# -- manifests and blobs ------------------------------------------------------------------------------


async def test_manifest_by_tag_and_digest(pushed: str, layout: OciLayout) -> None:
    async with open_registry_client(pushed) as client:
        by_tag = await client.get_manifest(REPO, "v1")
        assert by_tag.digest == MANIFEST
        assert by_tag.data == layout.read_blob(MANIFEST)
        assert by_tag.media_type == "application/vnd.oci.image.manifest.v1+json"
        by_digest = await client.get_manifest(REPO, MANIFEST)
        assert by_digest == by_tag
        assert len(by_tag.json()["layers"]) == 3
        assert await client.manifest_digest(REPO, "v1") == MANIFEST
        assert await client.manifest_digest(REPO, "nope") is None
        with pytest.raises(NotFoundError):
            await client.get_manifest(REPO, "nope")
        with pytest.raises(NotFoundError):
            await client.get_manifest("demo/absent", "v1")


async def test_blob_size_and_small_blob(pushed: str, layout: OciLayout) -> None:
    manifest = json.loads(layout.read_blob(MANIFEST))
    async with open_registry_client(pushed) as client:
        for layer in manifest["layers"]:
            assert await client.blob_size(REPO, layer["digest"]) == layer["size"]
        assert await client.blob_size(REPO, MISSING) is None
        config = manifest["config"]["digest"]
        assert await client.get_blob(REPO, config) == layout.read_blob(config)
        with pytest.raises(NotFoundError):
            await client.get_blob(REPO, MISSING)
        with pytest.raises(RegistryError, match="limit"):
            await client.get_blob(REPO, BIG, max_size=1000)


async def test_single_and_multi_ranges(pushed: str, big_blob: bytes) -> None:
    size = len(big_blob)
    async with open_registry_client(pushed) as client:
        assert await client.get_ranges(REPO, BIG, [(0, 100)]) == [big_blob[:100]]
        assert await client.get_ranges(REPO, BIG, []) == []
        wanted = [(size - 64, size), (0, 10), (5, 30), (1_000_000, 1_004_096), (30, 40)]
        before = client.statistics().requests
        got = await client.get_ranges(REPO, BIG, wanted)
        assert got == [big_blob[s:e] for s, e in wanted]
        assert client.statistics().requests - before == 1  # one multi-range request
        many = _random_ranges(size, 150, seed=1)  # more than one Range header's worth
        got = await client.get_ranges(REPO, BIG, many)
        assert got == [big_blob[s:e] for s, e in many]
        assert range_support(pushed).multi_range and range_support(pushed).ranges
        with pytest.raises(RegistryError) as info:
            await client.get_ranges(REPO, BIG, [(size, size + 10)])
        assert info.value.status == 416
        with pytest.raises(NotFoundError):
            await client.get_ranges(REPO, MISSING, [(0, 1)])
        with pytest.raises(ValueError):
            await client.get_ranges(REPO, BIG, [(10, 5)])


async def test_tail(pushed: str, big_blob: bytes) -> None:
    async with open_registry_client(pushed) as client:
        assert await client.get_tail(REPO, BIG, 48) == big_blob[-48:]
        assert await client.get_tail(REPO, BIG, 72, size=len(big_blob)) == big_blob[-72:]
        assert await client.get_tail(REPO, SMALL, 5000) == (await client.get_blob(REPO, SMALL))


async def test_stream_blob(pushed: str, big_blob: bytes) -> None:
    async with open_registry_client(pushed) as client:
        hasher, pieces = hashlib.sha256(), 0
        async with client.stream_blob(REPO, BIG, chunk_size=256 << 10) as chunks:
            async for chunk in chunks:
                hasher.update(chunk)
                pieces += 1
        assert "sha256:" + hasher.hexdigest() == BIG and pieces > 1
        with pytest.raises(NotFoundError):
            async with client.stream_blob(REPO, MISSING) as chunks:
                async for _ in chunks:
                    pass


async def test_stream_blob_left_early_releases_the_connection(pushed: str) -> None:
    transport = httpx.AsyncHTTPTransport()
    pool = transport._pool  # httpcore.AsyncConnectionPool: its ``connections`` are public

    def busy() -> list:
        return [c for c in pool.connections if not (c.is_idle() or c.is_closed())]

    async with open_registry_client(pushed, transport=transport) as client:
        async with client.stream_blob(REPO, BIG, chunk_size=16 << 10) as chunks:
            async for _ in chunks:
                assert len(busy()) == 1  # the body is still being read on it
                break
        assert busy() == [], "leaving the stream early must release (or close) its connection"
        assert await client.get_ranges(REPO, BIG, [(0, 10)])  # the client is still usable


# -- uploads ------------------------------------------------------------------------------------------


async def test_push_blob_upload_skip_mount(pushed: str, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    opened: list[io.BufferedReader] = []

    def open_file() -> io.BufferedReader:
        opened.append(open(path, "rb"))  # noqa: SIM115 - closed by push_blob
        return opened[-1]

    async with open_registry_client(pushed) as client:
        result = await client.push_blob("up/a", digest, len(data), open_file, chunk_size=1 << 20)
        assert result == "uploaded"
        assert all(f.closed for f in opened)
        assert await client.blob_size("up/a", digest) == len(data)
        assert await client.get_ranges("up/a", digest, [(len(data) - 10, len(data))]) == [data[-10:]]
        assert await client.push_blob("up/a", digest, len(data), open_file) == "exists"
        assert await client.push_blob("up/b", digest, len(data), open_file, mount_from="up/a") == "mounted"
        assert await client.blob_size("up/b", digest) == len(data)
        # a mount source that lacks the blob: the registry opens an ordinary upload instead
        assert (
            await client.push_blob("up/c", digest, len(data), open_file, mount_from="up/none") == "uploaded"
        )
        # bytes that do not match the digest are never committed
        other = "sha256:" + hashlib.sha256(b"other").hexdigest()
        with pytest.raises(VerificationError):
            await client.push_blob("up/d", other, len(data), open_file, chunk_size=1 << 20)
        assert await client.blob_size("up/d", other) is None
        empty = "sha256:" + hashlib.sha256(b"").hexdigest()
        assert await client.push_blob("up/d", empty, 0, lambda: io.BytesIO(b"")) == "uploaded"
        assert await client.get_blob("up/d", empty) == b""


class _SlowFile(io.BufferedReader):
    """A file whose reads take ``delay`` seconds each (the uploader reads in a worker thread)."""

    delay = 0.0

    def read(self, n: int | None = -1) -> bytes:
        time.sleep(self.delay)
        return super().read(n)


@pytest.mark.slow
async def test_upload_restarts_when_the_token_expires_mid_upload(token_registry, tmp_path: Path) -> None:
    """A PATCH refused (401) because the Bearer token expired cannot be resent (its streamed body is
    consumed): the upload must start over with a fresh token, not fail with httpx.StreamConsumed."""
    tokens = token_registry.token_server
    data = os.urandom(24 * 128 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    opened: list[_SlowFile] = []

    def open_file() -> _SlowFile:
        slow = _SlowFile(open(path, "rb"))  # noqa: SIM115 - closed by push_blob
        slow.delay = 0.2 if not opened else 0.0  # the first attempt outlives its token
        opened.append(slow)
        return slow

    # Tokens that the registry accepts for 2-3 s more: distribution allows 60 s of clock skew past "exp".
    # The client's token clock stands still (as if it ran behind the registry's), so it keeps sending a
    # token once the registry refuses it.
    cache = TokenCache(clock=lambda: 0.0)
    tokens.expires_in = 3 - 60
    try:
        async with open_registry_client(
            token_registry.host, docker_config=token_registry.docker_config, token_cache=cache
        ) as client:
            before = len(tokens.requests)
            result = await client.push_blob("tok/upload", digest, len(data), open_file, chunk_size=128 * 1024)
            assert result == "uploaded"
            assert len(opened) == 2 and all(f.closed for f in opened)
            assert len(tokens.requests) - before >= 2  # a fresh token for the second attempt
            assert client.statistics().retries >= 1
            got = b""
            async with client.stream_blob("tok/upload", digest) as chunks:
                async for chunk in chunks:
                    got += chunk
            assert got == data
    finally:
        tokens.expires_in = 300


async def test_put_manifest_roundtrip(pushed: str, layout: OciLayout) -> None:
    data = layout.read_blob(MANIFEST)
    manifest = json.loads(data)
    async with open_registry_client(pushed) as client:
        for desc in [manifest["config"], *manifest["layers"]]:
            got = await client.push_blob(
                "copy/features", desc["digest"], desc["size"], lambda: None, mount_from=REPO
            )
            assert got == "mounted"
        digest = await client.put_manifest("copy/features", "v2", data, manifest["mediaType"])
        assert digest == MANIFEST
        assert (await client.get_manifest("copy/features", "v2")).data == data
        broken = json.dumps({**manifest, "config": {**manifest["config"], "digest": MISSING}}).encode()
        with pytest.raises(RegistryError) as info:
            await client.put_manifest("copy/features", "v3", broken, manifest["mediaType"])
        assert info.value.status == 400


# -- auth ---------------------------------------------------------------------------------------------


async def test_basic_auth(auth_registry, layout: OciLayout) -> None:
    auth_registry.push_oci_layout(layout.path, f"{REPO}:v1")
    async with open_registry_client(auth_registry.host, docker_config=auth_registry.docker_config) as client:
        assert (await client.get_manifest(REPO, "v1")).digest == MANIFEST
        assert await client.get_ranges(REPO, SMALL, [(0, 10), (20, 30)]) == [
            layout.read_blob(SMALL)[0:10],
            layout.read_blob(SMALL)[20:30],
        ]
    wrong = Credentials(auth_registry.username, "wrong")
    async with open_registry_client(auth_registry.host, credentials=wrong) as client:
        with pytest.raises(AuthError) as info:
            await client.get_manifest(REPO, "v1")
        assert info.value.status == 401
    async with open_registry_client(auth_registry.host, docker_config="/nonexistent") as client:
        with pytest.raises(AuthError):
            await client.blob_size(REPO, SMALL)


async def test_bearer_token_flow(token_registry, layout: OciLayout, tmp_path: Path) -> None:
    tokens = token_registry.token_server
    token_registry.push_oci_layout(layout.path, f"{REPO}:v1")
    small = layout.read_blob(SMALL)
    async with open_registry_client(
        token_registry.host, docker_config=token_registry.docker_config
    ) as client:
        before = len(tokens.requests)
        assert (await client.get_manifest(REPO, "v1")).digest == MANIFEST
        assert await client.get_ranges(REPO, SMALL, [(0, 10)]) == [small[:10]]
        assert await client.blob_size(REPO, SMALL) == len(small)
        assert len(tokens.requests) - before == 1  # one token, cached for the scope
        user, scopes = tokens.requests[-1]
        assert user == token_registry.username and f"repository:{REPO}:pull" in scopes
        # cross-repository mount needs push on the target and pull on the source: one token for both
        assert (
            await client.push_blob("tok/other", SMALL, len(small), lambda: None, mount_from=REPO) == "mounted"
        )
        assert f"repository:{REPO}:pull" in tokens.requests[-1][1]
        assert "repository:tok/other:pull,push" in tokens.requests[-1][1]
    # a burst of concurrent requests needing the same token fetches it once
    async with open_registry_client(
        token_registry.host, docker_config=token_registry.docker_config
    ) as client:
        before = len(tokens.requests)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(client.get_ranges, REPO, SMALL, [(0, 10)])
        assert len(tokens.requests) - before == 1
        assert client.statistics().token_requests == 1
    # short-lived tokens are refreshed once they expire
    tokens.expires_in = 2
    try:
        async with open_registry_client(
            token_registry.host, docker_config=token_registry.docker_config
        ) as client:
            before = len(tokens.requests)
            await client.blob_size(REPO, SMALL)
            await client.blob_size(REPO, SMALL)
            assert len(tokens.requests) - before == 1
            await trio.sleep(2.0)
            await client.blob_size(REPO, SMALL)
            assert len(tokens.requests) - before == 2
    finally:
        tokens.expires_in = 300
    async with open_registry_client(token_registry.host, docker_config=tmp_path) as client:  # anonymous
        with pytest.raises(AuthError):
            await client.get_manifest(REPO, "v1")
    async with open_registry_client(token_registry.host, credentials=Credentials("zsnap", "bad")) as client:
        with pytest.raises(AuthError, match="refused"):
            await client.get_manifest(REPO, "v1")


# -- quirks via nginx ---------------------------------------------------------------------------------


async def test_redirect_resends_range_without_authorization(
    nginx_front,
    auth_registry,
    layout: OciLayout,
    big_blob: bytes,
) -> None:
    auth_registry.push_oci_layout(layout.path, f"{REPO}:v1")
    creds = Credentials(auth_registry.username, auth_registry.password)
    storage_port = nginx_front.ports["storage"]
    async with open_registry_client(nginx_front.redirect_host, credentials=creds) as client:
        assert (await client.get_manifest(REPO, "v1")).digest == MANIFEST
        assert await client.get_ranges(REPO, BIG, [(5, 4101)]) == [big_blob[5:4101]]
        wanted = [(0, 10), (3_000_000, 3_000_100)]
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
        assert await client.get_tail(REPO, BIG, 64) == big_blob[-64:]
        hasher = hashlib.sha256()
        async with client.stream_blob(REPO, BIG) as chunks:
            async for chunk in chunks:
                hasher.update(chunk)
        assert "sha256:" + hasher.hexdigest() == BIG
        assert client.statistics().redirects >= 4
    storage = nginx_front.access_log(storage_port, uri_contains=BIG, at_least=4)
    assert {line.range for line in storage} >= {"bytes=5-4100", "bytes=0-9,3000000-3000099", "bytes=-64"}
    assert all(line.authorization == "-" and line.status in (200, 206) for line in storage)


async def test_multi_range_refused_falls_back(nginx_front, pushed: str, big_blob: bytes) -> None:
    host = nginx_front.multi501_host
    wanted = [(0, 10), (100, 200), (4_000_000, 4_000_001)]
    async with open_registry_client(host) as client:
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
        assert not range_support(host).multi_range and range_support(host).ranges
        before = client.statistics().requests
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
        assert client.statistics().requests - before == 3  # remembered: straight to single ranges
    lines = nginx_front.access_log(nginx_front.ports["multi501"], uri_contains=BIG, at_least=7)
    statuses = [line.status for line in lines]
    assert statuses.count(501) == 1 and statuses.count(206) == 6


async def test_ranges_ignored_200_is_sliced(nginx_front, pushed: str, big_blob: bytes) -> None:
    host = nginx_front.norange_host
    async with open_registry_client(host) as client:
        assert await client.get_ranges(REPO, BIG, [(1000, 5096)]) == [big_blob[1000:5096]]
        assert not range_support(host).ranges
        wanted = [(0, 10), (2_000_000, 2_000_010), (len(big_blob) - 5, len(big_blob))]
        before = client.statistics().requests
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
        assert client.statistics().requests - before == 1  # one whole-body read for all ranges
        assert await client.get_tail(REPO, BIG, 48) == big_blob[-48:]


async def test_multi_range_answered_200_falls_back_to_single(
    nginx_front, pushed: str, big_blob: bytes
) -> None:
    host = nginx_front.single_host
    wanted = [(0, 10), (3_000_000, 3_000_010)]
    async with open_registry_client(host) as client:
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
        assert not range_support(host).multi_range and range_support(host).ranges
        assert await client.get_ranges(REPO, BIG, wanted) == [big_blob[s:e] for s, e in wanted]
    lines = nginx_front.access_log(nginx_front.ports["single"], uri_contains=BIG, at_least=3)
    assert [line.status for line in lines] == [200, 206, 206]


# -- faults -------------------------------------------------------------------------------------------


async def test_registry_down_then_back(registry_factory, layout: OciLayout, big_blob: bytes) -> None:
    server = registry_factory(name="fault-registry")
    server.push_oci_layout(layout.path, f"{REPO}:v1")
    policy = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.5, total_time=3.0)
    async with open_registry_client(server.host, retries=policy, timeout=2.0, connect_timeout=1.0) as client:
        assert await client.get_ranges(REPO, BIG, [(0, 10)]) == [big_blob[:10]]
        server.stop()
        start = time.monotonic()
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_ranges(REPO, BIG, [(0, 10)])
        assert time.monotonic() - start < 4.0
        message = str(info.value)
        assert server.host in message and BIG in message and REPO in message and "4 attempt" in message
        assert client.statistics().retries >= 3
        server.start()
        assert await client.get_ranges(REPO, BIG, [(0, 10)]) == [big_blob[:10]]
        assert (await client.get_manifest(REPO, "v1")).digest == MANIFEST


# -- numbers ------------------------------------------------------------------------------------------


async def test_latency_and_throughput(pushed: str, big_blob: bytes, record_property) -> None:
    async with open_registry_client(pushed) as client:
        await client.get_ranges(REPO, BIG, [(0, 4096)])
        latencies = []
        cpu = time.process_time()
        for i in range(200):
            start = time.perf_counter()
            await client.get_ranges(REPO, BIG, [(i * 4096, i * 4096 + 4096)])
            latencies.append(time.perf_counter() - start)
        cpu_per_request = (time.process_time() - cpu) / 200
        latencies.sort()
        start, total = time.perf_counter(), 0
        for _ in range(10):
            total += len((await client.get_ranges(REPO, BIG, [(0, 4 << 20)]))[0])
        mb_s = total / (time.perf_counter() - start) / 1e6
    p50 = latencies[len(latencies) // 2]
    record_property("range_4k_p50_us", round(p50 * 1e6))
    record_property("range_4k_cpu_us", round(cpu_per_request * 1e6))
    record_property("range_4m_mb_s", round(mb_s))
    print(f"\n4 KiB range p50 {p50 * 1e6:.0f} us, {cpu_per_request * 1e6:.0f} us CPU; 4 MiB {mb_s:.0f} MB/s")
    assert p50 < 0.25 and mb_s > 20  # sanity only: the machine is shared and noisy
