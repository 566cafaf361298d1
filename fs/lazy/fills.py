"""The lazy host's fill tasks: per layer, its prefetch list, then the rest of it in the background.

One rule spans layers: no background fetch runs while any layer is prefetching (a background request in
flight would delay the prefetch, and :func:`~fs.lazy.prefetch.run_prefetch`'s "stored" wait, of every
other layer). The fetching itself, its priorities and quiet periods are :mod:`fs.lazy.prefetch` and
:mod:`fs.lazy.scheduler`; this module only sequences the phases and keeps the host's
``prefetch_done``/``background_done`` flags.
"""

from __future__ import annotations

import trio

from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.layer import OpenedLayer
from fs.lazy.prefetch import run_prefetch
from fs.lazy.scheduler import FetchScheduler
from fs.lazy.stats import MountStats

__all__ = ["LayerFills"]


class LayerFills:
    """Starts and tracks the fill of each layer (see the module docstring).

    Args:
        nursery: where the fill tasks run (the host's).
        prefetch, background: which phases run (``HostOptions.prefetch`` / ``background_fetch``).
        stats: the host's counters; its ``prefetch_done``/``background_done`` say whether a phase is
            running for any layer.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        fetcher: ChunkFetcher,
        scheduler: FetchScheduler,
        stats: MountStats,
        *,
        prefetch: bool,
        background: bool,
    ) -> None:
        self._nursery = nursery
        self._fetcher = fetcher
        self._scheduler = scheduler
        self._stats = stats
        self._phases = [p for p, on in (("prefetch", prefetch), ("background", background)) if on]
        self._filling: dict[str, set[str]] = {"prefetch": set(), "background": set()}
        self._prefetch_quiet = trio.Event()  # set while no layer is prefetching
        self._prefetch_quiet.set()

    def start(self, digest: str, opened: OpenedLayer, prefetched: trio.Event) -> trio.CancelScope | None:
        """Fill layer ``digest``; ``prefetched`` is set once its prefetch list is stored (at once when
        there is nothing to prefetch). Returns the scope that stops it (None: nothing to fetch)."""
        if not opened.lazy or not self._phases:
            prefetched.set()
            self._done(digest, self._phases)
            return None
        if "prefetch" not in self._phases:
            prefetched.set()
        elif self._prefetch_quiet.is_set():
            self._prefetch_quiet = trio.Event()
        for phase in self._phases:
            self._filling[phase].add(digest)
            setattr(self._stats, f"{phase}_done", False)
        scope = trio.CancelScope()
        self._nursery.start_soon(self._fill, digest, opened, prefetched, scope, list(self._phases))
        return scope

    async def _fill(
        self, digest: str, opened: OpenedLayer, prefetched: trio.Event, scope: trio.CancelScope,
        phases: list[str],
    ) -> None:  # fmt: skip
        scratch_stats = MountStats()  # run_prefetch's own flags; the host keeps the shared ones
        try:
            with scope:
                for phase in phases:
                    if phase == "background":
                        while self._filling["prefetch"]:
                            await self._prefetch_quiet.wait()
                    await run_prefetch(
                        [opened], self._fetcher, self._scheduler, scratch_stats,
                        prefetch=phase == "prefetch", background=phase == "background",
                    )  # fmt: skip
                    if phase == "prefetch":
                        opened.drop_early()
                        prefetched.set()
                    self._done(digest, [phase])
        finally:
            opened.drop_early()  # also when its prefetch was cancelled, or is off
            prefetched.set()
            self._done(digest, phases)

    def _done(self, digest: str, phases: list[str]) -> None:
        for phase in phases:
            self._filling[phase].discard(digest)
            if not self._filling[phase]:
                setattr(self._stats, f"{phase}_done", True)
                if phase == "prefetch":
                    self._prefetch_quiet.set()
