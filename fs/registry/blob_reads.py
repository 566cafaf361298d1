"""Reading blobs: whole-blob streams (resumed after a broken connection) and byte ranges.

:class:`BlobReads` is mixed into :class:`~fs.registry.client.RegistryClient`. Range quirks are learned per
registry host and remembered for the life of the process (:func:`range_support`): a registry that answers
a multi-range request with 400/416/501 or with a whole 200 body gets one request per range from then on,
and one that ignores ``Range`` altogether gets a single whole-body GET per call, from which only the
wanted bytes are kept (memory stays proportional to what was asked for).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import trio

from fs.digest import Hasher
from fs.errors import RegistryError, VerificationError

from .auth import repository_scope as _scope
from .http import IDENTITY, TransientError, map_httpx_errors, response_body, unexpected_status
from .ranges import (
    ByteRange,
    RangePart,
    SliceCollector,
    batch_ranges,
    coalesce,
    extract,
    parse_content_range,
    parse_multipart_byteranges,
    range_header,
    suffix_range_header,
    validate_ranges,
)
from .session import RegistrySession

__all__ = ["BlobReads", "RangeSupport", "range_support"]

log = logging.getLogger(__name__)

RANGE_CONCURRENCY = 8


@dataclasses.dataclass
class RangeSupport:
    """What a registry was seen to do with ``Range`` (starts optimistic, only ever downgraded)."""

    multi_range: bool = True
    ranges: bool = True


_RANGE_SUPPORT: dict[str, RangeSupport] = {}


def range_support(registry: str) -> RangeSupport:
    """The process-wide, learned range behaviour of ``registry`` (``host[:port]``)."""
    return _RANGE_SUPPORT.setdefault(registry, RangeSupport())


def _check_resumed(response: httpx.Response, offset: int, what: str) -> None:
    """A resumed stream must answer 200 (whole body, skipped) or 206 from exactly ``offset``."""
    if response.status_code == 200:
        return
    if response.status_code == 206:
        got = parse_content_range(response.headers.get("content-range", ""))
        if got.start == offset:
            return
    raise unexpected_status(response, what)


class BlobReads:
    """Blob GETs and the URL helpers, for :class:`~fs.registry.client.RegistryClient`."""

    registry: str
    base_url: str
    session: RegistrySession

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{ref}"

    def _what(self, repo: str, kind: str, ref: str) -> str:
        return f"{kind} {ref} in {repo}"

    def _get(
        self, url: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> Callable[[], httpx.Request]:
        build = self.session.client.build_request
        return lambda: build(method, url, headers=headers)

    @property
    def ranges(self) -> RangeSupport:
        """What this registry was seen to do with ``Range`` (shared process-wide)."""
        return range_support(self.registry)

    @contextlib.asynccontextmanager
    async def stream_blob(
        self, repo: str, digest: str, *, verify: bool = True, chunk_size: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a whole blob: ``async with client.stream_blob(r, d) as chunks: async for b in chunks``.

        A connection that breaks mid-body is resumed with ``Range: bytes=<offset>-`` (bounded by the retry
        policy). With ``verify`` the digest is checked after the last byte: the iterator raises
        :class:`VerificationError` instead of finishing, so publish nothing before it has finished.
        The response is closed when the ``async with`` block exits. ``chunk_size`` = None yields pieces
        as they arrive from the network.
        """
        what = self._what(repo, "blob", digest)
        url = self._url(repo, "blobs", digest)

        async def chunks() -> AsyncIterator[bytes]:
            hasher = Hasher()
            offset = skip = 0
            response = await self.session.open(self._get(url, IDENTITY), what=what, scopes=(_scope(repo),))
            try:
                if response.status_code != 200:
                    raise unexpected_status(response, what)
                async for attempt in self.session.retry.tries(
                    what=f"stream of {what} at {self.registry}",
                    retry_on=TransientError,
                    give_up=self.session.give_up,
                    on_retry=self.session.count_retry,
                ):
                    with attempt:
                        if attempt.number > 1:  # the connection broke off: resume where it stopped
                            await response.aclose()
                            log.info("resuming %s at byte %d", what, offset)
                            headers = {**IDENTITY, "Range": f"bytes={offset}-"}
                            response = await self.session.open(
                                self._get(url, headers), what=what, scopes=(_scope(repo),)
                            )
                            _check_resumed(response, offset, what)
                            skip = offset if response.status_code == 200 else 0
                        with map_httpx_errors(f"{self.registry}: {what}"):
                            async with response_body(response, chunk_size) as body:
                                async for data in body:
                                    if skip:  # a resume answered 200: drop what we already have
                                        cut = min(skip, len(data))
                                        data, skip = data[cut:], skip - cut
                                        if not data:
                                            continue
                                    if verify:  # else the caller hashes (fetch_blob, as it writes)
                                        hasher.update(data)
                                    offset += len(data)
                                    yield data
            finally:
                await response.aclose()
            if verify and hasher.digest() != digest:
                raise VerificationError(
                    f"{what} at {self.registry} does not hash to its digest ({offset} bytes)"
                )

        iterator = chunks()
        try:
            yield iterator
        finally:
            await iterator.aclose()  # type: ignore[attr-defined]

    # -- ranges -------------------------------------------------------------------------------------
    async def get_ranges(self, repo: str, digest: str, ranges: Sequence[ByteRange]) -> list[bytes]:
        """Fetch byte ranges ``[(start, end_exclusive), …]`` of a blob, in the order given.

        Overlapping and adjacent ranges are merged; several ranges go out as one multi-range request
        (batched to keep the header short) unless this registry was seen to refuse that (see
        :func:`range_support`), in which case single-range requests run concurrently. A 200 answer that
        ignores ``Range`` is sliced while it streams. The bytes are NOT verified here.

        Raises:
            ValueError: an empty or negative range.
            NotFoundError, RegistryUnavailable, RegistryError (e.g. 416: a range beyond the blob).
        """
        validate_ranges(ranges)
        if not ranges:
            return []
        merged = [group.range for group in coalesce(ranges)]
        what = self._what(repo, "blob", digest)
        url = self._url(repo, "blobs", digest)
        support = self.ranges
        if not support.ranges:
            parts = await self._fetch_whole(url, merged, what, repo)
        elif len(merged) == 1 or not support.multi_range:
            parts = await self._fetch_singles(url, merged, what, repo)
        else:
            parts = []
            for batch in batch_ranges(merged):
                parts.extend(await self._fetch_multi(url, batch, what, repo))
        return extract(parts, ranges)

    async def get_tail(self, repo: str, digest: str, n: int, size: int | None = None) -> bytes:
        """The last ``n`` bytes of a blob (fewer if it is shorter): an explicit range when ``size`` is
        known, else a suffix range ``bytes=-n``."""
        if size is not None:
            return (await self.get_ranges(repo, digest, [(max(0, size - n), size)]))[0] if size else b""
        what = self._what(repo, "blob", digest)
        headers = {**IDENTITY, "Range": suffix_range_header(n)}

        async def read(response: httpx.Response) -> bytes:
            if response.status_code == 206:
                return await response.aread()
            if response.status_code == 200:
                self._learn_ignores_ranges(what)
                tail = b""
                async with response_body(response) as body:
                    async for chunk in body:
                        tail = (tail + chunk)[-n:]
                return tail
            raise unexpected_status(response, what)

        return await self.session.fetch(
            self._get(self._url(repo, "blobs", digest), headers), read, what=what, scopes=(_scope(repo),)
        )

    def _learn_ignores_ranges(self, what: str) -> None:
        if self.ranges.ranges:
            log.info("%s ignores Range (200 for %s): whole-body reads from now on", self.registry, what)
        self.ranges.ranges = self.ranges.multi_range = False

    async def _collect_200(self, response: httpx.Response, wanted: Sequence[ByteRange]) -> list[RangePart]:
        collector = SliceCollector(wanted)
        async with response_body(response) as body:
            async for chunk in body:
                collector.feed(chunk)
                if collector.done:
                    break
        return [RangePart(start, data) for (start, _), data in zip(wanted, collector.results(), strict=True)]

    async def _fetch_whole(
        self, url: str, wanted: Sequence[ByteRange], what: str, repo: str
    ) -> list[RangePart]:
        async def read(response: httpx.Response) -> list[RangePart]:
            if response.status_code != 200:
                raise unexpected_status(response, what)
            return await self._collect_200(response, wanted)

        return await self.session.fetch(self._get(url, IDENTITY), read, what=what, scopes=(_scope(repo),))

    async def _fetch_single(self, url: str, rng: ByteRange, what: str, repo: str) -> RangePart:
        headers = {**IDENTITY, "Range": range_header([rng])}

        async def read(response: httpx.Response) -> RangePart:
            if response.status_code == 206:
                data = await response.aread()
                got = parse_content_range(response.headers.get("content-range", ""))
                if got.start is None or got.start > rng[0] or got.start + len(data) < rng[1]:
                    raise RegistryError(
                        f"{what}: asked bytes {rng}, got {response.headers.get('content-range')}"
                    )
                return RangePart(got.start, data, got.total)
            if response.status_code == 200:
                self._learn_ignores_ranges(what)
                return (await self._collect_200(response, [rng]))[0]
            if response.status_code == 416:
                raise RegistryError(
                    f"{what}: bytes {rng} are beyond the blob ({response.headers.get('content-range')})",
                    status=416,
                )
            raise unexpected_status(response, what)

        return await self.session.fetch(self._get(url, headers), read, what=what, scopes=(_scope(repo),))

    async def _fetch_singles(
        self, url: str, wanted: Sequence[ByteRange], what: str, repo: str
    ) -> list[RangePart]:
        if len(wanted) == 1:
            return [await self._fetch_single(url, wanted[0], what, repo)]
        results: list[RangePart | None] = [None] * len(wanted)
        limiter = trio.CapacityLimiter(RANGE_CONCURRENCY)

        async def one(i: int, rng: ByteRange) -> None:
            async with limiter:
                results[i] = await self._fetch_single(url, rng, what, repo)

        async with trio.open_nursery() as nursery:
            for i, rng in enumerate(wanted):
                nursery.start_soon(one, i, rng)
        return [part for part in results if part is not None]

    async def _fetch_multi(self, url: str, batch: list[ByteRange], what: str, repo: str) -> list[RangePart]:
        headers = {**IDENTITY, "Range": range_header(batch)}

        async def read(response: httpx.Response) -> list[RangePart] | None:
            status = response.status_code
            if status == 206:
                body = await response.aread()
                content_type = response.headers.get("content-type", "")
                if content_type.lower().startswith("multipart/byteranges"):
                    return parse_multipart_byteranges(body, content_type)
                got = parse_content_range(response.headers.get("content-range", ""))
                if got.start is None:
                    raise RegistryError(f"{what}: 206 without a usable Content-Range")
                return [RangePart(got.start, body, got.total)]  # the server merged our ranges into one
            if status == 200:
                self.ranges.multi_range = False
                log.info(
                    "%s answered a multi-range request with 200: single ranges from now on", self.registry
                )
                return await self._collect_200(response, batch)
            if status in (400, 416, 501):
                self.ranges.multi_range = False
                log.info(
                    "%s refused a multi-range request (%d): single ranges from now on", self.registry, status
                )
                return None
            raise unexpected_status(response, what)

        parts = await self.session.fetch(self._get(url, headers), read, what=what, scopes=(_scope(repo),))
        if parts is None:
            return await self._fetch_singles(url, batch, what, repo)
        return parts
