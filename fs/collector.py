"""Pausing Python's cycle collector around bulk builds of objects that form no cycles.

A layer's index and its inode tree are hundreds of thousands of new objects, none in a reference cycle:
every generation-0 pass would re-scan them and a full one walk them all, for nothing to collect.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["collector_paused"]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cycle collector for the block and restore it after (also when the block raises).

    The switch is process-wide. A block entered while another thread's block has it paused leaves it
    as it found it (paused), and the first block turns it back on when it ends: builds running at once
    in worker threads end with the collector on, as it was before the first began.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
