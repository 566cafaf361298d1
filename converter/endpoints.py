"""Where images come from and go to: a registry repository or an OCI layout, behind one interface.

The interface lives in :mod:`fs.registry.endpoint` (shared with the lazy mount); the converter talks to an
:class:`Endpoint` and never cares which transport is behind it. Blobs are always moved as files (streamed,
digest-verified): a layer is never held in memory. ``Endpoint.get_manifest`` returns a
:class:`~fs.registry.client.Manifest`, which unpacks as ``data, media_type, digest``.
"""

from __future__ import annotations

from fs.registry.endpoint import (
    Endpoint,
    LayoutEndpoint,
    ProgressFn,
    RegistryEndpoint,
    open_endpoint,
)

__all__ = ["Endpoint", "LayoutEndpoint", "ProgressFn", "RegistryEndpoint", "open_endpoint"]
