"""One FUSE session serving every attached image: layers are added and removed while it runs.

The API the snapshotter daemon (and ``zsnap mount``) builds on::

    async with open_lazy_host(root, store, options=HostOptions(...)) as host:   # fs.lazy.hostsession
        layers = await host.attach_image(ref, holder="snapshot:abc", manifest_digest=None, plain_http=None)
            # -> [AttachedLayer(digest, diff_id, path, lazy)], bottom-first, each layer once
        host.layer_path(digest)          # <fuse_dir>/<digest hex>
        await host.detach("snapshot:abc")
        host.stats                       # MountStats counters shared by every layer
        host.session_ended               # trio.Event: the FUSE session went away (unmounted under us)

:func:`~fs.lazy.hostsession.open_lazy_host` mounts ONE pyfuse3 session at ``options.fuse_dir`` (default
``<root>/mnt``) and runs it in its own nursery, with one :class:`~fs.lazy.fetcher.ChunkFetcher`, one
:class:`~fs.lazy.scheduler.FetchScheduler` (on-demand reads of any image before any prefetch or
background work) and one registry client per (registry, plain-http) pair. Leaving the block stops
prefetching, ends the session and unmounts it (nothing stacked on its layer directories may still be
mounted then: unmount overlays first). pyfuse3 holds one session per process: one host per process. All
methods are called from the host's trio run; nothing in this process may read the FUSE tree from the trio
thread (use a worker thread or another process).

:meth:`LazyHost.attach_image` resolves the image with one manifest request (by ``manifest_digest`` when
given; an index costs one more for this platform's manifest), then fetches the config while it opens the
distinct layers concurrently (TOC fetched and verified, or, once the config gave its DiffID, the whole
layer into the store; :mod:`fs.lazy.layer`) and adds each to the tree as ``<fuse_dir>/<digest hex>/``.
Once every layer is open their prefetch starts (the background fetch of any layer waits until no layer is
prefetching), and the call returns when the new lazy layers' prefetch lists are stored or after
``options.prefetch_wait`` seconds, whichever is first; it logs one INFO timing line per attach. A layer
already attached is shared: layers are refcounted by holder (any string the caller chooses, e.g. one per
snapshot); concurrent attaches of the same layer open it once. :meth:`LazyHost.detach` drops a holder; a
layer no holder wants any more leaves the root directory at once (the kernel's dentry is invalidated), its
prefetch stops, its store refs are dropped (its chunks stay cached, evictable), and its nodes are freed
once the kernel forgot them.

Store references: in the daemon (``options.bound_holder`` None) each layer's whole blobs/tars and fetched
chunks are ref'd by the persistent holder ``layer:<digest>``, which survives a crash and a restart (the
restarted daemon re-attaches; what it does not re-attach its owner drops with ``drop_holder``).
``zsnap mount`` passes ``bound_holder="mount:<id>"``, bound to its process so that a crash releases it.

Inode numbers (:mod:`fs.lazy.inodes`) are ``slot << 32 | entry index``; a layer's slot comes from a
persistent map ``<root>/lazy/slots.json`` (digest -> slot, never reused), so a restarted host gives a layer
the same inode numbers. Every store write and the slot map run in worker threads
(:class:`~fs.lazy.storeio.StoreIO`): the trio thread only answers FUSE (DESIGN.md decision 9).

Privileges: the session is mounted ``suid,nodev``: containerd bind-mounts single-layer snapshots, and a
bind mount keeps its source's ``nosuid``. Its root directory is mode 0700 (root only), so nobody else can
reach a setuid binary through ``<fuse_dir>``; overlays and bind mounts of layer directories decide their
own flags (``zsnap mount`` makes them ``nosuid,nodev`` unless asked otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from fs.errors import NotInStore, ZsnapError
from fs.lazy import session
from fs.lazy.clients import HostClients
from fs.lazy.early import EarlyBudget, EarlyRanges, start_early_fetch
from fs.lazy.fetcher import ChunkFetcher
from fs.lazy.fills import LayerFills
from fs.lazy.image import ResolvedImage, resolve_manifest, with_config
from fs.lazy.inodes import ROOT_INODE, InodeTable, LayerTree
from fs.lazy.invalidate import EntryInvalidator
from fs.lazy.layer import LayerDescriptor, OpenedLayer, open_layer, reads_lazily
from fs.lazy.ops import LazyOperations
from fs.lazy.options import HostOptions
from fs.lazy.scheduler import FetchScheduler, Priority
from fs.lazy.slots import LayerSlots
from fs.lazy.stats import MountStats
from fs.lazy.storeio import StoreIO
from fs.lazy.treebuild import build_layer_tree
from fs.registry import ImageReference

__all__ = ["AttachedLayer", "LazyHost"]

log = logging.getLogger(__name__)

#: layers opened at the same time by one attach: their TOC fetches share the link, so an image of many
#: layers pays about one round trip for all of them instead of one per group of four (10 GB bench image,
#: 12 layers, 9.2 MB of TOCs: see docs/DESIGN.md)
OPEN_CONCURRENCY = 16
#: worker threads decoding, indexing and building layer trees at once (host-wide): CPU work under the GIL,
#: so more would only hold more decoded TOCs in memory at once
PARSE_CONCURRENCY = 2
#: Seconds after an attach during which background fetch holds off (then it also waits for the quiet
#: period of fs.lazy.prefetch.QUIET): containerd finishes the pull, creates and starts the container in
#: that time, and its first reads should not queue behind background batches. (SOCI waits 30 s after a
#: new layer.) Store writes of fetched chunks wait as long (fs.lazy.flights.Flights.defer_puts).
ATTACH_HOLD = 1.5


@dataclass(frozen=True)
class AttachedLayer:
    """One layer of an attached image: its directory in the FUSE tree and whether it is served lazily."""

    digest: str
    diff_id: str | None
    path: Path
    lazy: bool


@dataclass(eq=False)
class _Layer:
    """A layer of the host: opening, or linked in the tree."""

    digest: str
    holders: set[str] = field(default_factory=set)
    opened: OpenedLayer | None = None
    tree: LayerTree | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    opening: bool = False
    fill: trio.CancelScope | None = None
    fill_started: bool = False
    prefetched: trio.Event = field(default_factory=trio.Event)  # its prefetch list is stored (or none)
    open_s: float = 0.0  # open_layer: TOC fetch + verify + index (or the whole download)
    build_s: float = 0.0  # the tree's nodes

    @property
    def hex(self) -> str:
        return self.digest.partition(":")[2]


class LazyHost:
    """The running host; create with :func:`open_lazy_host` (see the module docstring)."""

    def __init__(
        self, root: Path, store: Any, options: HostOptions, nursery: trio.Nursery, fetcher: ChunkFetcher,
        scheduler: FetchScheduler, sio: StoreIO, stats: MountStats, exits: contextlib.AsyncExitStack,
    ) -> None:  # fmt: skip
        self.root = root
        self.options = options
        self.fuse_dir = options.fuse_dir or root / "mnt"
        self.scratch = options.scratch_dir or root / "scratch" / f"host-{os.getpid()}"
        self.stats = stats
        self.session_ended = trio.Event()
        self._store = store
        self._sio = sio
        self._nursery = nursery
        self._fetcher = fetcher
        self._scheduler = scheduler
        self._table = InodeTable(now_ns=time.time_ns())
        self._table.root.mode = stat.S_IFDIR | 0o700  # nobody but root walks into the layers directly
        self.ops = LazyOperations(self._table, fetcher, store, stats, on_free=self._freed)
        self._slots = LayerSlots(root / "lazy" / "slots.json")
        self._layers: dict[str, _Layer] = {}
        self._holders: dict[str, set[str]] = {}
        self._unlinked: dict[str, LayerTree] = {}  # left the tree, the kernel still holds inodes
        self._clients = HostClients(
            exits, plain_http=options.plain_http, fetch_timeout=options.fetch_timeout, auth=options.auth,
            docker_config=options.docker_config,
        )  # fmt: skip
        self._cpu = trio.CapacityLimiter(PARSE_CONCURRENCY)
        self._early_budget = EarlyBudget()
        self._fills = LayerFills(nursery, fetcher, scheduler, stats, prefetch=options.prefetch,
                                 background=options.background_fetch)  # fmt: skip
        self._serving = False  # the FUSE session runs (the kernel may be told about changes)
        self.invalidator = EntryInvalidator()
        nursery.start_soon(self.invalidator.run)
        self.fuse: session.FuseSession | None = None  # set when the session came from fs.lazy.restart

    # -- public API -------------------------------------------------------------------------------------

    def layer_path(self, digest: str) -> Path:
        """Where layer ``digest`` is (or would be) in the FUSE tree."""
        return self.fuse_dir / digest.partition(":")[2]

    @property
    def holders(self) -> dict[str, list[str]]:
        """Each holder's layer digests (a snapshot, for diagnostics)."""
        return {h: sorted(ds) for h, ds in self._holders.items()}

    def attached(self) -> list[str]:
        """Digests of the layers in the tree."""
        return [d for d, la in self._layers.items() if la.tree is not None]

    @property
    def serving(self) -> bool:
        """Whether the FUSE session answers requests (False while :func:`open_lazy_host` restores)."""
        return self._serving

    def session_started(self) -> None:
        """Called by :func:`~fs.lazy.hostsession.open_lazy_host` once the session answers: from now on
        the kernel is told about layers that leave the tree."""
        self._serving = True

    async def mark_lost(self, digests: list[str]) -> None:
        """Layers a previous process served that cannot be attached again (e.g. the registry is gone).

        The kernel may still hold their inode numbers (a running container's open files, an overlay's
        lower directory): requests for them get ``EIO`` instead of ``ENOENT`` until the layer is attached
        again. Call before the session serves (a restart restores first, then adopts).
        """
        for digest in digests:
            if digest not in self._layers:
                self.ops.lost_slots.add(await self._slots.slot(digest))

    async def attach_image(
        self,
        ref: ImageReference | str,
        *,
        holder: str,
        manifest_digest: str | None = None,
        plain_http: bool | None = None,
        lazy_only: bool = False,
    ) -> list[AttachedLayer]:
        """Attach every layer of ``ref`` for ``holder`` (see the module docstring).

        ``lazy_only``: attach nothing and return ``[]`` when no layer of the image can be read lazily
        (:func:`~fs.lazy.layer.reads_lazily`): the snapshotter unpacks such an image the normal way rather
        than have the host download every layer whole.

        Returns:
            The image's distinct layers, bottom-first (a layer listed twice keeps its topmost place).

        Raises:
            NotFoundError, FormatError, VerificationError, RegistryError: resolving or opening failed
                (the holder keeps only what it held before).
        """
        if not holder:
            raise ValueError("holder must be a non-empty string")
        if isinstance(ref, str):
            ref = ImageReference.parse(ref)
        t0 = time.monotonic()
        client = await self._clients.get(ref, plain_http)
        manifest, digest = await resolve_manifest(client, ref, manifest_digest=manifest_digest)
        t_resolved = time.monotonic()
        if not manifest.layers:
            raise ZsnapError(f"{ref} has no layers")
        bare = tuple(LayerDescriptor.from_descriptor(d) for d in manifest.layers)  # no DiffIDs yet
        if lazy_only and not any(reads_lazily(d) for d in bare):
            return []
        order = _topmost_once(bare)
        mine = self._holders.setdefault(holder, set())
        added = [d.digest for d in order if d.digest not in mine]
        for d in order:  # claimed before any await: a concurrent detach sees them
            self._layers.setdefault(d.digest, _Layer(d.digest)).holders.add(holder)
            mine.add(d.digest)
        resolved: list[ResolvedImage] = []
        try:
            limiter = trio.CapacityLimiter(OPEN_CONCURRENCY)
            async with trio.open_nursery() as n:

                async def config_then_whole_layers() -> None:
                    # The config (DiffIDs) comes while the lazy layers' TOCs do; a layer downloaded whole
                    # is checked against its DiffID, so it starts once the config is here.
                    image = await with_config(client, ref, manifest, digest)
                    resolved.append(image)
                    for d in _topmost_once(image.layers):
                        if not reads_lazily(d):
                            n.start_soon(self._ensure_open, d, client, ref.repository, limiter)

                n.start_soon(config_then_whole_layers)
                for d in order:
                    if reads_lazily(d):
                        n.start_soon(self._ensure_open, d, client, ref.repository, limiter)
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                await self._release(holder, added)
            leaves = _leaves(exc)
            if isinstance(exc, BaseExceptionGroup) and all(isinstance(e, ZsnapError) for e in leaves):
                raise leaves[0] from None  # one clear error for the caller, not a group of them
            raise
        missing = [d.digest for d in order if d.digest not in self._holders.get(holder, ())]
        if missing:  # detached while attaching
            raise ZsnapError(f"{ref}: holder {holder} was detached while its image was being attached")
        t_opened = time.monotonic()
        # the image's container starts in a moment: no background fetch may take the link before then
        self._scheduler.mark_active(Priority.PREFETCH, for_seconds=ATTACH_HOLD)
        if self.options.prefetch_wait <= 0:  # the container starts now: its reads find the bytes in memory
            self._fetcher.flights.defer_puts(ATTACH_HOLD)  # while the store writes wait
        # fills start once every layer is open: a layer's background fetch would otherwise start while
        # another layer's prefetch has not and take the bandwidth (and the fetcher's idle moments) first
        for d in order:
            la = self._layers.get(d.digest)
            if la is not None and la.tree is not None and not la.fill_started:
                self._start_fill(la)
        fresh = [self._layers[d] for d in added if d in self._layers]
        if self.options.prefetch_wait > 0 and fresh:
            with trio.move_on_after(self.options.prefetch_wait):
                for la in fresh:
                    await la.prefetched.wait()
        out = []
        for d in _topmost_once(resolved[0].layers):
            la = self._layers[d.digest]
            assert la.opened is not None
            out.append(AttachedLayer(d.digest, d.diff_id, self.layer_path(d.digest), la.opened.lazy))
        t_end = time.monotonic()
        log.info(
            "attached %s for %s: %d layer(s) (%d lazy, %d new) in %.3f s: manifest %.3f s, open (config "
            "beside TOC fetch+index, or whole download) %.3f s [slowest layer %.3f s], tree build %.3f s "
            "[sum], prefetch wait %.3f s (%s); TOC bytes so far %d",
            ref, holder, len(out), sum(a.lazy for a in out), len(fresh), t_end - t0, t_resolved - t0,
            t_opened - t_resolved, max((la.open_s for la in fresh), default=0.0),
            sum(la.build_s for la in fresh), t_end - t_opened,
            "done" if all(la.prefetched.is_set() for la in fresh) else "timed out", self.stats.toc_bytes,
        )  # fmt: skip
        return out

    async def detach(self, holder: str) -> None:
        """Drop ``holder``'s layers; a layer no holder wants any more leaves the tree. Idempotent."""
        if holder in self._holders:
            st = self.stats.to_dict()
            log.info(
                "detaching %s; host so far: %d requests, %d bytes (by priority %s, TOCs %d), "
                "%d cache misses, %d reads, fetch latency p50 %.3f s max %.3f s",
                holder, st["requests"], st["bytes_fetched"], st["bytes_by_priority"], st["toc_bytes"],
                st["cache_misses"], st["reads"], st["fetch_latency"]["p50"], st["fetch_latency"]["max"],
            )  # fmt: skip
        await self._release(holder, list(self._holders.get(holder, ())))

    # -- internals --------------------------------------------------------------------------------------

    def _layer_holder(self, digest: str) -> str:
        return self.options.bound_holder or f"layer:{digest}"

    async def _ensure_open(
        self, desc: LayerDescriptor, client: Any, repository: str, limiter: trio.CapacityLimiter
    ) -> None:
        la = self._layers.get(desc.digest)
        if la is None:  # detached meanwhile
            return
        if la.opened is not None and la.tree is not None:
            return
        if la.ready.is_set() or la.opening:
            await la.ready.wait()
            if la.error is not None:
                raise ZsnapError(f"layer {desc.digest} could not be opened: {la.error}") from la.error
            return
        la.opening = True
        try:
            async with limiter:
                await self._open(la, desc, client, repository)
        except BaseException as exc:
            la.error = exc
            if self._layers.get(la.digest) is la:
                del self._layers[la.digest]  # the next attach tries again
            raise
        finally:
            la.ready.set()

    async def _open(self, la: _Layer, desc: LayerDescriptor, client: Any, repository: str) -> None:
        holder = self._layer_holder(desc.digest)
        old = self._unlinked.pop(desc.digest, None)
        if old is not None:  # detached, not yet forgotten by the kernel: the same nodes come back
            opened: OpenedLayer = old.payload
            with contextlib.suppress(NotInStore):
                for digest in {desc.digest, opened.tar_digest} - {None}:
                    if not opened.lazy:
                        await self._sio.ref(digest, holder)  # type: ignore[arg-type]
            tree = old
        else:
            t0 = time.monotonic()
            early: EarlyRanges | None = None

            def fetch_hint() -> None:  # its hinted prefetch bytes come while the TOC is parsed
                nonlocal early
                early = start_early_fetch(
                    self._nursery, client, repository, desc, stats=self.stats, budget=self._early_budget
                )

            try:
                opened = await open_layer(
                    client, repository, desc, store=self._sio, stats=self.stats, holder=holder,
                    scratch=self.scratch, limits=self.options.limits, cpu_limiter=self._cpu,
                    on_toc=fetch_hint if self.options.prefetch else None,
                )  # fmt: skip
            except BaseException:
                if early is not None:
                    early.release()
                raise
            if early is not None:
                opened.use_early(early)  # dropped when its prefetch phase ends (fs.lazy.fills)
            t1 = time.monotonic()
            slot = await self._slots.slot(desc.digest)
            tree = await trio.to_thread.run_sync(_build, slot, desc.hex, opened, limiter=self._cpu)
            la.open_s, la.build_s = t1 - t0, time.monotonic() - t1
            self.ops.lost_slots.discard(slot)
        la.opened = opened
        if not la.holders:  # every holder left while it was opening
            if self._layers.get(la.digest) is la:
                del self._layers[la.digest]
            await self._drop_refs(la.digest)
            return
        self._table.insert(tree)
        la.tree = tree
        self.ops.total_size += tree.file_bytes

    async def _release(self, holder: str, digests: list[str]) -> None:
        mine = self._holders.get(holder)
        if mine is None:
            return
        for digest in digests:
            mine.discard(digest)
            la = self._layers.get(digest)
            if la is None:
                continue
            la.holders.discard(holder)
            if not la.holders and la.tree is not None:
                await self._remove(la)
        if not mine:
            self._holders.pop(holder, None)

    async def _remove(self, la: _Layer) -> None:
        """Take a layer out of the tree: stop its fill, unlink it, tell the kernel, drop its refs."""
        del self._layers[la.digest]
        if la.fill is not None:
            la.fill.cancel()
        self._fetcher.blob_ahead.forget(la.digest)
        tree = la.tree
        assert tree is not None
        self._table.unlink(tree.name)
        self.ops.total_size -= tree.file_bytes
        la.tree = None
        with contextlib.suppress(KeyError):
            self._table.tree(tree.slot)  # still held by the kernel: freed by forget
            self._unlinked[la.digest] = tree
        if not self._serving:  # restoring before the session runs: the kernel has nothing of it cached
            await self._drop_refs(la.digest)
            return
        # Ask the kernel to drop what it cached of the layer (deepest first, the layer's own name last):
        # an unhashed dentry is freed, and its inode forgotten, as soon as nobody uses it. Dentries
        # below a merely unhashed parent would otherwise stay cached until memory pressure.
        for node in tree.known_dirs():
            assert node.entries is not None
            for name in node.entries:
                self.invalidator.invalidate(node.inode, name)
        self.invalidator.invalidate(ROOT_INODE, tree.name.encode())
        await self._drop_refs(la.digest)

    async def _drop_refs(self, digest: str) -> None:
        if self.options.bound_holder is None:  # the shared bound holder is dropped at exit
            try:
                await self._sio.drop_holder(self._layer_holder(digest))
            except ZsnapError as exc:
                log.info("could not drop the store refs of layer %s: %s", digest, exc)

    def _freed(self, tree: LayerTree) -> None:
        opened: OpenedLayer | None = tree.payload
        if opened is not None and self._unlinked.get(opened.desc.digest) is tree:
            del self._unlinked[opened.desc.digest]

    def _start_fill(self, la: _Layer) -> None:
        assert la.opened is not None
        la.fill_started = True
        la.fill = self._fills.start(la.digest, la.opened, la.prefetched)


def _build(slot: int, name: str, opened: OpenedLayer) -> LayerTree:
    """Worker thread: the layer's nodes (always with overlay whiteouts: a layer may be shared by overlays
    and bind mounts alike) and the bytes of its regular files (statfs); then the layer drops what only
    building needed."""
    tree = build_layer_tree(slot, name, opened.iter_items(), overlay=True, payload=opened)
    opened.seal()
    return tree


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _topmost_once(layers: tuple[LayerDescriptor, ...]) -> list[LayerDescriptor]:
    """The distinct layers bottom-first, each at its topmost position."""
    seen: set[str] = set()
    top_down = []
    for d in reversed(layers):
        if d.digest not in seen:
            seen.add(d.digest)
            top_down.append(d)
    return list(reversed(top_down))
