"""Registry authentication as an :class:`httpx.Auth`: challenges, docker credentials, Bearer tokens.

:class:`RegistryAuth` is installed as the ``auth`` of the registry's ``httpx.AsyncClient``; httpx drives its
:meth:`~RegistryAuth.async_auth_flow` for every request (and follows redirects underneath it, dropping
``Authorization`` across origins). A request names the token scopes it needs in its
``zsnap_token_scopes`` extension (:data:`TOKEN_SCOPES`). One flow, per request:

1. add what is already known: Basic credentials if the registry asked for Basic before, or a cached
   Bearer token for the request's scopes (when the registry's token realm is known but there is no valid
   token for these scopes yet, fetch one first instead of waiting for a 401);
2. send; on ``401`` read ``WWW-Authenticate``: ``Basic`` -> retry once with credentials; ``Bearer`` ->
   ``GET realm?service=…&scope=…`` (with Basic credentials when there are any), cache the token for
   ``expires_in`` (default 60 s) and retry once; a ``403`` to a Bearer token refreshes it once too;
3. a request whose streamed body is already consumed (an upload's PATCH) cannot be sent again: the flow
   forgets the refused token and hands the 401/403 back, and the caller restarts the upload.

Token fetches for one scope set are serialized by a trio lock, so a burst of requests needing the same
token fetches it once. Answers that came from another origin (a redirect to blob storage) are not the
registry's to judge credentials by and are handed back untouched.

Basic credentials come from docker's ``config.json`` (:mod:`fs.registry.credentials`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Mapping

import httpx
import trio

from fs.errors import AuthError

from .credentials import Credentials, credentials_from_docker_config, docker_config_path, load_docker_config
from .http import TransientError, is_replayable, map_httpx_errors, retry_after

__all__ = [
    "TOKEN_SCOPES",
    "Challenge",
    "Credentials",
    "RegistryAuth",
    "Token",
    "TokenCache",
    "credentials_from_docker_config",
    "docker_config_path",
    "load_docker_config",
    "parse_www_authenticate",
    "repository_scope",
]

log = logging.getLogger(__name__)

TOKEN_REQUEST = "zsnap_token_request"
TOKEN_SCOPES = "zsnap_token_scopes"
DEFAULT_EXPIRES_IN = 60.0


# -- challenges -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lower-cased, ``params`` keys lower-cased."""

    scheme: str
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


def _tokenize(value: str) -> Iterable[tuple[str, str | None]]:
    """Yield ``(token, None)`` for bare tokens and ``(key, value)`` for ``key=value`` / ``key="v"``."""
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        while i < n and value[i] not in " \t,=":
            i += 1
        token = value[start:i]
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == "=":
            i += 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1
                yield token, "".join(chars)
            else:
                start = i
                while i < n and value[i] not in " \t,":
                    i += 1
                yield token, value[start:i]
        elif token:
            yield token, None


def parse_www_authenticate(values: str | Iterable[str]) -> list[Challenge]:
    """Parse one or more ``WWW-Authenticate`` header values into challenges (unknown schemes kept)."""
    if isinstance(values, str):
        values = [values]
    challenges: list[Challenge] = []
    for value in values:
        scheme: str | None = None
        params: dict[str, str] = {}
        for key, val in _tokenize(value):
            if val is None:
                if scheme is not None:
                    challenges.append(Challenge(scheme, params))
                scheme, params = key.lower(), {}
            elif scheme is not None:
                params[key.lower()] = val
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
    return challenges


def repository_scope(repository: str, *, push: bool = False) -> str:
    """The token scope for a repository: ``repository:<name>:pull`` or ``…:pull,push``."""
    return f"repository:{repository}:{'pull,push' if push else 'pull'}"


# -- tokens -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Token:
    value: str = dataclasses.field(repr=False)
    expires_at: float  # on the cache's clock

    def valid(self, now: float, lifetime: float) -> bool:
        """Still usable, keeping a margin of a tenth of its lifetime (at most 30 s)."""
        return now < self.expires_at - min(30.0, lifetime / 10)


class TokenCache:
    """Bearer tokens per ``(registry, scopes)``, honouring ``expires_in`` on an injectable clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tokens: dict[tuple[str, str], tuple[Token, float]] = {}

    def get(self, registry: str, scopes: Iterable[str]) -> Token | None:
        key = (registry, " ".join(sorted(scopes)))
        entry = self._tokens.get(key)
        if entry is None:
            return None
        token, lifetime = entry
        if token.valid(self.clock(), lifetime):
            return token
        del self._tokens[key]
        return None

    def put(self, registry: str, scopes: Iterable[str], value: str, expires_in: float) -> Token:
        token = Token(value, self.clock() + expires_in)
        self._tokens[(registry, " ".join(sorted(scopes)))] = (token, expires_in)
        return token

    def invalidate(self, registry: str, scopes: Iterable[str], value: str | None = None) -> None:
        """Drop the token for these scopes (only if it is ``value``, when given: a token that another
        task has fetched meanwhile stays)."""
        key = (registry, " ".join(sorted(scopes)))
        entry = self._tokens.get(key)
        if entry is not None and (value is None or entry[0].value == value):
            del self._tokens[key]

    def __len__(self) -> int:
        return len(self._tokens)


def parse_token_response(status: int, body: bytes, realm: str) -> tuple[str, float]:
    """``(token, expires_in)`` from a token endpoint's answer.

    Raises:
        AuthError: refused, or no token in the answer.
    """
    if status in (401, 403):
        raise AuthError(f"token service {realm} refused the credentials", status=status)
    if status != 200:
        raise AuthError(f"token service {realm} answered {status}", status=status)
    try:
        data = json.loads(body)
        token = data.get("token") or data.get("access_token")
        expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (ValueError, AttributeError, TypeError) as exc:
        raise AuthError(f"token service {realm} sent an unreadable answer") from exc
    if not token or not isinstance(token, str):
        raise AuthError(f"token service {realm} sent no token")
    return token, max(expires_in, 1.0)


# -- the flow ---------------------------------------------------------------------------------------
def _scope_key(scopes: Iterable[str]) -> str:
    return " ".join(sorted(scopes))


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class RegistryAuth(httpx.Auth):
    """Authentication for one registry: what scheme it wants, its token realm, cached tokens.

    Args:
        registry: ``host[:port]``, the cache namespace.
        credentials: Basic credentials (also sent to the token realm), or ``None`` for anonymous.
        cache: token cache (give one with a fake clock in tests).
    """

    def __init__(
        self, registry: str, credentials: Credentials | None = None, *, cache: TokenCache | None = None
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.cache = cache if cache is not None else TokenCache()
        self.scheme: str | None = None
        self.bearer: Challenge | None = None  # last Bearer challenge seen (realm, service)
        self.token_requests = 0
        self._locks: dict[str, trio.Lock] = {}

    def token_request(self, challenge: Challenge, scopes: Iterable[str]) -> httpx.Request:
        """The ``GET realm?service=…&scope=…`` request for ``scopes`` plus the challenge's own scopes."""
        if not challenge.realm:
            raise AuthError(f"{self.registry} sent a Bearer challenge without a realm")
        wanted = list(dict.fromkeys([*challenge.scopes, *scopes]))
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", scope) for scope in wanted)
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        request = httpx.Request("GET", challenge.realm, params=tuple(params), headers=headers)
        request.extensions[TOKEN_REQUEST] = True
        return request

    async def _store_token(
        self, response: httpx.Response, challenge: Challenge, scopes: tuple[str, ...]
    ) -> str:
        with map_httpx_errors(f"token service for {self.registry}"):
            body = await response.aread()
        status = response.status_code
        if status == 429 or (status >= 500 and status not in (501, 505)):
            raise TransientError(
                f"token service {response.request.url.host} answered {status}",
                status=status,
                retry_after=retry_after(response),
            )
        token, expires_in = parse_token_response(status, body, challenge.realm or "")
        self.cache.put(self.registry, scopes, token, expires_in)
        return token

    def _lock(self, scopes: tuple[str, ...]) -> trio.Lock:
        return self._locks.setdefault(_scope_key(scopes), trio.Lock())

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("RegistryAuth serves httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Authenticate ``request`` (see the module docstring).

        Raises:
            AuthError: the token service refused or answered nonsense.
            TransientError: the token service is failing (429/5xx).
        """
        scopes = tuple(request.extensions.get(TOKEN_SCOPES, ()))
        sent_token: str | None = None
        if self.scheme == "basic" and self.credentials is not None:
            request.headers["Authorization"] = self.credentials.basic_header()
        elif self.scheme == "bearer" and self.bearer is not None:
            token = self.cache.get(self.registry, scopes)
            if token is None:
                async with self._lock(scopes):  # one fetch per scope set; the others find it cached
                    token = self.cache.get(self.registry, scopes)
                    if token is None:
                        self.token_requests += 1
                        answer = yield self.token_request(self.bearer, scopes)
                        value = await self._store_token(answer, self.bearer, scopes)
                    else:
                        value = token.value
            else:
                value = token.value
            request.headers["Authorization"] = f"Bearer {value}"
            sent_token = value
        response = yield request

        if response.status_code not in (401, 403) or not _same_origin(response.request.url, request.url):
            return  # fine, or not the registry's answer (a redirect to storage)
        if response.status_code == 401:
            challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
            by_scheme = {c.scheme: c for c in challenges}
            if "bearer" in by_scheme:
                challenge = by_scheme["bearer"]
            elif "basic" in by_scheme and self.credentials is not None and self.scheme != "basic":
                self.scheme = "basic"
                if is_replayable(request):
                    request.headers["Authorization"] = self.credentials.basic_header()
                    yield request
                return
            else:
                return
        elif sent_token is not None and self.bearer is not None:
            challenge = self.bearer
        else:
            return
        self.scheme, self.bearer = "bearer", challenge
        if not is_replayable(request):  # the body is gone: forget the token, let the caller start over
            if sent_token is not None:
                self.cache.invalidate(self.registry, scopes, sent_token)
            return
        async with self._lock(scopes):
            token = self.cache.get(self.registry, scopes)
            if token is not None and token.value != sent_token:
                value = token.value  # another task refreshed it meanwhile
            else:
                if sent_token is not None:
                    self.cache.invalidate(self.registry, scopes, sent_token)
                self.token_requests += 1
                answer = yield self.token_request(challenge, scopes)
                value = await self._store_token(answer, challenge, scopes)
        request.headers["Authorization"] = f"Bearer {value}"
        yield request
