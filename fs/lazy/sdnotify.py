"""The systemd notify and file descriptor store protocol, without libsystemd.

A service tells its manager about itself with ``sd_notify``: one datagram of ``KEY=VALUE`` lines sent
to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). File descriptors ride along as ``SCM_RIGHTS``; with ``FDSTORE=1`` and ``FDNAME=name`` the
manager keeps them open for the service (its *file descriptor store*, systemd.service(5):
``FileDescriptorStoreMax=`` must allow them) and hands them back to the next start of the service
the same way it passes sockets: ``LISTEN_PID`` (the receiving process), ``LISTEN_FDS`` (how many, the
first is fd 3) and ``LISTEN_FDNAMES`` (their names, ``:``-separated). ``FDSTOREREMOVE=1`` with an
``FDNAME`` drops every stored fd of that name.

zsnap keeps its ``/dev/fuse`` connections there, so a restart of the daemon does not unmount the lazy
layers under running containers (see ``fs.lazy.session``). Tests play the manager's part themselves.
"""

from __future__ import annotations

import array
import os
import socket
from collections.abc import Iterable, Mapping

SD_LISTEN_FDS_START = 3
# systemd's fdname_is_valid(): at most 255 printable ASCII characters, no ':' (the list separator).
_FDNAME_MAX = 255


def _notify_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"unsupported NOTIFY_SOCKET address {value!r} (want a path or @abstract)")


def notify(state: str, fds: Iterable[int] = (), *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` assignments) to the service manager.

    Args:
      state: e.g. ``"READY=1"`` or ``"FDSTORE=1\\nFDNAME=fuse"``.
      fds: file descriptors to pass with the message (``SCM_RIGHTS``); the manager receives duplicates,
        the caller keeps its own.
      environ: where to look up ``NOTIFY_SOCKET`` (default ``os.environ``).

    Returns:
      False when there is no manager to tell (``NOTIFY_SOCKET`` unset or empty), True once sent.

    Raises:
      OSError: the socket exists but the message could not be delivered.
      ValueError: ``NOTIFY_SOCKET`` is neither a path nor an abstract name.
    """
    value = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not value:
        return False
    fd_list = list(fds)
    ancillary = (
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fd_list).tobytes())] if fd_list else []
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendmsg([state.encode()], ancillary, 0, _notify_address(value))
    return True


def check_fdname(name: str) -> str:
    """Return ``name`` if the service manager accepts it as an ``FDNAME``, else raise ValueError."""
    if not name or len(name) > _FDNAME_MAX or ":" in name or not all(" " <= c <= "~" for c in name):
        raise ValueError(f"invalid file descriptor name {name!r} (1-255 printable ASCII characters, no ':')")
    return name


def store_fds(name: str, fds: Iterable[int], *, environ: Mapping[str, str] | None = None) -> bool:
    """Put duplicates of ``fds`` in the manager's file descriptor store under ``name``.

    Returns False when there is no manager (nothing is kept then). The manager keeps every fd it is
    sent; storing the same open file twice under one name is harmless for systemd (it drops an fd
    that refers to a file it already holds) but callers should store each fd once.
    """
    return notify(f"FDSTORE=1\nFDNAME={check_fdname(name)}", fds, environ=environ)


def remove_stored_fds(name: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Ask the manager to close every stored fd named ``name``; False when there is no manager."""
    return notify(f"FDSTOREREMOVE=1\nFDNAME={check_fdname(name)}", environ=environ)


def listen_fds(*, unset_environment: bool = True) -> list[tuple[str, int]]:
    """The file descriptors the manager passed to this process, as ``(name, fd)`` in fd order.

    Follows sd_listen_fds_with_names(3): nothing is passed unless ``LISTEN_PID`` is this process
    (the variables are inherited by children, who must not take the fds). Names default to
    ``"unknown"`` when ``LISTEN_FDNAMES`` is missing. The fds are marked close-on-exec. With
    ``unset_environment`` the three variables are removed so that later calls and child processes
    see nothing.

    Raises:
      ValueError: the variables are present for this process but malformed.
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    names_value = os.environ.get("LISTEN_FDNAMES")
    if unset_environment:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    if not pid or not count or not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ValueError(f"LISTEN_FDS={count!r} is not a count")
    n = int(count)
    names = names_value.split(":") if names_value is not None else ["unknown"] * n
    if len(names) != n:
        raise ValueError(f"LISTEN_FDNAMES names {len(names)} fds but LISTEN_FDS={n}")
    passed = []
    for i, name in enumerate(names):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        passed.append((name, fd))
    return passed
