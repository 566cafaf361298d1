"""Conversion progress: a live table on a terminal, quiet structured lines otherwise.

Updates arrive from worker threads (the layer writer reports bytes in/out as it goes), so every method is
thread-safe. Non-terminal output is one ``key=value`` line per event and at most one progress line per
layer every few seconds, which keeps CI logs readable.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID

__all__ = ["Reporter"]

_LINE_INTERVAL = 5.0


@dataclass
class _Layer:
    label: str
    total: int
    bytes_in: int = 0
    bytes_out: int = 0
    started: float = field(default_factory=time.monotonic)
    last_line: float = 0.0
    task_id: TaskID | None = None


class Reporter:
    """Per-layer progress (bytes in, bytes out, rate) and events for one conversion run.

    Args:
        stream: where to write; a terminal gets a rich live display, anything else plain lines.
        quiet: report only errors and the final summary line.
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._lock = threading.Lock()
        self._layers: dict[str, _Layer] = {}
        self._progress = None
        if not quiet and self._stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("out {task.fields[out]}"),
                TimeElapsedColumn(),
                console=Console(file=self._stream),
            )
            self._progress.start()

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def event(self, message: str, **fields: object) -> None:
        """One line about something that happened (a layer reused, an image pushed)."""
        if self._quiet:
            return
        text = " ".join([message, *(f"{k}={v}" for k, v in fields.items())])
        with self._lock:
            if self._progress is not None:
                self._progress.console.print(text)
            else:
                print(text, file=self._stream, flush=True)

    def layer_started(self, key: str, label: str, total: int) -> None:
        with self._lock:
            layer = _Layer(label, total)
            self._layers[key] = layer
            if self._progress is not None:
                layer.task_id = self._progress.add_task(label, total=total or None, out="0 B")
        self.event("convert start", layer=label, size=total)

    def layer_progress(self, key: str, bytes_in: int, bytes_out: int) -> None:
        """Absolute counters so far (source blob bytes read, converted bytes written)."""
        with self._lock:
            layer = self._layers.get(key)
            if layer is None:
                return
            layer.bytes_in, layer.bytes_out = bytes_in, bytes_out
            now = time.monotonic()
            if self._progress is not None and layer.task_id is not None:
                self._progress.update(
                    layer.task_id,
                    completed=bytes_in,
                    total=max(layer.total, bytes_in) or None,
                    out=_human(bytes_out),
                )
                return
            if self._quiet or now - layer.last_line < _LINE_INTERVAL:
                return
            layer.last_line = now
            rate = bytes_in / max(now - layer.started, 1e-6)
            print(
                f"convert progress layer={layer.label} in={bytes_in} out={bytes_out} rate={_human(rate)}/s",
                file=self._stream,
                flush=True,
            )

    def layer_done(self, key: str, status: str, **fields: object) -> None:
        with self._lock:
            layer = self._layers.pop(key, None)
            if layer and self._progress is not None and layer.task_id is not None:
                self._progress.remove_task(layer.task_id)
        if layer is None:
            self.event(f"layer {status}", **fields)
            return
        elapsed = time.monotonic() - layer.started
        rate = layer.bytes_in / max(elapsed, 1e-6)
        self.event(
            f"layer {status}",
            layer=layer.label,
            bytes_in=layer.bytes_in,
            bytes_out=layer.bytes_out,
            seconds=f"{elapsed:.2f}",
            rate=f"{_human(rate)}/s",
            **fields,
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
