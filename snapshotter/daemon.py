"""Life cycle of ``zsnap serve``: store, lazy host, gRPC server on a unix socket, metrics, systemd notify.

Why a synchronous ``grpc.server`` with a thread pool (and not ``grpc.aio``): zsnap's event loop is trio
(DESIGN decision 7), and ``grpc.aio`` needs an asyncio loop of its own, which would mean a second event loop
on another thread plus a bridge anyway. grpcio's threaded server is its most used and best tested mode; the
Snapshots calls are short synchronous work (one LMDB transaction, a mkdir, a rename, a ``du``) that is right
at home on worker threads, and the few calls that need the lazy host (attaching an image at a lazy
``Prepare``, re-attaching after a restart, detaching) reach the trio run through ``trio.from_thread.run``
with its token (see ``snapshotter.remote``). The trio run owns the FUSE session and waits for signals.

Sequence (:func:`serve_snapshotter`): open the store at ``root`` (crash recovery happens here); open the lazy
host (its FUSE mount at ``<root>/mnt``) unless lazy serving is off or not available, and before its session
answers, attach again every image that committed lazy snapshots reference (``RemoteLayers.restore``) and
drop the store refs of layers nothing needs; bind the socket (refusing one another daemon still listens on,
replacing a stale one); start gRPC; start the metrics endpoint; ``READY=1``. On SIGTERM or SIGINT:
``STOPPING=1``, stop gRPC (in-flight calls get a grace period), close the host (requests in flight are
answered; FUSE is unmounted unless the service manager's fd store keeps it for the next start, which
SIGTERM allows and SIGINT does not), close the store.

Restart without breaking containers (systemd/README.md): under systemd with ``FileDescriptorStoreMax=``
the FUSE connection and its INIT request are kept in the fd store (``fs.lazy.restart``). The next start
rebuilds the same inode numbers from the metastore's lazy records, then adopts the connection and has the
kernel resend what the previous process left unanswered: readers in running containers stall, they do
not fail.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import trio

from fs.registry.http import warm_up as warm_up_clients
from fs.store import Store
from snapshotter.proto import snapshots_pb2_grpc

from .config import ServeConfig
from .errors import ConfigError
from .metastore import Kind, MetaStore
from .metrics import LazyCollector, Metrics, tap_fetches
from .notify import notify
from .overlay import Snapshotter
from .remote import RemoteLayers, drop_unneeded_layer_refs, open_host
from .service import SnapshotsService

__all__ = ["serve_snapshotter"]

log = logging.getLogger(__name__)

#: Seconds in-flight calls may take to finish at shutdown.
STOP_GRACE = 5.0


def _prepare_socket(path: Path) -> None:
    """Make the socket's directory; remove a stale socket file; refuse one a live daemon answers on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"socket path {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left behind by a crash
            return
    raise ConfigError(f"another process already listens on {path}")


async def _wait_for_stop(signals: Any, host: Any, received: list[int]) -> None:
    """Return on SIGTERM/SIGINT (appended to ``received``), or when the lazy host's FUSE session ended
    under us (unmounted by someone else): then serving lazy layers is impossible and systemd's restart
    is the remedy."""
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            async for signum in signals:
                log.info("%s: stopping", signal.Signals(signum).name)
                received.append(signum)
                break
            nursery.cancel_scope.cancel()

        async def on_session_end() -> None:
            await host.session_ended.wait()
            log.error("the lazy layers' FUSE session ended under us: stopping")
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        if getattr(host, "session_ended", None) is not None:
            nursery.start_soon(on_session_end)


def _start_grpc(config: ServeConfig, service: SnapshotsService) -> grpc.Server:
    _prepare_socket(config.socket)
    server = grpc.server(ThreadPoolExecutor(max_workers=config.grpc_threads, thread_name_prefix="grpc"))
    snapshots_pb2_grpc.add_SnapshotsServicer_to_server(service, server)
    try:
        bound = server.add_insecure_port(f"unix:{config.socket}")
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {config.socket}: {exc}") from None
    if not bound:
        raise ConfigError(f"cannot listen on {config.socket}")
    os.chmod(config.socket, 0o660)
    server.start()
    return server


async def serve_snapshotter(config: ServeConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the snapshotter daemon until SIGTERM/SIGINT.

    ``task_status.started(socket_path)`` once the socket accepts calls (and ``READY=1`` was sent).

    Raises:
        ConfigError: the socket cannot be bound (or another daemon listens on it).
        StoreError: the store at ``config.root`` cannot be opened.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as warm:
            # built off the event loop now, not inside the first pull (and on the thread serving FUSE)
            warm.start_soon(trio.to_thread.run_sync, warm_up_clients)
            store = await trio.to_thread.run_sync(
                lambda: Store.open(config.root, max_size=config.cache_max_size)
            )
        _freeze_startup_objects()
        try:
            meta = MetaStore(store.index)
            remote = RemoteLayers(
                None, trio.lowlevel.current_trio_token(), timeout=config.prepare_timeout,
                registry=config.registry,
            )  # fmt: skip

            async def restore(host: Any) -> None:
                started = time.monotonic()
                lazy = await trio.to_thread.run_sync(_committed_lazy_records, meta)
                await remote.restore(host, lazy)
                needed = {record["digest"] for record in lazy}
                await trio.to_thread.run_sync(drop_unneeded_layer_refs, store, needed)
                if lazy:
                    log.info("lazy layers restored in %.3f s", time.monotonic() - started)

            # SIGINT (an operator's Ctrl-C) really unmounts; SIGTERM (systemctl stop/restart) keeps a
            # session the fd store holds, for the next start
            received: list[int] = []
            keep = lambda: signal.SIGINT not in received  # noqa: E731
            async with open_host(config, store, restore=restore, keep_mounted=keep) as host:
                await _serve(config, store, host, meta, remote, signals, received, task_status)
        finally:
            await trio.to_thread.run_sync(store.close)


def _freeze_startup_objects() -> None:
    """Keep the cycle collector off what the daemon built to start (modules, clients, the store: ~50k
    objects): a full collection walks every tracked object, ~45 ms here, and one lands inside most
    attaches and container starts. Collected first, so that no garbage is frozen."""
    gc.collect()
    gc.freeze()


def _committed_lazy_records(meta: MetaStore) -> list[dict[str, str]]:
    """``Record.lazy`` of every committed lazy snapshot (worker thread)."""
    with meta.read() as txn:
        return [dict(r.lazy) for r in txn.records() if r.lazy is not None and r.kind == Kind.COMMITTED]


async def _serve(
    config: ServeConfig, store: Store, host: Any, meta: MetaStore, remote: RemoteLayers, signals: Any,
    received: list[int], task_status: Any,
) -> None:  # fmt: skip
    remote.use_host(host)  # None: lazy serving is off
    snapshotter = Snapshotter(config.root, meta, lazy_dir=remote.layer_dir)
    metrics = Metrics()
    host_stats = (lambda: host.stats) if host is not None else (lambda: None)
    metrics.add_collector(LazyCollector(host_stats, remote.statistics, store.stats))
    if host is not None:
        tap_fetches(host.stats, metrics.fetch_seconds.observe)
    server = _start_grpc(config, SnapshotsService(snapshotter, remote, metrics))
    try:
        where = f"serving on {config.socket}"
        if config.metrics_address is not None:
            try:
                port = metrics.serve(*config.metrics_address)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {config.metrics_address}: {exc}") from None
            where += f", metrics on {config.metrics_address[0]}:{port}"
        log.info("zsnap snapshotter %s (lazy layers %s)", where, "on" if host is not None else "off")
        notify(f"READY=1\nSTATUS={where}")
        task_status.started(config.socket)
        await _wait_for_stop(signals, host, received)
        notify("STOPPING=1")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: server.stop(STOP_GRACE).wait())
        metrics.close()
        with contextlib.suppress(FileNotFoundError):
            config.socket.unlink()
