"""Lazy layers for ``Prepare``: the one seam between the gRPC daemon and the lazy host (``fs.lazy.host``).

containerd asks for a layer with ``Prepare(key, parent, labels)``. When the labels name the image and the
layer (CRI pulls with ``disable_snapshot_annotations = false``, or ``ctr-remote images rpull``) and the
target label ``containerd.io/snapshot.ref`` is set, :meth:`RemoteLayers.resolve` asks the lazy host to
attach the whole image (all layers at once, one manifest fetch, cached for the following Prepares of the
same image) and says whether this layer can be served lazily. The service then commits a lazy snapshot
under the target name and answers ALREADY_EXISTS, which makes containerd skip download and unpack.
Anything else (no labels, a layer that is not lazily readable, a registry that cannot be reached, a host
that is not running) is a :class:`Fallback` with its reason: the layer takes the normal path.

Threads: the gRPC handlers run on worker threads; the lazy host lives in the daemon's trio run. Every
call into the host goes through ``trio.from_thread.run`` with the run's token, bounded by a timeout.

Holders: an image attached for snapshots is held as ``snapshots:<manifest digest or ref>``; the service
detaches it when the last lazy snapshot of that image is removed.

Restart (:meth:`RemoteLayers.restore`, run by :func:`open_host` before the FUSE session answers): every
image that committed lazy snapshots reference is attached again under the same holder, so the host
rebuilds the inode numbers the kernel still holds (an adopted session, ``fs.lazy.restart``) before
serving. An image that cannot be attached is logged once; its layers answer ``EIO`` and its snapshots'
mounts try to attach it again. Then the store refs (``layer:<digest>``) of layers no committed snapshot
needs any more are dropped: a crash between a detach and its ref drop leaks them otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from fs.errors import ZsnapError
from fs.lazy.hostsession import open_lazy_host
from fs.lazy.options import HostOptions

from .config import ServeConfig

#: How many images without a lazily readable layer are remembered (so their Prepares skip the host).
NOT_LAZY_MEMORY = 1024
#: Images attached again at the same time by :meth:`RemoteLayers.restore`.
RESTORE_CONCURRENCY = 4
#: Seconds restoring may take in all (systemd's start timeout is 90 s by default): images not attached
#: by then are served no more until their next mount.
RESTORE_DEADLINE = 45.0
#: The lazy host's FUSE session's name in the service manager's fd store.
FD_STORE_NAME = "zsnap-fuse"
#: Seconds a failed attach is remembered: the image's other layers fall back at once instead of each
#: waiting for the same unreachable registry.
FAILURE_MEMORY = 30.0

__all__ = [
    "Fallback", "LayerRequest", "LazyLayer", "RemoteLayers", "drop_unneeded_layer_refs",
    "fd_store_available", "layer_request", "open_host",
]  # fmt: skip

log = logging.getLogger(__name__)

TARGET_LABEL = "containerd.io/snapshot.ref"
CRI_IMAGE_REF = "containerd.io/snapshot/cri.image-ref"
CRI_LAYER_DIGEST = "containerd.io/snapshot/cri.layer-digest"
CRI_MANIFEST_DIGEST = "containerd.io/snapshot/cri.manifest-digest"
CRI_IMAGE_LAYERS = "containerd.io/snapshot/cri.image-layers"
STARGZ_REFERENCE = "containerd.io/snapshot/remote/stargz.reference"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"


@dataclass(frozen=True)
class LayerRequest:
    """What a Prepare's labels say about the layer containerd wants.

    Attributes:
        target: the chain ID containerd will look the snapshot up by (``containerd.io/snapshot.ref``).
        image: the image reference (``docker://`` form), layer: the compressed layer digest,
        manifest: the manifest digest (None when only the stargz labels came, which carry none).
    """

    target: str
    image: str
    layer: str
    manifest: str | None = None


@dataclass(frozen=True)
class LazyLayer:
    """A layer the host serves: record this in the snapshot (``Record.lazy``) and mount ``path``."""

    digest: str
    image: str
    manifest: str
    holder: str
    path: Path

    def record(self) -> dict[str, str]:
        return {"digest": self.digest, "image": self.image, "manifest": self.manifest, "holder": self.holder}


@dataclass(frozen=True)
class Fallback:
    """The layer takes the normal path (containerd downloads and unpacks); ``reason`` says why."""

    reason: str


def _docker_ref(ref: str) -> str:
    return ref if "://" in ref else f"docker://{ref}"


def layer_request(labels: Mapping[str, str]) -> LayerRequest | None:
    """The lazy request the labels of a Prepare carry, or None if they carry none (pure)."""
    target = labels.get(TARGET_LABEL)
    if not target:
        return None
    if labels.get(CRI_IMAGE_REF) and labels.get(CRI_LAYER_DIGEST):
        return LayerRequest(
            target=target, image=_docker_ref(labels[CRI_IMAGE_REF]), layer=labels[CRI_LAYER_DIGEST],
            manifest=labels.get(CRI_MANIFEST_DIGEST) or None,
        )  # fmt: skip
    if labels.get(STARGZ_REFERENCE) and labels.get(STARGZ_DIGEST):
        image = _docker_ref(labels[STARGZ_REFERENCE])
        return LayerRequest(target=target, image=image, layer=labels[STARGZ_DIGEST])
    return None


class RemoteLayers:
    """Attaches images on the lazy host for Prepare and finds their layers' directories.

    Args:
        host: the running lazy host (``fs.lazy.host``), or None when lazy serving is off.
        token: the trio token of the run the host lives in.
        timeout: seconds an attach may take before the Prepare falls back to the normal path.
        registry: the plain-HTTP hosts (``RegistryConfig.plain_http``) passed per attach; None: none.
    """

    def __init__(self, host: Any, token: trio.lowlevel.TrioToken | None, *, timeout: float = 60.0,
                 registry: Any = None) -> None:  # fmt: skip
        self._host = host
        self._token = token
        self._timeout = timeout
        self._plain_http = frozenset(registry.plain_http) if registry is not None else frozenset()
        self._lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}
        self._attached: dict[str, dict[str, Any]] = {}  # holder -> {layer digest: AttachedLayer}
        # images with no lazily readable layer: detached at once, answered without attaching again
        self._not_lazy: dict[str, None] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # holder -> (monotonic time, reason)

    @property
    def enabled(self) -> bool:
        return self._host is not None

    def use_host(self, host: Any) -> None:
        """Serve lazy layers from ``host`` (None: lazy serving is off)."""
        self._host = host

    async def restore(self, host: Any, lazy_records: Sequence[Mapping[str, str]]) -> list[str]:
        """Attach again, on ``host`` (from its trio run, before it serves), every image these lazy
        records (``Record.lazy`` of committed snapshots) name, each under its recorded holder.

        Returns:
            The holders that could not be attached (each logged once; their layers answer EIO).
        """
        self._host = host
        images: dict[str, tuple[str, str | None, set[str]]] = {}
        for lazy in lazy_records:
            image, manifest, digests = images.setdefault(
                lazy["holder"], (lazy["image"], lazy.get("manifest") or None, set())
            )
            digests.add(lazy["digest"])
        failed: list[str] = []
        limiter = trio.CapacityLimiter(RESTORE_CONCURRENCY)

        async def one(holder: str, image: str, manifest: str | None, digests: set[str]) -> None:
            async with limiter:
                registry = image.removeprefix("docker://").split("/", 1)[0]
                plain = True if registry in self._plain_http else None
                try:
                    with trio.fail_after(self._timeout):
                        attached = await host.attach_image(
                            image, holder=holder, manifest_digest=manifest, plain_http=plain
                        )
                except (ZsnapError, OSError, ValueError, trio.TooSlowError) as exc:
                    reason = (
                        exc if not isinstance(exc, trio.TooSlowError) else f"took over {self._timeout:g} s"
                    )
                    log.error(
                        "cannot serve %d lazy layer(s) of %s again after the restart (reads of them fail "
                        "with EIO; their next mount tries again): %s", len(digests), image, reason,
                    )  # fmt: skip
                    failed.append(holder)
                    await host.mark_lost(sorted(digests))
                    return
            with self._lock:
                self._attached[holder] = {layer.digest: layer for layer in attached}

        with trio.move_on_after(RESTORE_DEADLINE):  # readers wait meanwhile, and systemd for READY=1
            async with trio.open_nursery() as nursery:
                for holder, (image, manifest, digests) in images.items():
                    nursery.start_soon(one, holder, image, manifest, digests)
        for holder, (image, _, digests) in images.items():
            if holder not in self._attached and holder not in failed:
                log.error(
                    "cannot serve %d lazy layer(s) of %s again after the restart (reads of them fail "
                    "with EIO; their next mount tries again): restoring took over %g s",
                    len(digests), image, RESTORE_DEADLINE,
                )  # fmt: skip
                failed.append(holder)
                await host.mark_lost(sorted(digests))
        if images:
            log.info("restored %d of %d lazily served image(s)", len(images) - len(failed), len(images))
        return failed

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def bounded() -> Any:
            with trio.fail_after(self._timeout):
                return await fn(*args, **kwargs)

        return trio.from_thread.run(bounded, trio_token=self._token)

    def _attach(self, image: str, manifest: str | None, holder: str, *, lazy_only: bool) -> dict[str, Any]:
        """The image's attached layers by digest; ``{}`` if it has no lazily readable layer (not attached).

        ``lazy_only``: an image without a lazily readable layer is not attached at all, as the host decides
        from the manifest it resolves (it would otherwise download every layer whole).
        """
        with self._lock:
            image_lock = self._image_locks.setdefault(holder, threading.Lock())
        with image_lock:  # one attach per image, however many Prepares race for its layers
            layers = self._attached.get(holder)
            if layers is not None:
                return layers
            registry = image.removeprefix("docker://").split("/", 1)[0]
            plain = True if registry in self._plain_http else None
            attached = self._call(
                self._host.attach_image, image, holder=holder, manifest_digest=manifest, plain_http=plain,
                lazy_only=lazy_only,
            )  # fmt: skip
            if not attached:  # lazy_only: nothing was attached
                self._remember_not_lazy(holder)
                return {}
            layers = {layer.digest: layer for layer in attached}
            if not any(layer.lazy for layer in attached):  # do not keep the image attached for nothing
                self._remember_not_lazy(holder)
                self._call(self._host.detach, holder)
                return {}
            self._attached[holder] = layers
            return layers

    def _remember_not_lazy(self, holder: str) -> None:
        with self._lock:
            self._not_lazy[holder] = None
            while len(self._not_lazy) > NOT_LAZY_MEMORY:
                del self._not_lazy[next(iter(self._not_lazy))]

    def resolve(self, request: LayerRequest) -> LazyLayer | Fallback:
        """Attach ``request.image`` (once per image) and say whether its layer can be served lazily.

        Never raises for registry, format or timeout trouble: those become a :class:`Fallback`.
        """
        if self._host is None:
            return Fallback("lazy serving is off")
        holder = f"snapshots:{request.manifest or request.image}"
        if holder in self._not_lazy:
            return Fallback(f"{request.image} has no lazily readable layer")
        failed = self._failed.get(holder)
        if failed is not None and time.monotonic() - failed[0] < FAILURE_MEMORY:
            return Fallback(f"{failed[1]} ({time.monotonic() - failed[0]:.0f} s ago)")
        try:
            layers = self._attach(request.image, request.manifest, holder, lazy_only=True)
        except (ZsnapError, OSError, ValueError) as exc:
            return self._failure(holder, f"cannot attach {request.image}: {exc}")
        except trio.TooSlowError:
            return self._failure(
                holder, f"cannot attach {request.image}: took longer than {self._timeout:g} s"
            )
        except trio.RunFinishedError:
            return Fallback("the daemon is stopping")
        if not layers:
            return Fallback(f"{request.image} has no lazily readable layer")
        layer = layers.get(request.layer)
        if layer is None:
            return Fallback(f"layer {request.layer} is not in {request.image}")
        if not layer.lazy:
            return Fallback(f"layer {request.layer} of {request.image} is not lazily readable")
        return LazyLayer(
            digest=request.layer, image=request.image, manifest=request.manifest or "", holder=holder,
            path=Path(layer.path),
        )  # fmt: skip

    def _failure(self, holder: str, reason: str) -> Fallback:
        with self._lock:
            now = time.monotonic()
            self._failed = {h: f for h, f in self._failed.items() if now - f[0] < FAILURE_MEMORY}
            self._failed[holder] = (now, reason)
        return Fallback(reason)

    def layer_dir(self, lazy: Mapping[str, str]) -> Path:
        """The directory of a lazy snapshot's layer, attaching its image again if this daemon has not
        (it could not be restored at start, or its last attach failed).

        Raises:
            ZsnapError: lazy serving is off, or the image cannot be attached.
        """
        if self._host is None:
            raise ZsnapError("lazy serving is off", layer=lazy.get("digest"))
        holder = lazy["holder"]
        if holder not in self._attached:
            try:
                self._attach(lazy["image"], lazy.get("manifest") or None, holder, lazy_only=False)
            except trio.TooSlowError:
                raise ZsnapError("timed out re-attaching the image", image=lazy["image"]) from None
        return Path(self._host.layer_path(lazy["digest"]))

    def release(self, holder: str) -> None:
        """Detach the image held by ``holder`` (its last lazy snapshot is gone)."""
        if self._host is None:
            return
        with self._lock:
            self._attached.pop(holder, None)
        try:
            self._call(self._host.detach, holder)
        except (ZsnapError, OSError, trio.TooSlowError) as exc:
            log.error("cannot detach %s from the lazy host: %s", holder, exc)

    def statistics(self) -> tuple[int, int]:
        """(images attached, distinct layers attached) by this daemon's snapshots: a layer that several
        images share is served once, so it counts once."""
        with self._lock:
            return len(self._attached), len({d for layers in self._attached.values() for d in layers})


def host_options(config: ServeConfig) -> HostOptions:
    """``HostOptions`` from the daemon config: credentials (``registry.auth``, ``registry.docker_config``)
    reach the host's registry clients; plain-HTTP registries are passed per attach
    (:meth:`RemoteLayers._attach`). ``registry.mirrors`` are not used by zsnap's own fetches yet:
    containerd's pull goes through its own mirror configuration, the lazy reads to the image's registry."""
    return HostOptions(
        auth=config.registry.auth,
        docker_config=config.registry.docker_config,
        prefetch=config.prefetch,
        background_fetch=config.background_fetch,
        fetch_timeout=config.fetch_timeout,
        prefetch_wait=config.prefetch_wait,
        limits=config.limits,
        fd_store_name=FD_STORE_NAME if fd_store_available() else None,
    )


def fd_store_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a service manager keeps fds for this process: ``NOTIFY_SOCKET`` is set and ``FDSTORE``
    (set by systemd 254 from ``FileDescriptorStoreMax=``; the unit sets it for older versions) is a
    positive number. A manager without a store would drop the fd, and the mount would die unserved."""
    env = os.environ if environ is None else environ
    fdstore = env.get("FDSTORE", "")
    return bool(env.get("NOTIFY_SOCKET")) and fdstore.isdigit() and int(fdstore) > 0


def drop_unneeded_layer_refs(store: Any, needed: set[str]) -> list[str]:
    """Drop the ``layer:<digest>`` store holders of layers not in ``needed`` (worker thread); returns
    the holders dropped."""
    dropped = []
    for holder in store.holders("layer:"):
        if holder.removeprefix("layer:") not in needed:
            store.drop_holder(holder)
            dropped.append(holder)
    if dropped:
        log.info("dropped the store refs of %d layer(s) no snapshot needs any more", len(dropped))
    return dropped


@contextlib.asynccontextmanager
async def open_host(
    config: ServeConfig,
    store: Any,
    *,
    restore: Callable[[Any], Awaitable[None]] | None = None,
    keep_mounted: Callable[[], bool] = lambda: True,
) -> AsyncIterator[Any]:
    """The lazy host for the daemon (FUSE at ``<root>/mnt``), or None when lazy serving is off.

    ``restore(host)`` runs before the session answers (see the module docstring). With a service manager's
    fd store (:func:`fd_store_available`) the session is adopted from / kept in the store across restarts
    (unless ``keep_mounted()`` says False at exit); otherwise it is unmounted on exit."""
    if not config.lazy:
        log.info("lazy layers are off (lazy = false): every layer takes the normal path")
        yield None
        return
    async with open_lazy_host(
        config.root, store, options=host_options(config), restore=restore, keep_mounted=keep_mounted
    ) as host:
        yield host
