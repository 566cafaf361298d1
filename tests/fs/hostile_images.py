"""Hand-made hostile images: a correctly signed zstd:chunked layer whose TOC says what an attacker wants.

``chunked_layout(path, toc_json, data)`` writes an OCI layout with one c/storage (v1 footer) layer: the
data frames, the TOC (any JSON text, so it can hold what ``serialize_toc`` would never write) in a
skippable frame, the footer, and annotations whose TOC digest matches. ``gzip_layout`` writes a plain
gzip layer around a tar (for the converter). ``push_layout`` copies a layout to the test registry with
digests preserved.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard

from fs.digest import sha256_digest
from fs.format import Dialect, footer_bytes, skippable_frame
from fs.format.annotations import annotations_for
from fs.format.footer import Footer
from tests.fixtures.images import OCI_CONFIG, OCI_MANIFEST, LayoutWriter, run_skopeo

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def _image(
    path: Path, layer: bytes, media_type: str, diff_id: str, annotations: dict[str, str], tag: str
) -> str:
    writer = LayoutWriter(path)
    try:
        layer_desc = writer.put_bytes(layer, media_type, annotations=annotations)
        config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
        config_desc = writer.put_bytes(json.dumps(config).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc.to_json(),
                    "layers": [layer_desc.to_json()]}  # fmt: skip
        writer.tag(writer.put_bytes(json.dumps(manifest).encode(), OCI_MANIFEST), tag)
    finally:
        writer.close()
    return f"oci:{path}:{tag}"


#: Chunk data starts here (offset 0 means "no offset" in a TOC): an empty zstd frame comes first.
LEAD = zstandard.ZstdCompressor().compress(b"")
DATA_START = len(LEAD)


def chunked_layout(path: Path, toc_json: bytes, data: bytes, *, tag: str = "hostile") -> str:
    """An OCI layout with one c/storage v1 zstd:chunked layer: :data:`LEAD`, ``data`` (at
    :data:`DATA_START`), then the signed ``toc_json``."""
    data = LEAD + data
    toc_compressed = zstd_frame(toc_json)
    blob = data + skippable_frame(toc_compressed)
    footer = Footer(Dialect.CSTORAGE_V1, len(data) + 8, len(toc_compressed), len(toc_json))
    blob += footer_bytes(footer)
    annotations = annotations_for(Dialect.CSTORAGE_V1, footer, sha256_digest(toc_compressed))
    return _image(path, blob, ZSTD_LAYER, sha256_digest(b"not checked"), annotations, tag)


def gzip_layout(path: Path, tar: bytes, *, tag: str = "hostile") -> str:
    """An OCI layout with one gzip layer of ``tar``."""
    return _image(path, gzip.compress(tar, mtime=0), GZIP_LAYER, sha256_digest(tar), {}, tag)


def push_layout(ref: str, registry_host: str, repo_tag: str) -> str:
    """Copy the layout image ``ref`` unchanged to ``docker://HOST/REPO:TAG``; returns that reference."""
    dest = f"docker://{registry_host}/{repo_tag}"
    run_skopeo("copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false", ref, dest, timeout=120)
    return dest
