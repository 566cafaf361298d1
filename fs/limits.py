"""Resource limits: every bound zsnap puts on what an image (a stranger's input) may make it spend.

An image's producer chooses its TOC, names and chunk sizes; memory, time and disk must be bounded by these
limits, never by what the image declares. One frozen :class:`Limits` carries them all; ``DEFAULT_LIMITS``
is what every entry point uses unless given another. Each field has a config-file key (the field name with
``-`` for ``_``, e.g. ``max-toc-entries``); :meth:`Limits.from_mapping` reads such a mapping and rejects
unknown keys and values that are not positive integers.

========================== ====================== ==========================================================
key                        default                bounds
========================== ====================== ==========================================================
max-chunk-size             1 GiB                  uncompressed size of one chunk (c/storage writes whole
                                                  small files as one chunk; large ones are cut far below)
max-zero-chunk-size        1 GiB                  one ``chunkType: zeros`` run (hashed when first served)
max-toc-compressed-size    150 MiB                compressed TOC bytes (c/storage ``maxTocSize``)
max-toc-size               150 MiB                decompressed TOC JSON
max-toc-entries            1,000,000              TOC entries of one layer (mount memory is ~linear in it)
max-path-depth             1,024                  components of one path (Linux PATH_MAX 4096 allows ~2k)
max-name-length            255                    bytes of one path component (Linux NAME_MAX)
max-path-length            4,096                  bytes of one whole path or link target (PATH_MAX)
max-xattr-size             65,536                 bytes of one xattr value (Linux XATTR_SIZE_MAX)
max-xattr-count            1,024                  xattrs of one entry
max-xattr-name-length      255                    bytes of one xattr name (Linux XATTR_NAME_MAX)
max-concurrent-fetches     8                      range requests of one mount in flight at once
max-read-materialize       16 MiB                 chunk bytes one read may hold in memory; bigger chunks
                                                  are decoded streaming into the store, in pieces
========================== ====================== ==========================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fs.errors import FormatError

__all__ = ["DEFAULT_LIMITS", "Limits"]

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one image may make zsnap spend (see the module docstring for the table).

    Every field is a positive integer. Create a variant with :meth:`replace` or :meth:`from_mapping`.
    """

    max_chunk_size: int = 1024 * _MiB
    max_zero_chunk_size: int = 1024 * _MiB
    max_toc_compressed_size: int = 150 * _MiB
    max_toc_size: int = 150 * _MiB
    max_toc_entries: int = 1_000_000
    max_path_depth: int = 1024
    max_name_length: int = 255
    max_path_length: int = 4096
    max_xattr_size: int = 65536
    max_xattr_count: int = 1024
    max_xattr_name_length: int = 255
    max_concurrent_fetches: int = 8
    max_read_materialize: int = 16 * _MiB

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"limit {config_key(f.name)} must be a positive integer, got {value!r}")

    def replace(self, **changes: int) -> Limits:
        """A copy with ``changes`` (field names) applied and validated."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, base: Limits | None = None) -> Limits:
        """Limits from config-file keys (``max-toc-entries = 500000``); keys not given keep ``base``.

        Raises:
            FormatError: an unknown key or a value that is not a positive integer (the message names it).
        """
        known = {config_key(f.name): f.name for f in dataclasses.fields(cls)}
        changes: dict[str, int] = {}
        for key, value in values.items():
            name = known.get(key)
            if name is None:
                raise FormatError(f"unknown limit {key!r} (known: {', '.join(sorted(known))})")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise FormatError(f"limit {key!r} must be a positive integer, got {value!r}")
            changes[name] = value
        return dataclasses.replace(base or DEFAULT_LIMITS, **changes)

    def to_mapping(self) -> dict[str, int]:
        """``{config key: value}`` for every limit (what ``from_mapping`` reads)."""
        return {config_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def config_key(field_name: str) -> str:
    """The config-file key of a :class:`Limits` field (``max_toc_entries`` -> ``max-toc-entries``)."""
    return field_name.replace("_", "-")


#: The limits every entry point uses unless it is given others.
DEFAULT_LIMITS = Limits()
