"""The lazy host's registry clients: one per (registry, plain-HTTP) pair, or one layout reader per OCI
layout, opened on first use and closed with the host (its exit stack), whatever image needed it first."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from fs.registry import Credentials, ImageReference, OciLayout, open_registry_client
from fs.registry.endpoint import LayoutReader

__all__ = ["HostClients"]


class HostClients:
    """Clients shared by every image a host attaches.

    Args:
        exits: where the registry clients are entered (closed when it closes).
        plain_http: default for registries not named per call (None: loopback only).
        fetch_timeout: per-request timeout of the registry clients.
        auth: registry host -> (username, password); docker_config: credentials for the other hosts.
    """

    def __init__(
        self, exits: contextlib.AsyncExitStack, *, plain_http: bool | None, fetch_timeout: float,
        auth: Mapping[str, tuple[str, str]], docker_config: Path | None,
    ) -> None:  # fmt: skip
        self._exits = exits
        self._plain_http = plain_http
        self._fetch_timeout = fetch_timeout
        self._auth = auth
        self._docker_config = docker_config
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._lock = trio.Lock()

    async def get(self, ref: ImageReference, plain_http: bool | None) -> Any:
        """The client for ``ref`` (a ``RegistryClient`` or, for ``oci:`` references, a ``LayoutReader``);
        ``plain_http`` None takes the host's default."""
        if ref.transport == "oci":
            assert ref.path is not None
            key: tuple[Any, ...] = ("oci", str(ref.path))
        else:
            plain = self._plain_http if plain_http is None else plain_http
            key = ("docker", ref.registry, plain)
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                if key[0] == "oci":
                    client = LayoutReader(OciLayout(ref.path))  # type: ignore[arg-type]
                else:
                    login = self._auth.get(ref.registry)
                    client = await self._exits.enter_async_context(
                        open_registry_client(
                            ref.registry,
                            plain_http=key[2],
                            timeout=self._fetch_timeout,
                            credentials=Credentials(*login) if login else None,
                            docker_config=self._docker_config,
                        )
                    )
                self._clients[key] = client
        return client
