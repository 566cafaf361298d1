"""Results of ``zsnap bench startup``: medians and spread per image and mode, the JSON file, the rich
table and the one-line JSON summary with ratios against ``full`` from the same run."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from snapshotter.bench.startup.modes import Sample

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["FIELDS", "json_line", "render_table", "summarize", "write_json"]

#: The JSON document :func:`summarize` builds (and ``--json`` writes).
Summary: TypeAlias = "dict[str, Any]"

FIELDS = ("pull_s", "create_s", "run_s", "total_s", "fetched_bytes", "read_bytes", "toc_bytes", "readall_s",
          "readall_hog_s")  # fmt: skip


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(images: Sequence[tuple[str, int]], samples: Sequence[Sample]) -> Summary:
    """``{"images": [{"name", "size_bytes", "modes": {MODE: {FIELD: median, …, "spread": {FIELD: [min,
    max]}, "n"}}}], "samples": [...]}`` for ``images`` (``(name, size_bytes)``) in order."""
    out = []
    for name, size in images:
        modes: dict[str, dict[str, Any]] = {}
        for sample in samples:
            if sample.image != name:
                continue
            modes.setdefault(sample.mode, {"_samples": []})["_samples"].append(sample)
        for entry in modes.values():
            group = entry.pop("_samples")
            entry["n"] = len(group)
            entry["spread"] = {}
            for field in FIELDS:
                values = [getattr(s, field) for s in group if getattr(s, field) is not None]
                entry[field] = _median(values)
                if field.endswith("_bytes") and entry[field] is not None:
                    entry[field] = int(entry[field])
                if values:
                    entry["spread"][field] = [min(values), max(values)]
        out.append({"name": name, "size_bytes": size, "modes": modes})
    return {"images": out, "samples": [dataclasses.asdict(s) for s in samples]}


def write_json(summary: Summary, path: Path, **meta: object) -> None:
    path.write_text(json.dumps({**meta, **summary}, indent=1, sort_keys=True))


def ratios(summary: Summary) -> dict[str, dict[str, float]]:
    """``{"IMAGE/MODE": {"total_vs_full": x, "pull_vs_full": y, …}}`` for every non-full mode."""
    out: dict[str, dict[str, float]] = {}
    for image in summary["images"]:
        full = image["modes"].get("full")
        if not full:
            continue
        for mode, entry in image["modes"].items():
            if mode == "full":
                continue
            ratio = {}
            for field in ("total_s", "pull_s", "readall_s", "readall_hog_s", "fetched_bytes"):
                if entry.get(field) is not None and full.get(field):
                    ratio[f"{field.removesuffix('_s')}_vs_full"] = round(entry[field] / full[field], 4)
            # full's readall reads a local copy; lazy's also downloads: compare the time to have read it all
            for readall in ("readall_s", "readall_hog_s"):
                if entry.get(readall) is not None and full.get(readall) is not None:
                    lazy_all = entry["pull_s"] + entry[readall]
                    key = f"pull_plus_{readall.removesuffix('_s')}_vs_full"
                    ratio[key] = round(lazy_all / (full["pull_s"] + full[readall]), 4)
            out[f"{image['name']}/{mode}"] = ratio
        for mode, entry in image["modes"].items():  # bytes fetched before first output per byte read
            if entry.get("read_bytes") and entry.get("fetched_bytes") is not None:
                beyond_tocs = entry["fetched_bytes"] - (entry.get("toc_bytes") or 0)
                key = f"{image['name']}/{mode}"
                out.setdefault(key, {})["fetched_beyond_tocs_vs_read"] = round(
                    beyond_tocs / entry["read_bytes"], 4
                )
    return out


def json_line(summary: Summary, **meta: object) -> str:
    """The machine-readable line: medians per image and mode, and ratios against full."""
    medians = {
        f"{image['name']}/{mode}": {f: entry[f] for f in FIELDS if entry.get(f) is not None}
        for image in summary["images"] for mode, entry in image["modes"].items()
    }  # fmt: skip
    return json.dumps({"bench": "startup", **meta, "medians": medians, "ratios": ratios(summary)},
                      sort_keys=True)  # fmt: skip


def _fmt(value: float | None, spread: list[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}"
    if spread and spread[1] - spread[0] > 0.005:
        text += f" ({spread[0]:.2f}-{spread[1]:.2f})"
    return text


def render_table(summary: Summary) -> Table:
    """The medians (min-max in brackets) per image and mode, seconds; ``x full`` is total against full."""
    from rich.table import Table

    table = Table(title="zsnap bench startup (median, min-max; seconds; read: what the start workload read)")
    for col in ("image", "mode", "pull", "create", "run", "total", "x full", "fetched MB", "readall",
                "readall+hog"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("image", "mode") else "right")
    rat = ratios(summary)
    for image in summary["images"]:
        for mode, e in image["modes"].items():
            sp = e["spread"]
            fetched = "-" if e["fetched_bytes"] is None else f"{e['fetched_bytes'] / 1e6:.1f}"
            if e.get("read_bytes"):
                fetched += f" (read {e['read_bytes'] / 1e6:.1f})"
            vs = rat.get(f"{image['name']}/{mode}", {}).get("total_vs_full")
            table.add_row(
                f"{image['name']} ({image['size_bytes'] / 1e9:.2f} GB)", mode,
                *(_fmt(e[f], sp.get(f)) for f in ("pull_s", "create_s", "run_s", "total_s")),
                "1" if mode == "full" else ("-" if vs is None else f"{vs:.3f}"), fetched,
                _fmt(e["readall_s"], sp.get("readall_s")), _fmt(e["readall_hog_s"], sp.get("readall_hog_s")),
            )  # fmt: skip
    return table
