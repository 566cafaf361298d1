"""fs.registry.endpoint: the same reads and writes against an OCI layout and a real registry."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from fs.errors import NotFoundError, RegistryError, VerificationError
from fs.registry import ImageReference, OciLayout
from fs.registry.endpoint import Endpoint, LayoutEndpoint, LayoutReader, RegistryEndpoint, open_endpoint

SKOPEO = "skopeo-1.9.3-zstd-chunked"
MANIFEST = "sha256:099535181a8140d836ed80aeb52e237a374a7169620e677676997723712aeee1"
BIG = "sha256:058cfdd58f8daac15818b18473ff2907d9a38fda1d6eae52bb84a0645867c3ac"  # 4455890 bytes
MISSING = "sha256:" + "0" * 64


@pytest.fixture
def layout_copy(vectors_dir: Path, tmp_path: Path) -> OciLayout:
    target = tmp_path / "layout"
    shutil.copytree(vectors_dir / SKOPEO, target)
    return OciLayout(target)


async def _same_reads(endpoint: Endpoint, source: OciLayout) -> None:
    manifest = await endpoint.get_manifest()
    assert manifest.digest == MANIFEST and manifest.data == source.read_blob(MANIFEST)
    data, media_type, digest = await endpoint.get_manifest(MANIFEST)
    assert (data, digest) == (manifest.data, MANIFEST) and media_type == json.loads(data)["mediaType"]
    config = json.loads(data)["config"]["digest"]
    assert await endpoint.get_blob(config) == source.read_blob(config)
    big = source.read_blob(BIG)
    assert await endpoint.blob_size(BIG) == len(big)
    assert await endpoint.blob_size(MISSING) is None and not await endpoint.has_blob(MISSING)
    wanted = [(0, 10), (4_000_000, 4_000_100), (5, 6)]
    assert await endpoint.get_ranges(BIG, wanted) == [big[s:e] for s, e in wanted]
    with pytest.raises(RegistryError) as info:
        await endpoint.get_ranges(BIG, [(len(big), len(big) + 10)])
    assert info.value.status == 416
    streamed = b""
    async with endpoint.stream_blob(BIG) as chunks:
        async for chunk in chunks:
            streamed += chunk
    assert streamed == big
    with pytest.raises(NotFoundError):
        await endpoint.get_manifest("nope")


async def test_layout_endpoint_reads_and_writes(layout_copy: OciLayout, tmp_path: Path) -> None:
    ref = ImageReference.parse(f"oci:{layout_copy.path}")
    async with open_endpoint(ref) as endpoint:
        assert isinstance(endpoint, LayoutEndpoint) and isinstance(endpoint.source, LayoutReader)
        await _same_reads(endpoint, layout_copy)
        assert endpoint.local_blob_path(BIG) == layout_copy.blob_path(BIG)
        dest = tmp_path / "big"
        await endpoint.fetch_blob(BIG, layout_copy.blob_size(BIG), dest)
        assert dest.read_bytes() == layout_copy.read_blob(BIG)
        with pytest.raises(VerificationError):
            await endpoint.fetch_blob(BIG, layout_copy.blob_size(BIG) + 1, dest)  # the descriptor lies
    # a corrupt blob is refused by every read that can check it
    path = layout_copy.blob_path(BIG)
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    reader = LayoutReader(layout_copy)
    with pytest.raises(VerificationError):
        await reader.get_blob("any", BIG, max_size=1 << 30)
    with pytest.raises(VerificationError):
        async with reader.stream_blob("any", BIG) as chunks:
            async for _ in chunks:
                pass


async def test_registry_endpoint_reads_the_same_and_writes(
    registry, layout_copy: OciLayout, tmp_path: Path
) -> None:
    assert registry.push_oci_layout(layout_copy.path, "ep/features:v1") == MANIFEST
    async with open_endpoint(ImageReference.parse(f"docker://{registry.host}/ep/features:v1")) as endpoint:
        assert isinstance(endpoint, RegistryEndpoint) and endpoint.local_blob_path(BIG) is None
        await _same_reads(endpoint, layout_copy)
        dest = tmp_path / "big"
        await endpoint.fetch_blob(BIG, layout_copy.blob_size(BIG), dest)
        assert dest.read_bytes() == layout_copy.read_blob(BIG)
    # writes: copy one blob and a manifest to a new repository, and to a new layout
    data = b"a blob written through an endpoint"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (tmp_path / "blob").write_bytes(data)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": []}).encode()  # fmt: skip
    for text in (f"docker://{registry.host}/ep/written:t", f"oci:{tmp_path / 'out'}:t"):
        async with open_endpoint(ImageReference.parse(text)) as endpoint:
            await endpoint.push_blob(digest, len(data), tmp_path / "blob")
            await endpoint.push_blob(digest, len(data), tmp_path / "blob")  # already there: skipped
            assert await endpoint.get_blob(digest) == data
            top = await endpoint.push_manifest("t", manifest, "application/vnd.oci.image.index.v1+json")
            assert (
                (await endpoint.get_manifest()).digest
                == top
                == "sha256:" + hashlib.sha256(manifest).hexdigest()
            )
