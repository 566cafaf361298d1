"""RegistryClient's request path against scripted answers (httpx.MockTransport): the cases a real
registry does not produce on demand: 429/503 with back-off, Retry-After, token refresh on 401/403,
403 from expired storage URLs, broken connections mid-body, lying registries. Sleeps use trio's
autojump clock, so back-off costs no wall time."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio

from fs.errors import AuthError, RegistryError, RegistryUnavailable, VerificationError
from fs.registry import Credentials, RetryPolicy, open_registry_client

HOST = "reg.test:5000"
BLOB = bytes(range(256)) * 4096  # 1 MiB
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/demo/app/blobs/{DIGEST}"


def client_for(handler: Callable[[httpx.Request], httpx.Response], **kwargs):
    kwargs.setdefault("retries", RetryPolicy(attempts=4, base_delay=0.5, max_delay=4, total_time=30))
    return open_registry_client(
        HOST, plain_http=True, transport=httpx.MockTransport(handler), docker_config="/nonexistent", **kwargs
    )


def serve_range(request: httpx.Request) -> httpx.Response:
    value = request.headers.get("range")
    if not value:
        return httpx.Response(200, content=BLOB)
    first, last = value.removeprefix("bytes=").split("-")
    start, end = int(first), (int(last) + 1 if last else len(BLOB))
    return httpx.Response(
        206, content=BLOB[start:end], headers={"Content-Range": f"bytes {start}-{end - 1}/{len(BLOB)}"}
    )


async def test_retries_429_and_5xx_with_backoff(autojump_clock) -> None:
    answers = [503, 429, 502]
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(trio.current_time())
        if answers:
            status = answers.pop(0)
            return httpx.Response(status, headers={"Retry-After": "1.5"} if status == 429 else {})
        return serve_range(request)

    async with client_for(handler) as client:
        assert await client.get_ranges("demo/app", DIGEST, [(10, 20)]) == [BLOB[10:20]]
        assert client.statistics().retries == 3
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert 0.25 <= gaps[0] <= 0.5  # first back-off: base_delay with jitter
    assert gaps[1] == pytest.approx(1.5)  # Retry-After honoured
    assert 1.0 <= gaps[2] <= 2.0 + 1e-6  # exponential: 4x base, jittered


async def test_gives_up_after_bounded_attempts(autojump_clock) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(500)

    async with client_for(handler) as client:
        start = trio.current_time()
        with pytest.raises(RegistryUnavailable) as info:
            await client.get_ranges("demo/app", DIGEST, [(0, 1)])
    assert calls == 4 and info.value.status == 500
    assert trio.current_time() - start < 30
    assert HOST in str(info.value) and DIGEST in str(info.value)


async def test_total_time_bounds_retries(autojump_clock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    policy = RetryPolicy(attempts=100, base_delay=1, max_delay=2, total_time=5)
    async with client_for(handler, retries=policy) as client:
        start = trio.current_time()
        with pytest.raises(RegistryUnavailable, match="ConnectError"):
            await client.blob_size("demo/app", DIGEST)
        assert trio.current_time() - start <= 5


async def test_non_retryable_errors_are_immediate() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, content=b"bad")

    async with client_for(handler) as client:
        with pytest.raises(RegistryError) as info:
            await client.get_blob("demo/app", DIGEST)
    assert calls == 1 and info.value.status == 400 and not isinstance(info.value, RegistryUnavailable)


async def test_bearer_refresh_on_403_then_auth_error() -> None:
    tokens = iter(["T1", "T2", "T3", "T4"])
    log: list[tuple[str, str]] = []
    refuse: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        log.append((request.url.host, auth))
        if request.url.host == "auth.test":
            return httpx.Response(200, json={"token": next(tokens), "expires_in": 300})
        if not auth.startswith("Bearer "):
            challenge = 'Bearer realm="http://auth.test/token",service="reg"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        if auth.removeprefix("Bearer ") in refuse:
            return httpx.Response(403)
        return serve_range(request)

    async with client_for(handler, credentials=Credentials("u", "p")) as client:
        assert await client.get_ranges("demo/app", DIGEST, [(0, 4)]) == [BLOB[:4]]  # 401 -> T1
        refuse.add("T1")  # the registry stops accepting T1 (expired early, revoked): 403 -> T2
        assert await client.get_ranges("demo/app", DIGEST, [(0, 4)]) == [BLOB[:4]]
        assert [a for h, a in log if h == "reg.test"] == ["", "Bearer T1", "Bearer T1", "Bearer T2"]
        assert client.statistics().token_requests == 2
        refuse.update({"T2", "T3"})  # credentials revoked: refresh once, then give up
        with pytest.raises(AuthError) as info:
            await client.get_ranges("demo/app", DIGEST, [(0, 4)])
        assert info.value.status == 403
        assert client.statistics().token_requests == 3


async def test_redirect_403_reresolves_once_and_drops_authorization() -> None:
    storage_calls: list[httpx.Request] = []
    expired = {"sig1"}
    signature = iter(["sig1", "sig2", "sig3"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.test":
            storage_calls.append(request)
            if request.url.params["sig"] in expired:
                return httpx.Response(403)
            return serve_range(request)
        if request.headers.get("authorization") != Credentials("u", "p").basic_header():
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(307, headers={"Location": f"http://storage.test/blob?sig={next(signature)}"})

    async with client_for(handler, credentials=Credentials("u", "p")) as client:
        assert await client.get_ranges("demo/app", DIGEST, [(100, 200)]) == [BLOB[100:200]]
        assert client.statistics().reresolves == 1
    assert [r.url.params["sig"] for r in storage_calls] == ["sig1", "sig2"]
    assert all(
        "authorization" not in r.headers and r.headers["range"] == "bytes=100-199" for r in storage_calls
    )


class BrokenStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, break_at: int) -> None:
        self.data, self.break_at = data, break_at

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: self.break_at]
        raise httpx.ReadError("connection reset")


async def test_stream_blob_resumes_after_a_broken_connection(autojump_clock) -> None:
    ranges: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers.get("range"))
        if len(ranges) == 1:
            return httpx.Response(200, stream=BrokenStream(BLOB, 300_000))
        if len(ranges) == 2:  # this one ignores Range: the client must skip what it already has
            return httpx.Response(200, stream=BrokenStream(BLOB, 700_000))
        return serve_range(request)

    async with client_for(handler) as client:
        data = b""
        async with client.stream_blob("demo/app", DIGEST) as chunks:
            async for chunk in chunks:
                data += chunk
    assert data == BLOB
    assert ranges == [None, "bytes=300000-", "bytes=700000-"]


async def test_stream_blob_detects_corruption() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BLOB[:-1] + b"X")

    async with client_for(handler) as client:
        with pytest.raises(VerificationError):
            async with client.stream_blob("demo/app", DIGEST) as chunks:
                async for _ in chunks:
                    pass


class _TrackedBody(httpx.AsyncByteStream):
    """A response body that records whether it was closed (what releases a real connection)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 64 << 10):
            yield self.data[start : start + (64 << 10)]

    async def aclose(self) -> None:
        self.closed = True


async def test_stream_blob_left_early_is_clean() -> None:
    bodies: list[_TrackedBody] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(_TrackedBody(BLOB))
        return httpx.Response(200, stream=bodies[-1])

    async with client_for(handler) as client:
        async with client.stream_blob("demo/app", DIGEST, chunk_size=1000) as chunks:
            async for _ in chunks:
                break
        assert len(bodies) == 1 and bodies[0].closed, "leaving the stream early must release the response"


async def test_manifest_digest_verification() -> None:
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}
    ).encode()
    good = "sha256:" + hashlib.sha256(manifest).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if request.url.path.endswith("/lying"):
            headers["Docker-Content-Digest"] = "sha256:" + "1" * 64
        if request.url.path.endswith("/nocontenttype"):
            headers = {"Content-Type": "application/json"}
        return httpx.Response(200, content=manifest, headers=headers)

    async with client_for(handler) as client:
        assert (await client.get_manifest("demo/app", good)).digest == good
        assert (await client.get_manifest("demo/app", "nocontenttype")).media_type.endswith(
            "manifest.v1+json"
        )
        with pytest.raises(VerificationError):
            await client.get_manifest("demo/app", "sha256:" + "2" * 64)
        with pytest.raises(VerificationError):
            await client.get_manifest("demo/app", "lying")


async def test_range_answer_not_covering_request_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(206, content=b"abc", headers={"Content-Range": f"bytes 0-2/{len(BLOB)}"})

    async with client_for(handler) as client:
        with pytest.raises(RegistryError, match="asked bytes"):
            await client.get_ranges("demo/app", DIGEST, [(5, 10)])


def test_plain_http_defaults() -> None:
    async def main() -> list[str]:
        urls = []
        for host in ("127.0.0.1:5000", "localhost", "[::1]:5000", "ghcr.io", "docker.io"):
            async with open_registry_client(host, docker_config="/nonexistent") as client:
                urls.append(client.base_url)
        return urls

    assert trio.run(main) == [
        "http://127.0.0.1:5000",
        "http://localhost",
        "http://[::1]:5000",
        "https://ghcr.io",
        "https://registry-1.docker.io",
    ]
