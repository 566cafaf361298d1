"""``zsnap bench convert --shape seed``: a batch shaped like a real seed image and its sibling.

The seed-shaped image has 18 layers: one empty layer four times, a big layer A (half of the distinct
bytes) twice, a second big layer B (2/7 of them) twice, and small layers; its sibling shares A. Both are
converted in one ``zsnap convert --from-file`` batch, so what is measured is the batch's scheduling: a
big layer started last runs alone at the end. ``--size-mb`` is the distinct uncompressed size (the real
seed image: 7 GB distinct, 11.7 GB in its manifest). Layers are real files from ``/usr``.

Reported: seconds and CPU seconds per variant (``--baseline``, ``--rounds`` as for the single image) and
MB/s of distinct uncompressed input, then one JSON line ``{"bench": "convert-seed", ...}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from snapshotter.sample_image import LayerBuilder, add_files, build_image, walk_files

if TYPE_CHECKING:
    pass

__all__ = ["SEED_TAG", "SIBLING_TAG", "build_seed_layout"]

SEED_TAG = "seed"
SIBLING_TAG = "sibling"
_SMALL_LAYERS = 10


def build_seed_layout(layout: Path, distinct_mb: int) -> int:
    """Write the seed-shaped image (tag ``seed``) and its sibling (``sibling``) into ``layout``; return
    the distinct uncompressed bytes of their layers."""
    budget = distinct_mb << 20
    big_a, big_b = budget // 2, budget * 2 // 7
    small = (budget - big_a - big_b) // _SMALL_LAYERS
    groups = _file_groups([big_a, big_b] + [small] * _SMALL_LAYERS)
    builders: list[LayerBuilder] = [_empty, *(functools.partial(add_files, paths=paths) for paths in groups)]
    build_image(layout, builders, tag="parts")
    index = json.loads((layout / "index.json").read_text())
    (parts_desc,) = [
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "parts"
    ]
    parts = json.loads(_blob(layout, parts_desc["digest"]))
    diff_ids = json.loads(_blob(layout, parts["config"]["digest"]))["rootfs"]["diff_ids"]
    layers = list(zip(parts["layers"], diff_ids, strict=True))
    empty, a, b, smalls = layers[0], layers[1], layers[2], layers[3:]
    # As in the real seed image, the big layers come last: a batch in plan order starts them last.
    seed = [
        smalls[0], smalls[1], empty, smalls[2], smalls[3], empty, smalls[4], smalls[5], empty, smalls[6],
        smalls[7], empty, smalls[8], smalls[0], a, b, a, b,
    ]  # fmt: skip
    sibling = [smalls[0], smalls[9], a]
    for tag, chosen in ((SEED_TAG, seed), (SIBLING_TAG, sibling)):
        _write_image(layout, tag, chosen)
    return sum(_tar_size(layout, desc["digest"]) for desc, _ in layers)


def _empty(tar: tarfile.TarFile) -> None:
    """No entries: the empty layer images get from metadata-only Dockerfile steps."""


def _file_groups(budgets: list[int]) -> list[list[Path]]:
    """Consecutive groups of regular files under /usr (sorted walk) of about ``budgets`` bytes each."""
    groups: list[list[Path]] = []
    walk = walk_files("/usr")
    for budget in budgets:
        group: list[Path] = []
        used = 0
        for path in walk:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size > budget:  # a single file bigger than a small layer's budget: skip it
                continue
            group.append(path)
            used += size
            if used >= budget:
                break
        groups.append(group)
    return groups


def _write_image(layout: Path, tag: str, layers: list[tuple[dict[str, object], str]]) -> None:
    config = {
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }  # fmt: skip
    config_desc = _put(layout, json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = {
        "schemaVersion": 2, "mediaType": manifest_type, "config": config_desc,
        "layers": [desc for desc, _ in layers],
    }  # fmt: skip
    desc = _put(layout, json.dumps(manifest).encode(), manifest_type)
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ] + [desc]
    (layout / "index.json").write_text(json.dumps(index))


def _put(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest.split(":")[1]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs/sha256" / digest.split(":")[1]).read_bytes()


def _tar_size(layout: Path, digest: str) -> int:
    from isal import igzip

    total = 0
    with igzip.open(layout / "blobs/sha256" / digest.split(":")[1], "rb") as stream:
        while block := stream.read(1 << 22):
            total += len(block)
    return total
