"""systemd's notify protocol (``sd_notify(3)``), spoken directly: one datagram to ``$NOTIFY_SOCKET``.

``NOTIFY_SOCKET`` is a path of a ``SOCK_DGRAM`` unix socket, or an abstract name written with a leading
``@`` (sent as a leading NUL byte). Messages are newline-separated ``KEY=VALUE`` assignments: ``READY=1``
once the service accepts requests, ``STOPPING=1`` when it begins to shut down, ``STATUS=...`` free text.
Without ``NOTIFY_SOCKET`` (not started by systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]

log = logging.getLogger(__name__)


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=serving"``) to the service manager.

    Returns:
        True if a message was sent; False without ``NOTIFY_SOCKET`` or if sending failed (logged: a
        manager that cannot be told is not a reason to stop serving).
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.error("NOTIFY_SOCKET %r is neither a path nor an abstract name; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.error("cannot notify the service manager at %r: %s", address.replace("\0", "@"), exc)
        return False
    return True
