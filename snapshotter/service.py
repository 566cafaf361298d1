"""``containerd.services.snapshots.v1.Snapshots`` over gRPC: protobuf in, Snapshotter calls, protobuf out.

This module translates and nothing else: messages to Python values and back, errors to gRPC status codes
(:func:`grpc_code`, the one place), call counts to metrics. The snapshot semantics live in
``snapshotter.overlay``, the lazy decision in ``snapshotter.remote``.

Lazy Prepare (the handshake containerd 1.6 understands, see ``remote``): when the labels name a layer the
lazy host can serve, a committed snapshot is recorded under the target name (``containerd.io/snapshot.ref``)
with the parent and labels given, and the call fails with ALREADY_EXISTS; containerd then finds that
snapshot with ``List``/``Stat`` and skips the layer's download and unpack.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from fs.errors import ZsnapError
from snapshotter.proto import mount_pb2, snapshots_pb2, snapshots_pb2_grpc

from .errors import SnapshotExists, SnapshotInvalid, SnapshotNotFound, SnapshotPrecondition
from .metastore import Record
from .overlay import Mount, Snapshotter
from .remote import LazyLayer, RemoteLayers, layer_request

__all__ = ["SnapshotsService", "grpc_code"]

log = logging.getLogger(__name__)

#: Infos per streamed List message (containerd's own service sends batches too).
LIST_BATCH = 100


class CallCounter(Protocol):
    def count_call(self, method: str, code: str) -> None: ...


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error raised while serving a call."""
    for cls, code in (
        (SnapshotNotFound, grpc.StatusCode.NOT_FOUND),
        (SnapshotExists, grpc.StatusCode.ALREADY_EXISTS),
        (SnapshotPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (SnapshotInvalid, grpc.StatusCode.INVALID_ARGUMENT),
        (ZsnapError, grpc.StatusCode.UNAVAILABLE),
    ):
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def info_message(record: Record) -> snapshots_pb2.Info:
    # The kind goes by label (Kind names match snapshots.proto): the typed form of the enum field.
    return snapshots_pb2.Info(
        name=record.key, parent=record.parent, kind=record.kind.name, labels=dict(record.labels),
        created_at=_timestamp(record.created), updated_at=_timestamp(record.updated),
    )  # fmt: skip


def mount_messages(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options) for m in mounts]


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Serve one call: map errors to status codes (``context.abort``), count it by method and code."""
    name = method.__name__

    @functools.wraps(method)
    def serve(self: SnapshotsService, request: Any, context: grpc.ServicerContext) -> Any:
        code = grpc.StatusCode.OK
        try:
            return method(self, request, context)
        except Exception as exc:
            code = grpc_code(exc)
            if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
                log.error("%s failed: %s", name, exc, exc_info=code == grpc.StatusCode.INTERNAL)
            else:
                log.debug("%s: %s: %s", name, code.name, exc)
            context.abort(code, str(exc))
        finally:
            self.metrics.count_call(name, code.name)

    return serve


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """The Snapshots servicer. Runs on grpcio's worker threads; every call is synchronous."""

    def __init__(self, snapshotter: Snapshotter, remote: RemoteLayers, metrics: CallCounter) -> None:
        self.snapshotter = snapshotter
        self.remote = remote
        self.metrics = metrics

    @_rpc
    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        labels = dict(request.labels)
        lazy = layer_request(labels)
        if lazy is not None:
            outcome = self.remote.resolve(lazy)
            if isinstance(outcome, LazyLayer):
                # Committed before (another namespace, a retried pull) is fine: containerd re-checks it.
                with contextlib.suppress(SnapshotExists):
                    self.snapshotter.create_lazy(lazy.target, request.parent, labels, outcome.record())
                raise SnapshotExists(f"target snapshot {lazy.target} exists (lazy layer {lazy.layer})")
            log_level = logging.WARNING if outcome.reason.startswith("cannot") else logging.INFO
            log.log(log_level, "layer %s takes the normal path: %s", lazy.layer, outcome.reason)
        mounts = self.snapshotter.prepare(request.key, request.parent, labels)
        return snapshots_pb2.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    @_rpc
    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        mounts = self.snapshotter.view(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=mount_messages(mounts))

    @_rpc
    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        return snapshots_pb2.MountsResponse(mounts=mount_messages(self.snapshotter.mounts(request.key)))

    @_rpc
    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.snapshotter.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_rpc
    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        record = self.snapshotter.remove(request.key)
        if record.lazy is not None:
            holder = record.lazy["holder"]
            still_used = any(r.lazy and r.lazy.get("holder") == holder for r in self.snapshotter.walk())
            if not still_used:
                self.remote.release(holder)
        return empty_pb2.Empty()

    @_rpc
    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        return snapshots_pb2.StatSnapshotResponse(info=info_message(self.snapshotter.stat(request.key)))

    @_rpc
    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        paths = list(request.update_mask.paths)
        record = self.snapshotter.update(request.info.name, dict(request.info.labels), paths)
        return snapshots_pb2.UpdateSnapshotResponse(info=info_message(record))

    @_rpc
    def List(self, request: Any, context: grpc.ServicerContext) -> Any:
        infos = [info_message(record) for record in self.snapshotter.walk(list(request.filters))]
        return _batches(infos)

    @_rpc
    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        usage = self.snapshotter.usage(request.key)
        return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_rpc
    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        removed = self.snapshotter.cleanup()
        if removed:
            log.info("cleanup removed %d orphan snapshot directories", len(removed))
        return empty_pb2.Empty()


def _batches(infos: list[snapshots_pb2.Info]) -> Iterator[snapshots_pb2.ListSnapshotsResponse]:
    for start in range(0, len(infos), LIST_BATCH):
        yield snapshots_pb2.ListSnapshotsResponse(info=infos[start : start + LIST_BATCH])
