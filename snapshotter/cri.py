"""A minimal client of containerd's CRI image service (``runtime.v1.ImageService``), like ``crictl``.

crictl is not packaged here; tests and ``zsnap bench startup`` pull through CRI with these calls because a
CRI pull is what makes containerd send a proxy snapshotter the image labels it needs for lazy layers
(``ctr images pull`` sends none; docs/DESIGN.md, "Peer tools"). containerd must run with the CRI plugin
enabled and, for the labels, ``disable_snapshot_annotations = false``; CRI works in containerd's ``k8s.io``
namespace.
"""

from __future__ import annotations

import grpc

from fs.errors import ZsnapError
from snapshotter.proto import cri_pb2, cri_pb2_grpc

__all__ = ["CriError", "image_status", "pull_image", "remove_image"]

#: The containerd namespace CRI keeps its images, containers and snapshots in.
CRI_NAMESPACE = "k8s.io"


class CriError(ZsnapError):
    """A CRI call failed (containerd unreachable, image not found, pull failed); carries the gRPC code."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, image: str | None = None
                 ) -> None:  # fmt: skip
        super().__init__(message, image=image)
        self.code = code


def _call(containerd_socket: str, ref: str, method: str, request: object, timeout: float) -> object:
    with grpc.insecure_channel(f"unix:{containerd_socket}") as channel:
        stub = cri_pb2_grpc.ImageServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details()
            raise CriError(f"CRI {method} failed: {code.name}: {details}", code=code, image=ref) from None


def pull_image(containerd_socket: str, ref: str, timeout: float) -> str:
    """Pull ``ref`` (``HOST/REPO:TAG`` or ``@DIGEST``) through CRI, as kubelet or ``crictl pull`` would.

    Returns:
        The image reference CRI answers with (``sha256:<config digest>``, the image id).

    Raises:
        CriError: the pull failed or took longer than ``timeout`` seconds (code DEADLINE_EXCEEDED).
    """
    request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=ref))
    reply = _call(containerd_socket, ref, "PullImage", request, timeout)
    return reply.image_ref  # type: ignore[attr-defined,no-any-return]


def image_status(containerd_socket: str, ref: str, timeout: float = 30.0) -> cri_pb2.Image | None:
    """The CRI image record of ``ref``, or None if containerd does not have it."""
    request = cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=ref))
    reply = _call(containerd_socket, ref, "ImageStatus", request, timeout)
    return reply.image if reply.HasField("image") else None  # type: ignore[attr-defined]


def remove_image(containerd_socket: str, ref: str, timeout: float = 60.0) -> None:
    """Remove ``ref`` through CRI (missing is fine, as in CRI)."""
    request = cri_pb2.RemoveImageRequest(image=cri_pb2.ImageSpec(image=ref))
    _call(containerd_socket, ref, "RemoveImage", request, timeout)
