"""The lazy file system: one pyfuse3 session whose top-level directories are image layers, served on demand.

Layout (one module per stage; imports go downwards only)::

    inodes.py     InodeTable: per-layer LayerTrees (inode = slot<<32|index), linked/unlinked at run
                  time, freed when the kernel forgets them (lookup counts)                          pure
    treebuild.py  entries -> LayerTree; whiteouts -> 0/0 char devices, opaque xattr; image trusted.*
                  xattrs dropped                                                                     pure
    slots.py      LayerSlots: persistent layer digest -> slot map (stable inode numbers)             I/O
    scheduler.py  FetchScheduler: on-demand > prefetch > background fetch slots                        pure
    readahead.py  BlobReadahead: blob-order read-ahead windows for readers walking files in order      pure
    storeio.py    StoreIO: store writes (LMDB commits, blob files) in worker threads, one limiter     I/O
    decode.py     chunk bytes: zstd across frames / gzip members, inner offset, sha256 check           pure
    stats.py      MountStats: counters, latency percentiles, the --stats-file JSON                     pure
    flights.py    Flights: chunks in flight by digest, coalesced range GETs, decode + verify in a
                  thread, readers answered before the store put                                   I/O
    fetcher.py    ChunkFetcher: file range -> store hit (pread) | zeros | misses -> Flights          I/O
    early.py      EarlyRanges: a layer's hinted prefetch ranges (fs.format.hints) fetched while its TOC
                  is parsed; stands in for the registry client until the prefetch ends          I/O
    tarindex.py   index of an uncompressed tar (layers that cannot be read lazily)                     pure
    wholelayer.py a layer that cannot be read lazily: whole blob -> store, decompressed once under its
                  DiffID, its tar indexed                                                             I/O
    layer.py      open a layer: verified TOC -> LayerIndex (lazy), or whole (wholelayer.py);
                  OpenedLayer.read: the layer's own read path (chunks or pread of its tar)          I/O
    image.py      REF -> manifest (host platform) -> config -> LayerDescriptors, in two steps so that a
                  host fetches the config beside the TOCs; oci: layouts                               I/O
    prefetch.py   prefetch marked files, then background-fetch the rest                              I/O
    fills.py      LayerFills: each layer's prefetch then background fetch; none in the background
                  while any layer prefetches                                                         I/O
    ops.py        LazyOperations (pyfuse3): lookup/getattr/readdir/open/read/forget; errors -> EIO   I/O
    system.py     overlay/bind mount command, mountinfo, read_ahead_kb, mount records, mountpoint
                  checks                                                                              OS
    sdnotify.py   sd_notify / sd_listen_fds: READY, FDSTORE=1, LISTEN_FDS (systemd's protocol)       OS
    session.py    a FUSE session that outlives its process: capture FUSE_INIT at mount, adopt a passed
                  /dev/fuse fd by replaying it, FUSE_NOTIFY_RESEND what a dead process left           OS
    restart.py    the fd-store bookkeeping: store fd + INIT memfd, pick them out of LISTEN_FDS,
                  start_fuse_session (adopt, else mount afresh and store)                             OS
    options.py    HostOptions (how a host serves) and the session's FUSE mount options               pure
    invalidate.py EntryInvalidator: a detached layer's cached dentries dropped from a worker thread the
                  host owns, drained before the session ends                                         OS
    host.py       LazyHost: ONE FUSE session, images attached/detached at run time, layers shared
                  and refcounted by holder; one fetcher, scheduler and client pool (the daemon's API) I/O
    clients.py    HostClients: the host's registry clients, one per (registry, plain-HTTP) pair     I/O
    hostsession.py  open_lazy_host: mount the session (pyfuse3, or adopted through fs.lazy.restart when
                  fd_store_name is set, restored first), serve a LazyHost on it, close it (unmount,
                  or keep a stored session mounted)                                                   OS
    mount.py      run_mount: ``zsnap mount`` = a host + one image + overlayfs at MOUNTPOINT           I/O

Contracts worth knowing:

* Trust comes from the manifest: a TOC is verified against the digest in the layer annotations before it
  is parsed; every chunk is hashed against its TOC digest before it is served or cached; a mismatch is EIO.
* Chunks are content-addressed in the store (key = chunk digest). A layer refs what it fetched under
  ``layer:<digest>`` in the daemon (persistent, dropped when the layer is detached) or ``mount:<id>``
  under ``zsnap mount`` (bound to the serving process, dropped at exit): the cache outlives mounts,
  evictable by ``zsnap store gc``.
* The trio thread only answers FUSE: store writes, file writes, TOC parsing and tree building run in
  worker threads; the serving process never resolves a path that could lead through its own mount.
* Mounts for people (``zsnap mount``) are ``nosuid,nodev``; the session itself is ``suid,nodev`` with a
  0700 root (containerd's bind mounts of a layer inherit its flags).
* Non-UTF-8 file names come out of any JSON TOC as U+FFFD (the writers' encoders replace them); only
  layers served whole (plain tar/gzip/zstd) keep the raw bytes.
* Never read a mount from the process that serves it (the trio thread would deadlock): tests and
  benchmarks run ``zsnap mount`` as a subprocess.
"""
