"""The refcounted LMDB store: content-addressed blobs (chunk cache) and named temp objects.

Modules, bottom up::

    holders.py  process identity (pid + start time), liveness
    index.py    the LMDB environment and the one-transaction-per-operation helper
    records.py  index rows (blob records, refs, totals) and in-transaction operations on them
    blobs.py    content-addressed blobs: durable publish, pread through an fd cache, refs, access times
    packs.py    pack files: the small blobs of one batch in one file, their rows, repacking
    temp.py     named temp objects: the multi-process single-flight protocol (documented there)
    tempstate.py  temp records, naming, the per-name flock, TempHandle
    files.py    durable writes, OSError -> StoreError/DiskFull, the descriptor LRU
    atimes.py   last-access times: buffered by reads, written by one background flusher thread
    gc.py       collection (LRU under a cap) and crash recovery (orphans, dead holders)
    verify.py   the invariants check (``Store.verify``)
    stats.py    StoreStats; space.py: free-space checks and sizes
    store.py    the Store facade
"""

from .gc import GCReport
from .space import format_size, free_space, free_space_check, parse_size
from .stats import StoreStats, TempObjectStats
from .store import Store
from .tempstate import TempHandle

__all__ = [
    "GCReport",
    "Store",
    "StoreStats",
    "TempHandle",
    "TempObjectStats",
    "format_size",
    "free_space",
    "free_space_check",
    "parse_size",
]
