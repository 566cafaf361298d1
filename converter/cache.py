"""The conversion cache: which zstd:chunked blob a source layer became under which options.

A record is a small JSON file ``<root>/convert-cache/<key>.json`` written atomically (temp + fsync +
rename), so a crash leaves either no record or a complete one. The record only says *what* the result
was; the blob itself lives in the destination registry or layout. When every destination still has the
blob, the layer is not converted again; otherwise it is converted anew (deterministically: same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["CacheRecord", "ConversionCache", "cache_key"]

# Bump when the writer's output for the same input and options changes.
WRITER_VERSION = 1


def cache_key(source_digest: str, options: dict[str, Any]) -> str:
    """A stable key for (source layer, conversion options, writer version)."""
    material = json.dumps(
        {"source": source_digest, "options": options, "writer": WRITER_VERSION}, sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class CacheRecord:
    """The converted layer's descriptor fields and its (possibly new) diff_id."""

    source_digest: str
    digest: str
    size: int
    media_type: str
    annotations: dict[str, str]
    diff_id: str
    source_diff_id: str
    uncompressed_size: int


class ConversionCache:
    """Records of finished conversions under ``directory``; safe for concurrent processes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._remove_dead_temps()

    def _remove_dead_temps(self) -> None:
        # A writer killed between write and rename leaves ".<key>.json.<pid>.tmp"; drop those whose
        # writer is gone (a live writer's file is left alone).
        for tmp in self.directory.glob(".*.tmp"):
            try:
                pid = int(tmp.name.rsplit(".", 2)[-2])
                os.kill(pid, 0)
            except ProcessLookupError:
                tmp.unlink(missing_ok=True)
            except (ValueError, IndexError, PermissionError):
                continue

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> CacheRecord | None:
        """Return the record for ``key``, or None (also for an unreadable record, which is removed)."""
        path = self._path(key)
        try:
            return CacheRecord(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, record: CacheRecord) -> None:
        """Publish ``record`` atomically."""
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as out:
            json.dump(asdict(record), out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
