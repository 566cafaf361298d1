"""Convert one source layer once, however many images, platforms or processes ask for it.

The batch planner (:mod:`converter.convert`) gives every distinct (source digest, options) pair exactly
one :class:`LayerJob`, so within a run a layer named N times is converted once and every user gets the same
result. Across processes the store does the same: the converted blob is the named temp object
``converted/<key>``; the first process to acquire it runs the conversion, the others wait and share the
file. Scratch space is never deleted by a user: each user releases its own claim, and the store deletes the
file when the last claim goes (this is the fix for the ``failed to remove tmp uncompressed layer`` bug:
no task deletes what another still reads; a cancelled task only drops its own claim).

Source blobs from a registry are staged as temp objects ``source/<digest>`` the same way (verified by
digest while they download); blobs in a local OCI layout are read in place (:mod:`converter.staging`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import trio

from converter.cache import CacheRecord, ConversionCache
from converter.manifests import Compression
from converter.output_tap import OutputTap
from converter.placement import location_of, mount_origins, place_recorded
from converter.progress import Reporter
from converter.readahead import Readable, ReadAhead
from converter.scheduling import PriorityLimiter
from converter.source_file import SourceFile
from converter.staging import Staging
from fs.errors import (
    ConversionError,
    error_context,
)
from fs.format import Dialect
from fs.limits import DEFAULT_LIMITS, Limits
from fs.registry.endpoint import Endpoint, RegistryEndpoint
from fs.registry.manifests import Descriptor
from fs.store import Store, free_space_check

__all__ = ["ConvertOptions", "LayerJob", "LayerWorker"]

log = logging.getLogger(__name__)

#: Layer jobs in flight at most, whatever --jobs says. Each may park a worker thread (a download bridged
#: back into trio, or a conversion) while its downloads also need trio's threads for file I/O; trio's
#: default thread limit is 40, so this bound keeps threads available for that I/O.
MAX_LAYERS_IN_FLIGHT = 16


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that changes the bytes a conversion writes (part of the cache key), and the limits.

    ``limits`` bound what a source layer may make the conversion accept (names, sizes); they refuse input
    but never change the bytes written, so they are not part of the cache key.
    """

    dialect: Dialect = Dialect.CSTORAGE
    level: int = 3
    prefetch: tuple[str, ...] = ()
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 22:
            raise ConversionError(f"zstd level must be between 1 and 22, got {self.level}")

    def key_material(self) -> dict[str, object]:
        return {"dialect": self.dialect.value, "level": self.level, "prefetch": list(self.prefetch)}


@dataclass
class LayerJob:
    """One distinct source layer and everyone who needs its converted form."""

    key: str
    source: Endpoint
    layer: Descriptor
    compression: Compression
    expected_diff_id: str | None
    image: str
    destinations: list[Endpoint] = field(default_factory=list)
    result: CacheRecord | None = None
    reused: bool = False  # True when every destination already had the converted blob
    #: Set once the job has queued for its source download (or needs none): the planner admits the next
    #: job only then, so downloads start biggest first, not in trio's scheduling order.
    queued: trio.Event = field(default_factory=trio.Event)


class LayerWorker:
    """Runs :class:`LayerJob`\\ s: stage source, convert (single-flight via the store), push, release."""

    def __init__(
        self,
        store: Store,
        cache: ConversionCache,
        options: ConvertOptions,
        reporter: Reporter,
        *,
        holder: str,
        converters: PriorityLimiter | None = None,
        downloads: PriorityLimiter | None = None,
        stream_uploads: bool = True,
    ) -> None:
        self._store = store
        self._cache = cache
        self._options = options
        self._reporter = reporter
        self._holder = holder
        # Bounds only the CPU-heavy step (decompress + chunk + compress). Downloads and pushes of other
        # layers go on meanwhile, so the network and the cores are busy at the same time. Of the layers
        # waiting for a slot, the biggest gets it first.
        self._converters = converters or PriorityLimiter(1)
        # Source downloads, biggest first too: four downloads sharing the link and the cores all finish
        # late, while the first conversion waits for one of them; one or two at a time let it start early.
        self.staging = Staging(store, holder, downloads or PriorityLimiter(2))
        # Upload a layer to its first registry destination while it is being converted.
        self._stream_uploads = stream_uploads

    async def run(self, job: LayerJob) -> CacheRecord:
        """Make sure every destination of ``job`` has the converted blob; return its record.

        A layer this store's record says was converted before (by any process) is not converted again
        while every destination has the blob or can mount it from a recorded repository; otherwise it is
        converted, streamed to the first registry destination while it is written, and pushed (or
        mounted) to the others from the finished file.

        Raises:
            ConversionError / ZsnapError: naming the image and layer. On cancellation only this task's
            claims on shared temp objects are dropped.
        """
        try:
            return await self._run(job)
        finally:
            job.queued.set()

    async def _run(self, job: LayerJob) -> CacheRecord:
        with error_context(image=job.image, layer=job.layer.digest):
            cached = await trio.to_thread.run_sync(self._cache.get, job.key)
            if cached is not None and await place_recorded(
                job.key, job.destinations, cached, self._cache, self._reporter, job.layer.digest
            ):
                self._reporter.event(
                    "layer reused", layer=_short(job.layer.digest), converted=_short(cached.digest)
                )
                job.result, job.reused = cached, True
                return cached
            async with self._converted(job) as (record, path, pushed):
                for dest in job.destinations:
                    if dest not in pushed:
                        await self._push(job, dest, record, path, pushed)
            job.result = record
            return record

    async def _push(
        self, job: LayerJob, dest: Endpoint, record: CacheRecord, path: Path, pushed: list[Endpoint]
    ) -> None:
        """Push the finished file to ``dest`` (mounted from a repository of the same registry that got it
        in this run or, per the record, in another process, when there is one; the client falls back to
        an upload if the mount does not happen), then record the location."""
        if isinstance(dest, RegistryEndpoint):
            known = [location_of(d) for d in pushed] + list(record.locations)
            origin = next(iter(mount_origins(known, dest)), None)
            if origin is not None:
                dest.mount_sources.setdefault(record.digest, origin)
        await dest.push_blob(record.digest, record.size, path)
        pushed.append(dest)
        await trio.to_thread.run_sync(self._cache.add_location, job.key, location_of(dest))

    @contextlib.asynccontextmanager
    async def _converted(self, job: LayerJob) -> AsyncIterator[tuple[CacheRecord, Path, list[Endpoint]]]:
        """Hold the converted blob of ``job`` (converted here, or by whoever else is converting it);
        yield its record, its file and the destinations it was already uploaded to (streamed)."""
        async with self.staging.streamed_source(job.source, job.layer, on_queued=job.queued.set) as source:
            needed = _output_estimate(job)
            await trio.to_thread.run_sync(free_space_check, self._store.root, needed)
            # A worker thread cannot be killed: if this task is cancelled while it produces, the flag
            # makes the writer stop at its next progress report instead of converting to the end.
            stop = threading.Event()
            stream_to = next((d for d in job.destinations if isinstance(d, RegistryEndpoint)), None)
            tap = OutputTap() if stream_to is not None and self._stream_uploads else None
            pushed: list[Endpoint] = []
            failure: Exception | None = None
            try:
                async with contextlib.AsyncExitStack() as stack:
                    async with trio.open_nursery() as nursery:
                        if tap is not None:
                            assert stream_to is not None
                            nursery.start_soon(self._stream_upload, job, stream_to, tap, pushed)
                        try:
                            path = await stack.enter_async_context(
                                self.staging.acquired(
                                    f"converted/{job.key}",
                                    lambda path: self._produce(job, source, path, stop, tap),
                                    limiter=self._converters,
                                    priority=job.layer.size,
                                )
                            )
                        except Exception as exc:  # raised below as itself, not in an ExceptionGroup
                            failure = exc
                        finally:
                            # Not produced here, or failed: the upload stops at its next step and
                            # cancels its session. Not cancelled mid-PATCH: the registry would then
                            # hold bytes the session's last known state does not, and refuse the DELETE.
                            if tap is not None:
                                tap.close("another process converted it")
                    if failure is not None:
                        raise failure
                    record = await trio.to_thread.run_sync(self._cache.get, job.key)
                    if record is None:  # the producer writes the record after the blob, before finishing
                        raise ConversionError("converted layer has no cache record")
                    yield record, path, pushed
            finally:
                stop.set()

    async def _stream_upload(
        self, job: LayerJob, dest: RegistryEndpoint, tap: OutputTap, pushed: list[Endpoint]
    ) -> None:
        """Upload the blob while it is written. Never fails the job: the finished file is pushed the
        ordinary way (with retries) when streaming did not work out."""
        try:
            digest, size = await dest.push_growing(tap)
            committed = await dest.has_blob(digest)
        except Exception as exc:  # a fallback exists; the job's own errors surface there
            log.info("layer %s: streamed upload to %s gave up (%s)", _short(job.layer.digest), dest.ref, exc)
            return
        if committed:
            pushed.append(dest)
            await trio.to_thread.run_sync(self._cache.add_location, job.key, location_of(dest))
            self._reporter.event(
                "layer streamed", layer=_short(job.layer.digest), to=str(dest.ref), size=size
            )

    def _produce(
        self, job: LayerJob, source: SourceFile, out_path: Path, stop: threading.Event, tap: OutputTap | None
    ) -> None:
        """Runs in a worker thread: decompress the source (maybe as it downloads) and write the
        zstd:chunked blob (through ``tap`` when an upload follows the writing). Nothing is recorded or
        committed before the source verified."""
        from converter.chunked import write_zstd_chunked

        label = _short(job.layer.digest)
        self._reporter.layer_started(job.key, label, job.layer.size)

        def progress(bytes_in: int, bytes_out: int) -> None:
            if stop.is_set():
                raise ConversionError("conversion cancelled")
            self._reporter.layer_progress(job.key, raw.tell(), bytes_out)

        def reopen() -> BinaryIO:
            # The stargz writer with a prefetch list reads the source twice (prioritized files first).
            return _open_decompressed(source.open(), job.compression)

        try:
            # Not fsynced: a temp object does not outlive a crash of its producer (the store deletes it).
            with (
                source.open() as raw,
                _open_decompressed(raw, job.compression) as tar,
                tap.writer(out_path) if tap is not None else open(out_path, "wb") as out,
            ):
                result = write_zstd_chunked(
                    tar,
                    out,
                    level=self._options.level,
                    dialect=self._options.dialect,
                    prefetch=self._options.prefetch,
                    progress=progress,
                    src_factory=reopen,
                    limits=self._options.limits,
                )
            source.wait_verified(stop)
            source_diff_id = result.diff_id if self._options.dialect.is_cstorage else ""
            if (
                job.expected_diff_id
                and self._options.dialect.is_cstorage
                and result.diff_id != job.expected_diff_id
            ):
                raise ConversionError(
                    f"source layer decompresses to {result.diff_id}, but the image config says "
                    f"{job.expected_diff_id}"
                )
            self._cache.put(
                job.key,
                CacheRecord(
                    source_digest=job.layer.digest,
                    digest=result.digest,
                    size=result.size,
                    media_type=result.media_type,
                    annotations=dict(result.annotations),
                    diff_id=result.diff_id,
                    source_diff_id=source_diff_id or (job.expected_diff_id or ""),
                    uncompressed_size=result.uncompressed_size,
                    toc_digest=result.toc_digest,
                ),
            )
        except BaseException as exc:
            self._failed(job, tap, exc)
            # Bytes that fail to parse may just be bytes that fail to verify: the download's error is the
            # cause then, and the one to report.
            if not stop.is_set():
                source.wait_verified(stop)
            if isinstance(exc, OSError):
                raise ConversionError(f"converting layer failed: {exc}") from exc
            raise
        if tap is not None:
            tap.finish(result.digest)
        self._reporter.layer_done(job.key, "converted", digest=_short(result.digest))

    def _failed(self, job: LayerJob, tap: OutputTap | None, exc: BaseException) -> None:
        if tap is not None:
            tap.close(f"conversion failed: {exc}")
        self._reporter.layer_done(job.key, "failed")


def _open_decompressed(raw: BinaryIO, compression: Compression) -> BinaryIO:
    """The uncompressed tar stream of ``raw``, inflated ahead on its own thread; closing it closes ``raw``."""
    if compression is Compression.GZIP:
        from isal import igzip

        # isal's IGzipFile.__init__ carries no annotations: pyproject's untyped_calls_exclude covers it
        stream: Readable = igzip.IGzipFile(fileobj=raw, mode="rb")
    elif compression is Compression.ZSTD:
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    else:
        return raw
    return io.BufferedReader(ReadAhead(stream, also_close=raw), 1 << 20)


def _output_estimate(job: LayerJob) -> int:
    # zstd at level 3 is about as compact as gzip -6; an uncompressed source shrinks. Leave headroom for
    # incompressible data (zstd frames add a few bytes per chunk) plus the TOC.
    base = job.layer.size if job.compression is not Compression.NONE else job.layer.size // 2
    return int(base * 1.1) + (64 << 20)


async def _all_have(destinations: list[Endpoint], digest: str) -> bool:
    for dest in destinations:
        if not await dest.has_blob(digest):
            return False
    return True


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]
