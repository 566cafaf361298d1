"""The lazy file system: one pyfuse3 mount whose top-level directories are image layers, served on demand.

Layout (one module per stage; imports go downwards only)::

    inodes.py     LayerIndex/tar entries -> InodeTable; whiteouts -> 0/0 char devices, opaque xattr  pure
    scheduler.py  FetchScheduler: on-demand > prefetch > background fetch slots                        pure
    decode.py     chunk bytes: zstd across frames / gzip members, inner offset, sha256 check           pure
    stats.py      MountStats: counters, latency percentiles, the --stats-file JSON                     pure
    fetcher.py    ChunkFetcher: store hit -> pread | miss -> coalesce -> range GET -> verify -> store  I/O
    tarindex.py   index of an uncompressed tar (layers that cannot be read lazily)                     pure
    layer.py      open a layer: verified TOC -> LayerIndex (lazy), or whole blob -> store (non-lazy)  I/O
    image.py      REF -> manifest (host platform) -> config -> LayerDescriptors; oci: layouts         I/O
    prefetch.py   prefetch marked files, then background-fetch the rest                              I/O
    ops.py        LazyOperations (pyfuse3): lookup/getattr/readdir/open/read/...; errors -> EIO       I/O
    system.py     overlay/bind mount command, mountinfo, read_ahead_kb, mount records               OS
    mount.py      run_mount: the life cycle behind ``zsnap mount`` (FUSE + overlayfs, signals, stats) I/O

Contracts worth knowing:

* Trust comes from the manifest: a TOC is verified against the digest in the layer annotations before it
  is parsed; every chunk is hashed against its TOC digest before it is served or cached; a mismatch is EIO.
* Chunks are content-addressed in the store (key = chunk digest). A mount refs what it fetched under
  ``mount:<id>`` (bound to the serving process) and drops the holder at exit: the cache outlives mounts,
  evictable by ``zsnap store gc``.
* Non-UTF-8 file names come out of any JSON TOC as U+FFFD (the writers' encoders replace them); only
  layers served whole (plain tar/gzip/zstd) keep the raw bytes.
* Never read a mount from the process that serves it (the trio thread would deadlock): tests and
  benchmarks run ``zsnap mount`` as a subprocess.
"""
