"""The ``plan`` line of ``zsnap convert``: what a batch will do, counted before any layer is converted."""

from __future__ import annotations

import re
from pathlib import Path

from tests.converter.test_convert import zsnap


def plan_fields(stderr: str) -> dict[str, int]:
    lines = [line for line in stderr.splitlines() if line.startswith("plan ")]
    assert len(lines) == 1, stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[0])}


def test_plan_counts_the_layers_of_one_image(test_images, tmp_path: Path) -> None:
    image = test_images["features:gzip"]
    assert len({x.descriptor.digest for x in image.layers}) == len(image.layers) == 3
    proc = zsnap(tmp_path / "root", "convert", image.ref, f"oci:{tmp_path / 'out'}:zc")
    assert plan_fields(proc.stdout + proc.stderr) == {
        "images": 1,
        "manifests": 1,
        "layers": 3,
        "distinct_layers": 3,
    }


def test_plan_counts_a_layer_named_twice_once(test_images, tmp_path: Path) -> None:
    dups, dups2 = test_images["dups:gzip"], test_images["dups2:gzip"]
    batch = tmp_path / "batch.txt"
    batch.write_text(f"{dups.ref} oci:{tmp_path / 'out'}:a\n{dups2.ref} oci:{tmp_path / 'out'}:b\n")
    proc = zsnap(tmp_path / "root", "convert", "--from-file", str(batch))
    references = [x.descriptor.digest for x in (*dups.layers, *dups2.layers)]
    assert len(set(references)) < len(references), "the dups images must repeat a layer"
    assert plan_fields(proc.stdout + proc.stderr) == {
        "images": 2,
        "manifests": 2,
        "layers": len(references),
        "distinct_layers": len(set(references)),
    }
