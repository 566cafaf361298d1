"""``zsnap check``: prove that an image's zstd:chunked layers are what their manifest says.

Per layer: the blob hashes to its descriptor digest (checked while it is staged), the TOC hashes to the
digest in the layer annotations, every chunk decompresses to bytes that hash to its ``chunkDigest`` (or the
file ``digest`` for single-chunk files), and with ``full=True`` the whole blob decompresses to a stream
that hashes to the config's ``diff_id``.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import trio
import zstandard

from converter.cache import ConversionCache
from converter.layers import ConvertOptions, LayerWorker
from converter.progress import Reporter
from converter.readahead import Readable
from fs.errors import FormatError, UnsupportedFormat, VerificationError, error_context
from fs.format import (
    FOOTER_FETCH_SIZE,
    Chunk,
    Dialect,
    build_index,
    decode_and_verify_toc,
    parse_footer,
    toc_location_from_annotations,
)
from fs.lazy.decode import check_chunk
from fs.limits import DEFAULT_LIMITS, Limits
from fs.registry import ImageReference
from fs.registry.endpoint import Endpoint, open_endpoint
from fs.registry.manifests import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    config_diff_ids,
    parse_manifest_or_index,
)
from fs.store import Store

__all__ = ["LayerCheck", "check_image"]


@dataclass
class LayerCheck:
    """What was verified for one layer."""

    digest: str
    dialect: str
    files: int = 0
    chunks: int = 0
    bytes_verified: int = 0
    diff_id_checked: bool = False
    problems: list[str] = field(default_factory=list)


async def check_image(
    reference: str,
    *,
    store: Store,
    full: bool = False,
    plain_http: bool | None = None,
    jobs: int | None = None,
    reporter: Reporter | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[LayerCheck]:
    """Verify every layer of ``reference`` (every platform of an index); a TOC past ``limits`` fails.

    Raises:
        VerificationError / FormatError naming the image, layer and file at the first failure.
    """
    reporter = reporter or Reporter()
    ref = ImageReference.parse(reference)
    worker = LayerWorker(
        store,
        ConversionCache(store.root / "convert-cache"),
        ConvertOptions(limits=limits),
        reporter,
        holder=f"check:{os.getpid()}",
    )
    limit = trio.CapacityLimiter(jobs or os.cpu_count() or 1)
    results: list[LayerCheck] = []
    async with open_endpoint(ref, plain_http=plain_http) as endpoint:
        with error_context(image=reference):
            layers = await _layers_with_diff_ids(endpoint, ref.reference)

            async def check_one(layer: Descriptor, diff_id: str) -> None:
                async with limit:
                    with error_context(layer=layer.digest):
                        async with worker.staging.source(endpoint, layer) as path:
                            result = await trio.to_thread.run_sync(
                                _check_blob, path, layer, diff_id if full else None, limits
                            )
                results.append(result)
                reporter.event(
                    "layer ok",
                    layer=layer.digest,
                    dialect=result.dialect,
                    files=result.files,
                    chunks=result.chunks,
                    diff_id="checked" if result.diff_id_checked else "skipped",
                )

            async with trio.open_nursery() as nursery:
                seen = set()
                for layer, diff_id in layers:
                    if layer.digest not in seen:
                        seen.add(layer.digest)
                        nursery.start_soon(check_one, layer, diff_id)
    return results


async def _layers_with_diff_ids(endpoint: Endpoint, reference: str | None) -> list[tuple[Descriptor, str]]:
    data, media_type, _ = await endpoint.get_manifest(reference)
    top = parse_manifest_or_index(data, media_type)
    manifests: Sequence[ImageManifest]
    if isinstance(top, ImageIndex):
        manifests = []
        for entry in top.manifests:
            mdata, mtype, _ = await endpoint.get_manifest(entry.digest)
            parsed = parse_manifest_or_index(mdata, mtype)
            if not isinstance(parsed, ImageManifest):
                raise FormatError(f"index entry {entry.digest} is not an image manifest")
            manifests.append(parsed)
    else:
        manifests = [top]
    out: list[tuple[Descriptor, str]] = []
    for manifest in manifests:
        diff_ids = config_diff_ids(await endpoint.get_blob(manifest.config.digest))
        if len(diff_ids) != len(manifest.layers):
            raise FormatError(f"config lists {len(diff_ids)} diff_ids for {len(manifest.layers)} layers")
        out.extend(zip(manifest.layers, diff_ids, strict=True))
    return out


def _check_blob(
    path: Path, layer: Descriptor, diff_id: str | None, limits: Limits = DEFAULT_LIMITS
) -> LayerCheck:
    location = toc_location_from_annotations(layer.annotations, layer.media_type)
    if location is None:
        raise UnsupportedFormat("layer is not zstd:chunked or eStargz (no TOC annotations)")
    size = path.stat().st_size
    codec = "gzip" if location.dialect is Dialect.ESTARGZ_GZIP else "zstd"
    with open(path, "rb") as blob:
        if location.needs_footer:  # eStargz: the position is in the (unauthenticated) footer only
            blob.seek(max(0, size - FOOTER_FETCH_SIZE))
            location = location.with_footer(parse_footer(blob.read(), size))
        blob.seek(location.offset)
        toc = decode_and_verify_toc(blob.read(location.length), location, limits=limits)
        index = build_index(toc, location.dialect, size, toc_offset=location.offset, limits=limits)
        result = LayerCheck(layer.digest, location.dialect.value)
        seen: set[int] = set()
        # Each chunk's compressed range is copied out of the mapping (no buffer export outlives the
        # mapping, even in a traceback); decoding is streamed, so memory never follows a declared size.
        with mmap.mmap(blob.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for _, node in index:
                if node.type != "reg" or id(node) in seen:  # hardlinks share one node
                    continue
                seen.add(id(node))
                with error_context(path=node.path):
                    for chunk in node.chunks:
                        result.bytes_verified += _check_chunk(mapped, chunk, codec)
                        result.chunks += 1
                result.files += 1
        if diff_id is not None:
            blob.seek(0)
            actual = _stream_digest(blob, codec)
            if actual != diff_id:
                raise VerificationError(f"blob decompresses to {actual}, config diff_id is {diff_id}")
            result.diff_id_checked = True
    return result


def _check_chunk(blob: mmap.mmap, chunk: Chunk, codec: str) -> int:
    """Verify one chunk exactly as the lazy mount does (:func:`fs.lazy.decode.check_chunk`: ``zeros``
    chunks by the digest of their zero bytes, others decoded in pieces); returns its size."""
    check_chunk(codec, blob[chunk.compressed_offset : chunk.compressed_end], chunk)
    return chunk.size


def _stream_digest(blob: BinaryIO, codec: str) -> str:
    hasher = hashlib.sha256()
    if codec == "gzip":
        from isal import igzip

        # continues across gzip members; isal's IGzipFile.__init__ carries no annotations
        stream: Readable = igzip.IGzipFile(fileobj=blob, mode="rb")
    else:
        stream = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
    with contextlib.closing(stream):
        while block := stream.read(1 << 20):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()
