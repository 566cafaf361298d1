"""The snapshotter's errors: one class per gRPC status containerd understands, and bad configuration.

They extend zsnap's tree (``fs.errors``)::

    ZsnapError
    ├── SnapshotError              a Snapshots API call cannot be done as asked
    │   ├── SnapshotNotFound       NOT_FOUND: no snapshot under that key (or parent)
    │   ├── SnapshotExists         ALREADY_EXISTS: the key or name is taken
    │   ├── SnapshotPrecondition   FAILED_PRECONDITION: wrong kind, or a parent with children
    │   └── SnapshotInvalid        INVALID_ARGUMENT: bad key, label, filter or field mask
    └── ConfigError                the daemon configuration has an unknown key or a bad value

``snapshotter.service.grpc_code`` turns them (and any other error) into gRPC status codes, in one place.
"""

from __future__ import annotations

from fs.errors import ZsnapError

__all__ = [
    "ConfigError",
    "SnapshotError",
    "SnapshotExists",
    "SnapshotInvalid",
    "SnapshotNotFound",
    "SnapshotPrecondition",
]


class SnapshotError(ZsnapError):
    """A Snapshots API call cannot be done as asked."""


class SnapshotNotFound(SnapshotError):
    """No snapshot under that key (or the named parent does not exist)."""


class SnapshotExists(SnapshotError):
    """The key or commit name is already taken."""


class SnapshotPrecondition(SnapshotError):
    """The snapshot is of the wrong kind for the call, or is a parent that still has children."""


class SnapshotInvalid(SnapshotError):
    """The request itself is malformed: empty or oversized key, label, filter or field mask."""


class ConfigError(ZsnapError):
    """The daemon's configuration (TOML file or flags) has an unknown key or a bad value."""
