"""Convert images (one, or a batch) to zstd:chunked: plan, convert distinct layers in parallel, publish.

A run has three phases:

1. **Plan.** Resolve every source reference (index -> the selected platforms -> manifests -> configs) and
   collect every layer occurrence. Occurrences with the same (source digest, options) share one
   :class:`~converter.layers.LayerJob` that lists every destination needing it: a layer named twice in a
   manifest, across platforms or across images is converted once.
2. **Convert.** Run the jobs in one nursery, biggest source layer first (the biggest bounds the batch's
   wall time, so it must not start last): jobs are admitted in that order, each only once the previous
   one queued for its download, and the biggest waiting layer gets the next download or conversion slot.
   At most ``jobs`` layers are being converted at once and at most ``2 * jobs`` are in flight
   (downloading, waiting to convert, pushing), which bounds the scratch space staged at any time while
   keeping downloads and pushes overlapped with conversion. If one job fails the run fails, but nothing
   another job still uses is deleted: jobs only drop their own claims on store temp objects.
3. **Publish.** Per manifest: copy untouched blobs (config, foreign layers), rewrite the config when the
   dialect changes diff_ids, push the new manifest; then the new index, then the tag.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from converter.cache import ConversionCache, cache_key
from converter.layers import MAX_LAYERS_IN_FLIGHT, ConvertOptions, LayerJob, LayerWorker
from converter.manifests import (
    LayerAction,
    converted_index,
    converted_manifest,
    is_foreign,
    layer_action,
)
from converter.progress import Reporter
from converter.scheduling import PriorityLimiter
from fs.digest import sha256_digest
from fs.errors import ConversionError, FormatError, error_context
from fs.format import toc_location_from_annotations
from fs.registry import ImageReference
from fs.registry.endpoint import Endpoint, open_endpoint
from fs.registry.manifests import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    config_diff_ids,
    parse_manifest_or_index,
    platform_matches,
)
from fs.store import Store

__all__ = ["ConvertRequest", "ConvertResult", "convert_images", "schedule_order"]


@dataclass(frozen=True)
class ConvertRequest:
    """One image to convert: ``SRC DST`` in skopeo transport syntax."""

    source: str
    destination: str


@dataclass(frozen=True)
class ConvertResult:
    """What a request produced: the pushed top-level manifest/index digest and layer counts."""

    request: ConvertRequest
    digest: str
    layers_converted: int
    layers_reused: int
    layers_copied: int


@dataclass
class _ManifestPlan:
    image: str
    source: Endpoint
    destination: Endpoint
    manifest: ImageManifest
    config: bytes
    platform: dict[str, Any] | None  # the index descriptor's, as the registry wrote it
    layer_jobs: list[LayerJob | None] = field(default_factory=list)  # None = copied untouched


@dataclass
class _ImagePlan:
    request: ConvertRequest
    destination: Endpoint
    tag: str | None
    index: ImageIndex | None
    manifests: list[_ManifestPlan] = field(default_factory=list)


async def convert_images(
    requests: Sequence[ConvertRequest],
    *,
    store: Store,
    options: ConvertOptions | None = None,
    jobs: int | None = None,
    platform: str | None = None,
    all_platforms: bool = False,
    plain_http: bool | None = None,
    reporter: Reporter | None = None,
) -> list[ConvertResult]:
    """Convert each request's image and push the result; return one result per request, in order.

    Raises:
        ZsnapError subclasses naming the image, layer and file that failed. Cancellation (Ctrl-C) stops
        all work; every temp object claimed by this run is released, none is deleted under another user.
    """
    reporter = reporter or Reporter()
    options = options or ConvertOptions()
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise ConversionError(f"--jobs must be at least 1, got {jobs}")
    in_flight = trio.CapacityLimiter(min(2 * jobs, MAX_LAYERS_IN_FLIGHT))
    cache = ConversionCache(store.root / "convert-cache")
    worker = LayerWorker(
        store,
        cache,
        options,
        reporter,
        holder=f"convert:{os.getpid()}",
        converters=PriorityLimiter(jobs),
        downloads=PriorityLimiter(max(2, jobs)),
    )
    endpoints: dict[str, Endpoint] = {}
    layer_jobs: dict[str, LayerJob] = {}

    async with _EndpointPool(plain_http) as pool:
        plans = []
        for request in requests:
            plans.append(await _plan_image(request, pool, options, layer_jobs, platform, all_platforms))
        endpoints.update(pool.opened)
        manifests = [m for p in plans for m in p.manifests]
        reporter.event(
            "plan",
            images=len(plans),
            manifests=len(manifests),
            layers=sum(len(m.layer_jobs) for m in manifests),  # every layer reference, copied ones too
            distinct_layers=len(layer_jobs),  # what will actually be converted (once each)
        )

        async def run_job(job: LayerJob) -> None:
            try:
                await worker.run(job)
            finally:
                in_flight.release_on_behalf_of(job.key)

        async with trio.open_nursery() as nursery:
            # Admitted here, one after another, so the order is the sorted one (tasks started together
            # would race for the limiter in trio's scheduling order).
            for job in schedule_order(layer_jobs.values()):
                await in_flight.acquire_on_behalf_of(job.key)
                reporter.event(
                    "layer scheduled", layer=job.layer.digest.split(":")[-1][:12], size=job.layer.size
                )
                nursery.start_soon(run_job, job)
                await job.queued.wait()  # its download is queued: the next (smaller) one queues behind

        results = []
        for plan in plans:
            results.append(await _publish(plan, worker, reporter))
    return results


def schedule_order(jobs: Iterable[LayerJob]) -> list[LayerJob]:
    """Jobs biggest source layer first (ties keep plan order)."""
    return sorted(jobs, key=lambda job: job.layer.size, reverse=True)


class _EndpointPool:
    """Opens each distinct repository once and closes them all at the end."""

    def __init__(self, plain_http: bool | None) -> None:
        self._plain_http = plain_http
        self.opened: dict[str, Endpoint] = {}
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> _EndpointPool:
        self._stack = contextlib.AsyncExitStack()
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._stack is not None
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def get(self, ref: ImageReference) -> Endpoint:
        key = f"oci:{ref.path}" if ref.transport == "oci" else f"{ref.registry}/{ref.repository}"
        if key not in self.opened:
            assert self._stack is not None
            self.opened[key] = await self._stack.enter_async_context(
                open_endpoint(ref, plain_http=self._plain_http)
            )
        return self.opened[key]


async def _plan_image(
    request: ConvertRequest,
    pool: _EndpointPool,
    options: ConvertOptions,
    layer_jobs: dict[str, LayerJob],
    platform: str | None,
    all_platforms: bool,
) -> _ImagePlan:
    src_ref = ImageReference.parse(request.source)
    dst_ref = ImageReference.parse(request.destination)
    source = await pool.get(src_ref)
    destination = await pool.get(dst_ref)
    with error_context(image=request.source):
        data, media_type, _ = await source.get_manifest(src_ref.reference)
        top = parse_manifest_or_index(data, media_type)
        plan = _ImagePlan(request, destination, dst_ref.tag, top if isinstance(top, ImageIndex) else None)
        if isinstance(top, ImageIndex):
            entries = [e for e in top.manifests if all_platforms or platform_matches(e, platform)]
            if not entries:
                raise FormatError(f"no manifest for platform {platform or 'of this host'} in the index")
            for entry in entries:
                mdata, mtype, _ = await source.get_manifest(entry.digest)
                manifest = parse_manifest_or_index(mdata, mtype)
                if not isinstance(manifest, ImageManifest):
                    raise FormatError(f"index entry {entry.digest} is not an image manifest")
                plan.manifests.append(
                    await _plan_manifest(
                        request, source, destination, manifest, entry.platform, options, layer_jobs
                    )
                )
        else:
            plan.manifests.append(
                await _plan_manifest(request, source, destination, top, None, options, layer_jobs)
            )
    return plan


async def _plan_manifest(
    request: ConvertRequest,
    source: Endpoint,
    destination: Endpoint,
    manifest: ImageManifest,
    platform: dict[str, Any] | None,
    options: ConvertOptions,
    layer_jobs: dict[str, LayerJob],
) -> _ManifestPlan:
    config = await source.get_blob(manifest.config.digest)
    diff_ids = config_diff_ids(config)
    if len(diff_ids) != len(manifest.layers):
        raise FormatError(f"config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
    plan = _ManifestPlan(request.source, source, destination, manifest, config, platform)
    for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
        action, compression = layer_action(layer)
        if action is LayerAction.COPY or _already_converted(layer, options):
            plan.layer_jobs.append(None)
            continue
        assert compression is not None
        key = cache_key(layer.digest, options.key_material())
        job = layer_jobs.get(key)
        if job is None:
            job = LayerJob(key, source, layer, compression, diff_id, request.source)
            layer_jobs[key] = job
        if destination not in job.destinations:
            job.destinations.append(destination)
        plan.layer_jobs.append(job)
    return plan


def _already_converted(layer: Descriptor, options: ConvertOptions) -> bool:
    try:
        location = toc_location_from_annotations(layer.annotations, layer.media_type)
    except FormatError:
        return False
    return location is not None and location.dialect is options.dialect


async def _publish(plan: _ImagePlan, worker: LayerWorker, reporter: Reporter) -> ConvertResult:
    converted = reused = copied = 0
    manifest_descs: list[Descriptor] = []
    with error_context(image=plan.request.source):
        for mplan in plan.manifests:
            layers: list[Descriptor] = []
            new_diff_ids: list[str] = []
            source_diff_ids = config_diff_ids(mplan.config)
            for original, job, diff_id in zip(
                mplan.manifest.layers, mplan.layer_jobs, source_diff_ids, strict=True
            ):
                if job is None:
                    if not is_foreign(original):  # foreign blobs live elsewhere (their urls)
                        await _copy_blob(worker, mplan.source, mplan.destination, original)
                    layers.append(original)
                    new_diff_ids.append(diff_id)
                    copied += 1
                    continue
                record = job.result
                if record is None:
                    raise ConversionError("layer job finished without a result", layer=original.digest)
                layers.append(
                    Descriptor(record.media_type, record.digest, record.size, dict(record.annotations))
                )
                new_diff_ids.append(record.diff_id)
                if job.reused:
                    reused += 1
                else:
                    converted += 1
            config_desc = await _publish_config(worker, mplan, new_diff_ids)
            data, media_type = converted_manifest(mplan.manifest, config_desc, layers)
            tag = plan.tag if plan.index is None else None
            digest = await mplan.destination.push_manifest(tag, data, media_type)
            manifest_descs.append(Descriptor(media_type, digest, len(data), {}, mplan.platform))
        if plan.index is not None:
            data, media_type = converted_index(plan.index, manifest_descs)
            top = await plan.destination.push_manifest(plan.tag, data, media_type)
        else:
            top = manifest_descs[0].digest
    reporter.event("pushed", image=plan.request.destination, digest=top)
    return ConvertResult(plan.request, top, converted, reused, copied)


async def _publish_config(worker: LayerWorker, mplan: _ManifestPlan, new_diff_ids: list[str]) -> Descriptor:
    config = mplan.config
    desc = mplan.manifest.config
    if new_diff_ids != config_diff_ids(config):
        obj = json.loads(config)
        obj["rootfs"]["diff_ids"] = new_diff_ids
        config = json.dumps(obj, separators=(",", ":")).encode()
        desc = Descriptor(desc.media_type, sha256_digest(config), len(config), desc.annotations)
    if not await mplan.destination.has_blob(desc.digest):
        async with worker.staging.blob_bytes(desc.digest, config) as path:
            await mplan.destination.push_blob(desc.digest, desc.size, path)
    return desc


async def _copy_blob(worker: LayerWorker, source: Endpoint, destination: Endpoint, desc: Descriptor) -> None:
    if await destination.has_blob(desc.digest):
        return
    async with worker.staging.source(source, desc) as path:
        await destination.push_blob(desc.digest, desc.size, path)
