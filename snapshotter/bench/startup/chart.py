"""The startup benchmark's chart: one stacked bar (pull, create, run-to-first-output) per image and mode.

matplotlib with the non-interactive Agg backend, written as a PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snapshotter.bench.startup.report import Summary

__all__ = ["PARTS", "draw"]

PARTS = (("pull_s", "pull"), ("create_s", "create"), ("run_s", "run to first output"))


def draw(summary: Summary, path: Path) -> int:
    """Write the chart of ``summary`` (see :func:`.report.summarize`) to ``path``; return the bar count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, stacks = [], []
    for image in summary["images"]:
        for mode, entry in image["modes"].items():
            if entry.get("total_s") is None:
                continue
            labels.append(f"{image['name']}\n{mode}")
            stacks.append([entry.get(key) or 0.0 for key, _ in PARTS])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(labels) + 1.5), 4.5))
    bottoms = [0.0] * len(labels)
    for k, (_, name) in enumerate(PARTS):
        heights = [stack[k] for stack in stacks]
        ax.bar(range(len(labels)), heights, bottom=bottoms, label=name)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for x, total in enumerate(bottoms):
        ax.annotate(f"{total:.2f}s", (x, total), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("seconds (median, cold)")
    ax.set_title("container startup, cold", fontsize=11)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return len(labels)
