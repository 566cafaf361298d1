"""How a lazy host serves: :class:`HostOptions` and the FUSE mount options of its session."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fs.limits import DEFAULT_LIMITS, Limits

__all__ = ["FUSE_OPTIONS", "HostOptions"]

#: pyfuse3 mount options: read-only, visible to every user (containers; the root dir is 0700), kernel
#: permission checks, setuid kept (bind mounts of a layer inherit the flag), device nodes never opened.
FUSE_OPTIONS = frozenset(
    {"fsname=zsnap", "subtype=zsnap", "ro", "allow_other", "default_permissions", "suid", "nodev"}
)


@dataclass(frozen=True)
class HostOptions:
    """How a :class:`LazyHost` serves.

    Attributes:
        prefetch: fetch the files a layer marks as needed first, once it is attached.
        background_fetch: then fetch the rest of every lazy layer at the lowest priority.
        fetch_timeout: a read of uncached data fails with EIO after this many seconds.
        read_ahead_kb: the session's kernel read-ahead (0 leaves the default).
        plain_http: default for registries that are not on loopback (None: loopback only).
        fuse_dir: where the session is mounted (default ``<root>/mnt``).
        bound_holder: one store holder for every layer, bound to this process (``zsnap mount``); None
            gives each layer the persistent holder ``layer:<digest>``.
        scratch_dir: download/decompression scratch (default ``<root>/scratch/host-<pid>``).
        prefetch_wait: :meth:`~fs.lazy.host.LazyHost.attach_image` returns once the prefetch lists of the
            image's new lazy layers are stored, or after this many seconds (0: at once). A container's
            first reads then hit the store instead of paying one registry round trip per file.
        fd_store_name: keep the session in the service manager's fd store under this name
            (:mod:`fs.lazy.restart`): adopt the connection a previous process stored there, else mount
            afresh and store it (when ``NOTIFY_SOCKET`` is set); at exit leave it mounted for the next
            start. None (``zsnap mount``): mount with pyfuse3 alone and unmount at exit.
        limits: what an image may make the host spend (TOC size/entries, names, chunk sizes, fetches in
            flight); a layer past them is refused at attach.
        auth: registry host -> (username, password) for its clients.
        docker_config: a ``docker login`` config.json to take credentials from (for hosts not in ``auth``).
    """

    prefetch: bool = True
    background_fetch: bool = True
    fetch_timeout: float = 30.0
    read_ahead_kb: int = 1024
    plain_http: bool | None = None
    fuse_dir: Path | None = None
    bound_holder: str | None = None
    scratch_dir: Path | None = None
    fd_store_name: str | None = None
    limits: Limits = DEFAULT_LIMITS
    prefetch_wait: float = 2.0
    auth: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    docker_config: Path | None = None
