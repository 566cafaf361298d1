"""The conversion cache: which zstd:chunked blob a source layer became under which options, and where it went.

A record is a small JSON file ``<root>/convert-cache/<key>.json`` written atomically (temp + fsync +
rename), so a crash leaves either no record or a complete one; every zsnap process using the same store
root shares them. The record says *what* the result was (digest, size, annotations, TOC digest, diff_ids)
and *where* it was pushed (``locations``: ``registry/repository`` or ``oci:/layout/path``); the blob itself
lives there, not here. A later run whose destination lacks the blob mounts it from a recorded repository
of the same registry (after a HEAD there says it still exists) instead of converting; only when no
recorded location still has it is the layer converted anew (deterministically: same bytes).
Locations are added and pruned under an ``fcntl`` lock, so concurrent processes do not lose each other's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["WRITER_VERSION", "CacheRecord", "ConversionCache", "cache_key"]

#: Bump when the writer's output for the same input and options changes (2: ~512 KiB chunks for files of
#: 16 MiB and more; 3: the prefetch hint annotation of a layer converted with a prefetch list).
WRITER_VERSION = 3


def cache_key(source_digest: str, options: dict[str, Any]) -> str:
    """A stable key for (source layer, conversion options, writer version)."""
    material = json.dumps(
        {"source": source_digest, "options": options, "writer": WRITER_VERSION}, sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class CacheRecord:
    """The converted layer's descriptor fields, its (possibly new) diff_id, and where it was pushed."""

    source_digest: str
    digest: str
    size: int
    media_type: str
    annotations: dict[str, str]
    diff_id: str
    source_diff_id: str
    uncompressed_size: int
    toc_digest: str = ""
    locations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "locations", tuple(self.locations))  # JSON gives a list


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
        """Publish ``record`` atomically, keeping the locations an existing record for ``key`` lists."""
        with self._locked():
            old = self.get(key)
            if old is not None and old.digest == record.digest:
                merged = tuple(dict.fromkeys((*old.locations, *record.locations)))
                record = dataclasses.replace(record, locations=merged)
            self._write(key, record)

    def add_location(self, key: str, location: str) -> None:
        """Record that the blob of ``key`` now exists at ``location`` (no-op without a record)."""
        with self._locked():
            record = self.get(key)
            if record is not None and location not in record.locations:
                self._write(key, dataclasses.replace(record, locations=(*record.locations, location)))

    def drop_location(self, key: str, location: str) -> None:
        """Forget ``location`` for ``key`` (the blob is no longer there)."""
        with self._locked():
            record = self.get(key)
            if record is not None and location in record.locations:
                kept = tuple(x for x in record.locations if x != location)
                self._write(key, dataclasses.replace(record, locations=kept))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # the lock goes with the file's close

    def _write(self, key: str, record: CacheRecord) -> None:
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w") as out:
            json.dump(asdict(record), out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
