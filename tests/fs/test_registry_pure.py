"""The I/O-free parts of fs/registry: challenges, credentials, token cache, the auth flow driven by hand,
Range/Content-Range/multipart helpers, coalescing, slice collection, and the OCI layout."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from fs.errors import AuthError, FormatError, NotFoundError, VerificationError
from fs.registry import OciLayout
from fs.registry.auth import (
    TOKEN_SCOPES,
    Credentials,
    RegistryAuth,
    TokenCache,
    credentials_from_docker_config,
    docker_config_path,
    load_docker_config,
    parse_www_authenticate,
    repository_scope,
)
from fs.registry.ranges import (
    RangeGroup,
    RangePart,
    SliceCollector,
    batch_ranges,
    coalesce,
    extract,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    suffix_range_header,
)
from fs.registry.session import RetryPolicy, is_loopback

# -- challenges ---------------------------------------------------------------------------------------


def test_parse_bearer_challenge_with_commas_in_scope() -> None:
    [c] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scopes == ("repository:samalba/my-app:pull,push",)


def test_parse_several_challenges_and_unquoted_values() -> None:
    challenges = parse_www_authenticate(
        ['Basic realm="x y", charset=UTF-8, Bearer realm=http://t/token', "Foo"]
    )
    assert [(c.scheme, dict(c.params)) for c in challenges] == [
        ("basic", {"realm": "x y", "charset": "UTF-8"}),
        ("bearer", {"realm": "http://t/token"}),
        ("foo", {}),
    ]


def test_parse_challenge_escapes_and_multiple_scopes() -> None:
    [c] = parse_www_authenticate(r'Bearer realm="a\"b", scope="repository:a:pull repository:b:pull"')
    assert c.realm == 'a"b'
    assert c.scopes == ("repository:a:pull", "repository:b:pull")


# -- docker config ------------------------------------------------------------------------------------


def test_credentials_from_docker_config_variants() -> None:
    auth = base64.b64encode(b"alice:pa:ss").decode()
    config = {
        "auths": {
            "127.0.0.1:5000": {"auth": auth},
            "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
            "http://other:8080": {"auth": base64.b64encode(b"carol:x").decode()},
        }
    }
    assert credentials_from_docker_config(config, "127.0.0.1:5000") == Credentials("alice", "pa:ss")
    assert credentials_from_docker_config(config, "docker.io") == Credentials("bob", "pw")
    assert credentials_from_docker_config(config, "other:8080") == Credentials("carol", "x")
    assert credentials_from_docker_config(config, "nowhere:1") is None
    assert credentials_from_docker_config({}, "x") is None
    with pytest.raises(AuthError):
        credentials_from_docker_config({"auths": {"h": {"auth": base64.b64encode(b"nocolon").decode()}}}, "h")
    assert "pa:ss" not in repr(Credentials("alice", "pa:ss"))


def test_docker_config_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert docker_config_path(None, {"DOCKER_CONFIG": "/x"}) == Path("/x/config.json")
    assert docker_config_path(None, {"HOME": "/home/u"}) == Path("/home/u/.docker/config.json")
    assert docker_config_path(tmp_path) == tmp_path / "config.json"
    assert load_docker_config(tmp_path) == {}
    (tmp_path / "config.json").write_text('{"auths": {}}')
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert load_docker_config() == {"auths": {}}
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(AuthError):
        load_docker_config(tmp_path)


# -- token cache --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_honours_expiry_per_scope() -> None:
    clock = FakeClock()
    cache = TokenCache(clock)
    cache.put("r", ["repository:a:pull"], "tok-a", 60)
    assert cache.get("r", ["repository:a:pull"]).value == "tok-a"
    assert cache.get("r", ["repository:b:pull"]) is None
    assert cache.get("other", ["repository:a:pull"]) is None
    clock.now += 55  # inside the 10% margin (6 s): treated as expired
    assert cache.get("r", ["repository:a:pull"]) is None
    assert len(cache) == 0
    cache.put("r", ["s2", "s1"], "t", 60)
    assert cache.get("r", ["s1", "s2"]).value == "t"  # order of scopes does not matter
    cache.invalidate("r", ["s1", "s2"])
    assert cache.get("r", ["s1", "s2"]) is None


# -- the auth flow, driven by hand --------------------------------------------------------------------


_OPEN_FLOWS: list = []


async def close_flows() -> None:
    """Close every flow in this task, as httpx does (a flow may hold a scope's lock while it waits)."""
    while _OPEN_FLOWS:
        await _OPEN_FLOWS.pop().aclose()


class Flow:
    """Drives :meth:`RegistryAuth.async_auth_flow` by hand, the way httpx does."""

    def __init__(self, auth: RegistryAuth, request: httpx.Request, scopes: tuple[str, ...] = ()) -> None:
        request.extensions[TOKEN_SCOPES] = scopes
        self.gen = auth.async_auth_flow(request)
        _OPEN_FLOWS.append(self.gen)

    async def start(self) -> httpx.Request:
        return await self.gen.__anext__()

    async def send(self, response: httpx.Response) -> httpx.Request:
        return await self.gen.asend(response)


def _resp(
    status: int, request: httpx.Request, headers: dict | None = None, body: bytes = b""
) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=body, request=request)


BEARER = {"WWW-Authenticate": 'Bearer realm="http://auth/token",service="reg",scope="repository:a:pull"'}


def _token_body(token: str, expires_in: int = 60) -> bytes:
    return json.dumps({"token": token, "expires_in": expires_in}).encode()


async def test_bearer_flow_fetches_caches_and_reuses_token() -> None:
    clock = FakeClock()
    auth = RegistryAuth("reg", Credentials("u", "p"), cache=TokenCache(clock))
    scopes = (repository_scope("a"),)
    request = httpx.Request("GET", "http://reg/v2/a/blobs/x")
    flow = Flow(auth, request, scopes)
    sent = await flow.start()
    assert "authorization" not in sent.headers
    token_request = await flow.send(_resp(401, sent, BEARER))
    assert token_request.extensions.get("zsnap_token_request")
    assert token_request.url.params.get_list("scope") == ["repository:a:pull"]
    assert token_request.url.params["service"] == "reg"
    assert token_request.headers["authorization"] == Credentials("u", "p").basic_header()
    retried = await flow.send(_resp(200, token_request, body=_token_body("T1", 300)))
    assert retried.headers["authorization"] == "Bearer T1"
    with pytest.raises(StopAsyncIteration):
        await flow.send(_resp(200, retried))
    # the next request for the same scope goes out with the cached token, no 401 round trip
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/a/blobs/y"), scopes)
    assert (await flow.start()).headers["authorization"] == "Bearer T1"
    # a new scope: the realm is known, so the token is fetched before the request
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/b/blobs/y"), (repository_scope("b"),))
    first = await flow.start()
    assert first.extensions.get("zsnap_token_request")
    assert "repository:b:pull" in first.url.params.get_list("scope")
    assert (await flow.send(_resp(200, first, body=_token_body("T2")))).headers[
        "authorization"
    ] == "Bearer T2"
    # expiry: after expires_in the cached token is not used
    clock.now += 301
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/a/blobs/z"), scopes)
    assert (await flow.start()).extensions.get("zsnap_token_request")
    assert auth.token_requests == 3
    await close_flows()


async def test_bearer_flow_refreshes_once_on_401_and_on_403() -> None:
    auth = RegistryAuth("reg", None)
    scopes = (repository_scope("a"),)
    auth.scheme, auth.bearer = "bearer", parse_www_authenticate(BEARER["WWW-Authenticate"])[0]
    auth.cache.put("reg", scopes, "OLD", 300)
    for status in (401, 403):
        auth.cache.put("reg", scopes, "OLD", 300)
        flow = Flow(auth, httpx.Request("GET", "http://reg/v2/a/manifests/t"), scopes)
        sent = await flow.start()
        assert sent.headers["authorization"] == "Bearer OLD"
        token_request = await flow.send(_resp(status, sent, BEARER if status == 401 else None))
        assert "authorization" not in token_request.headers  # anonymous
        retried = await flow.send(_resp(200, token_request, body=_token_body("NEW")))
        assert retried.headers["authorization"] == "Bearer NEW"
        with pytest.raises(
            StopAsyncIteration
        ):  # still refused: the flow gives up, the caller raises AuthError
            await flow.send(_resp(status, retried, BEARER))
    await close_flows()


async def test_token_service_refusal_is_auth_error() -> None:
    auth = RegistryAuth("reg", Credentials("u", "wrong"))
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/a/manifests/t"), (repository_scope("a"),))
    sent = await flow.start()
    token_request = await flow.send(_resp(401, sent, BEARER))
    with pytest.raises(AuthError, match="refused"):
        await flow.send(_resp(401, token_request))
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/a/manifests/t"), (repository_scope("a"),))
    token_request = await flow.start()
    with pytest.raises(AuthError, match="no token"):
        await flow.send(_resp(200, token_request, body=b'{"expires_in": 3}'))
    await close_flows()


async def test_basic_flow() -> None:
    auth = RegistryAuth("reg", Credentials("u", "p"))
    flow = Flow(auth, httpx.Request("GET", "http://reg/v2/"))
    sent = await flow.start()
    retried = await flow.send(_resp(401, sent, {"WWW-Authenticate": 'Basic realm="r"'}))
    assert retried.headers["authorization"] == Credentials("u", "p").basic_header()
    with pytest.raises(StopAsyncIteration):
        await flow.send(
            _resp(401, retried, {"WWW-Authenticate": 'Basic realm="r"'})
        )  # wrong password: give up
    # Basic is now known: sent up front
    assert (
        (await Flow(auth, httpx.Request("GET", "http://reg/v2/")).start())
        .headers["authorization"]
        .startswith("Basic")
    )
    # no credentials: nothing to retry with
    flow = Flow(RegistryAuth("reg", None), httpx.Request("GET", "http://reg/v2/"))
    sent = await flow.start()
    with pytest.raises(StopAsyncIteration):
        await flow.send(_resp(401, sent, {"WWW-Authenticate": 'Basic realm="r"'}))
    await close_flows()


# -- ranges -------------------------------------------------------------------------------------------

# captured from distribution 2.8.2: GET feat-a blob (986 bytes) with "Range: bytes=0-9,20-29"
CAPTURED_BOUNDARY = "e5bb0ef7633353065da85b2e9445e29b98353797b2e858e551bccbe38a76"
CAPTURED = (
    b"--e5bb0ef7633353065da85b2e9445e29b98353797b2e858e551bccbe38a76\r\nContent-Range: bytes 0-9/986\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n(\xb5/\xfdD\x08\x00\x03\xe5\x02\r\n"
    b"--e5bb0ef7633353065da85b2e9445e29b98353797b2e858e551bccbe38a76\r\nContent-Range: bytes 20-29/986\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n+ \xb50\xac\x96+%\xf7^\r\n"
    b"--e5bb0ef7633353065da85b2e9445e29b98353797b2e858e551bccbe38a76--\r\n"
)
FEAT_A = "6ce47a4892c7b2baee4b7ba7112255ae80e3ed1e99c912c3427a7b06dd34de33"


def test_parse_captured_multipart(vectors_dir: Path) -> None:
    blob = (vectors_dir / "skopeo-1.9.3-zstd-chunked/blobs/sha256" / FEAT_A).read_bytes()
    parts = parse_multipart_byteranges(CAPTURED, f"multipart/byteranges; boundary={CAPTURED_BOUNDARY}")
    assert [(p.start, p.end, p.total) for p in parts] == [(0, 10, 986), (20, 30, 986)]
    assert [p.data for p in parts] == [blob[0:10], blob[20:30]]
    assert extract(parts, [(22, 25), (0, 10)]) == [blob[22:25], blob[0:10]]
    with pytest.raises(FormatError):
        extract(parts, [(5, 25)])


def test_multipart_with_boundary_inside_data_and_quoted_boundary() -> None:
    data = b"xx--BOUND\r\nyy"
    body = (
        b"--BOUND\r\nContent-Range: bytes 5-17/100\r\n\r\n" + data + b"\r\n--BOUND\r\n"
        b"content-range: bytes 50-50/100\r\n\r\nZ\r\n--BOUND--\r\n"
    )
    parts = parse_multipart_byteranges(body, 'multipart/byteranges; boundary="BOUND"')
    assert [(p.start, p.data) for p in parts] == [(5, data), (50, b"Z")]
    for bad in (body[:40], body.replace(b"content-range", b"x-range")):
        with pytest.raises(FormatError):
            parse_multipart_byteranges(bad, "multipart/byteranges; boundary=BOUND")
    with pytest.raises(FormatError):
        parse_multipart_byteranges(body, "application/octet-stream")


def test_headers_and_content_range() -> None:
    assert range_header([(0, 10), (20, 30)]) == "bytes=0-9,20-29"
    assert suffix_range_header(64) == "bytes=-64"
    assert parse_content_range("bytes 0-99/1088038") == (
        parse_content_range("bytes 0-99/1088038").__class__(0, 100, 1088038)
    )
    cr = parse_content_range("bytes */986")
    assert (cr.start, cr.end, cr.total) == (None, None, 986)
    assert parse_content_range("bytes 5-9/*").total is None
    for bad in ("bytes 9-5/10", "bytes 0-10/10", "items 0-1/2", ""):
        with pytest.raises(FormatError):
            parse_content_range(bad)
    for bad_ranges in ([], [(5, 5)], [(-1, 3)]):
        with pytest.raises(ValueError):
            range_header(bad_ranges)


def _groups(groups: list[RangeGroup]) -> list[tuple[int, int, list[int]]]:
    return [(g.start, g.end, g.members) for g in groups]


def test_coalesce() -> None:
    assert [g.range for g in coalesce([(20, 30), (0, 10), (10, 15), (5, 8)])] == [(0, 15), (20, 30)]
    assert [g.range for g in coalesce([(0, 10), (14, 20)], max_gap=4)] == [(0, 20)]
    assert [g.range for g in coalesce([(0, 10), (14, 20)], max_gap=3)] == [(0, 10), (14, 20)]
    assert [g.range for g in coalesce([(0, 10), (10, 20), (20, 30)], max_size=20)] == [(0, 20), (20, 30)]
    # members: which input ranges each group serves
    spans = [(0, 100), (100, 200), (250, 300), (10_000, 10_100)]
    assert _groups(coalesce(spans, max_gap=50, max_size=1 << 20)) == [
        (0, 300, [0, 1, 2]),
        (10_000, 10_100, [3]),
    ]
    # a range bigger than max_size stays whole
    spans = [(0, 600), (600, 1200), (1200, 1300), (1300, 5000)]
    assert _groups(coalesce(spans, max_size=1000)) == [(0, 600, [0]), (600, 1300, [1, 2]), (1300, 5000, [3])]
    # overlapping and identical ranges merge even past max_size; unsorted input
    spans = [(500, 900), (0, 100), (500, 900), (80, 150)]
    assert _groups(coalesce(spans, max_size=10)) == [(0, 150, [1, 3]), (500, 900, [0, 2])]
    assert coalesce([]) == []
    with pytest.raises(ValueError):
        coalesce([(10, 5)])
    with pytest.raises(ValueError):
        coalesce([(-1, 5)])


def test_batches() -> None:
    ranges = [(i * 100, i * 100 + 10) for i in range(200)]
    batches = batch_ranges(ranges, max_ranges=64)
    assert [len(b) for b in batches] == [64, 64, 64, 8]
    assert [r for b in batches for r in b] == ranges
    assert all(len(range_header(b)) <= 300 for b in batch_ranges(ranges, max_header=300))


def test_slice_collector() -> None:
    body = bytes(range(256)) * 4
    collector = SliceCollector([(1000, 1024), (3, 7), (250, 260)])
    for i in range(0, len(body), 100):
        collector.feed(body[i : i + 100])
    assert collector.done
    assert collector.results() == [body[1000:1024], body[3:7], body[250:260]]
    short = SliceCollector([(0, 10)])
    short.feed(b"abc")
    assert not short.done
    with pytest.raises(FormatError):
        short.results()
    assert RangePart(5, b"abc").end == 8


# -- policy and helpers -------------------------------------------------------------------------------


def test_retry_policy_delays_are_bounded_and_jittered() -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=1.0)
    for retry in range(1, 8):
        delay = policy.delay(retry)
        cap = min(1.0, 0.1 * 2 ** (retry - 1))
        assert cap / 2 <= delay <= cap
    assert policy.delay(1, retry_after=0.7) == 0.7
    assert policy.delay(1, retry_after=60) <= 0.1  # an absurd Retry-After is not obeyed


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:80", True), ("[::1]:5000", True),
     ("::1", True), ("10.0.0.1:5000", False), ("ghcr.io", False), ("docker.io", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- OCI layout ---------------------------------------------------------------------------------------


def test_oci_layout_reads_the_shared_vectors(vectors_dir: Path) -> None:
    layout = OciLayout(vectors_dir / "skopeo-1.9.3-zstd-chunked")
    assert layout.exists()
    assert layout.tags() == ["features"]
    desc = layout.resolve("features")
    assert desc["digest"] == "sha256:099535181a8140d836ed80aeb52e237a374a7169620e677676997723712aeee1"
    assert layout.resolve(None) == desc == layout.resolve("@0")
    manifest = json.loads(layout.read_blob(desc["digest"]))
    assert len(manifest["layers"]) == 3
    assert layout.has_blob(manifest["config"]["digest"])
    with pytest.raises(NotFoundError):
        layout.resolve("nope")
    with pytest.raises(NotFoundError):
        layout.resolve("@3")
    with pytest.raises(NotFoundError):
        layout.read_blob("sha256:" + "0" * 64)


def test_oci_layout_writes_atomically_and_verifies(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path / "out")
    assert not layout.exists() and layout.tags() == []
    digest = layout.write_blob(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert json.loads((tmp_path / "out" / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    with pytest.raises(VerificationError):
        layout.write_blob(b"hello", "sha256:" + "1" * 64)
    source = tmp_path / "src"
    source.write_bytes(b"x" * 3_000_000)
    big = layout.write_blob_from_file(source, "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest())
    assert layout.blob_size(big) == 3_000_000
    with pytest.raises(VerificationError):
        layout.write_blob_from_file(source, "sha256:" + "2" * 64)
    assert not [p for p in (tmp_path / "out/blobs/sha256").iterdir() if p.name.startswith(".tmp-")]
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 5}
    layout.set_tag("v1", desc)
    layout.set_tag("v2", desc)
    layout.set_tag("v1", {**desc, "annotations": {"x": "y"}})
    assert layout.tags() == ["v2", "v1"]
    assert layout.resolve("v1")["annotations"] == {"x": "y", "org.opencontainers.image.ref.name": "v1"}
    assert layout.read_blob(digest) == b"hello"
    with pytest.raises(FormatError):
        layout.set_tag("bad", {"digest": digest})
    with pytest.raises(FormatError):
        layout.blob_path("sha256:XYZ")


def test_one_verifying_tls_context_is_shared_by_every_client() -> None:
    import ssl

    from fs.registry.http import shared_ssl_context, warm_up

    warm_up()
    ctx = shared_ssl_context()
    assert ctx is shared_ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # sharing must not weaken TLS
    assert ctx.cert_store_stats()["x509_ca"] > 0  # a CA bundle is loaded
