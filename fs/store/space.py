"""Disk-space checks and human sizes, shared by the store, the converter and the CLI."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fs.errors import DiskFull

__all__ = ["format_size", "free_space", "free_space_check", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``10G``, ``512M``, ``1.5GiB``, ``4096`` (binary units) into bytes.

    Raises:
        ValueError: not a size.
    """
    match = _SIZE_RE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (expected e.g. 10G, 512M or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(n: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_space(path: Path) -> int:
    """Bytes available to unprivileged writers on the file system holding ``path`` (or its parent)."""
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def free_space_check(path: Path, needed: int, *, reserve: int = 0) -> int:
    """Make sure ``needed`` bytes (plus ``reserve`` kept free) fit at ``path``; returns bytes available.

    ``path`` need not exist yet: the nearest existing parent decides the file system.

    Raises:
        DiskFull: with how much is needed, how much is available, and where.
    """
    available = free_space(path)
    if needed + reserve > available:
        extra = f" (+{format_size(reserve)} reserve)" if reserve else ""
        raise DiskFull(
            f"not enough free space: need {format_size(needed)}{extra} at {path}, "
            f"only {format_size(available)} available on that file system",
            path=str(path),
        )
    return available
