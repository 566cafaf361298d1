"""``Store.stats()``: a frozen snapshot of what the store holds (feeds ``zsnap store stats``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StoreStats", "TempObjectStats"]


@dataclass(frozen=True)
class TempObjectStats:
    """One temp object: ``state`` is producing, ready or failed; ``holders`` the live claims' holders."""

    name: str
    state: str
    size: int | None
    holders: tuple[str, ...]


@dataclass(frozen=True)
class StoreStats:
    """Totals of one store.

    Attributes:
        objects, bytes: content-addressed blobs stored and their total size.
        refs: (blob, holder) refs; ``referenced_objects`` / ``referenced_bytes``: blobs with ≥ 1 ref.
        temp_objects: every temp object with its holders; ``temp_bytes``: sizes of the ready ones.
        holders: holders bound to a live process (``bind_holder``).
        max_size: the store's configured cap on blob bytes (None: uncapped).
    """

    root: str
    objects: int
    bytes: int
    refs: int
    referenced_objects: int
    referenced_bytes: int
    temp_objects: tuple[TempObjectStats, ...]
    temp_bytes: int
    holders: tuple[str, ...]
    max_size: int | None

    @classmethod
    def empty(cls, root: str) -> StoreStats:
        """The stats of a store that holds nothing (e.g. one not created yet under ``root``)."""
        return cls(root, 0, 0, 0, 0, 0, (), 0, (), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """One JSON object; temp objects as a list of ``{name, state, size, holders}``."""
        return json.dumps(self.to_dict(), sort_keys=True)
