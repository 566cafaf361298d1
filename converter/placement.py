"""Give destinations a layer converted before, from the conversion record, without converting it.

The record (:mod:`converter.cache`) lists where the converted blob was pushed. A destination that has the
blob needs nothing; a registry destination that lacks it gets a cross-repository mount from a recorded
repository of the same registry (the registry itself answers whether the blob is still there, a HEAD
confirms the mount). Locations found stale are dropped from the record, so the next run does not try them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import trio

from converter.cache import CacheRecord, ConversionCache
from converter.progress import Reporter
from fs.errors import RegistryError, RegistryUnavailable
from fs.registry.endpoint import Endpoint, RegistryEndpoint

__all__ = ["location_of", "mount_origins", "place_recorded"]

log = logging.getLogger(__name__)


async def place_recorded(
    key: str,
    destinations: Sequence[Endpoint],
    record: CacheRecord,
    cache: ConversionCache,
    reporter: Reporter,
    layer: str,
) -> bool:
    """Give every destination the recorded blob without converting; False if one cannot get it.

    A destination that has the blob needs nothing; a registry destination tries a cross-repository
    mount from each recorded repository of its registry (the registry answers whether the blob is
    still there), then a HEAD confirms it. Locations found stale are dropped from the record.
    """
    for dest in destinations:
        here = location_of(dest)
        if await dest.has_blob(record.digest):
            if here not in record.locations:
                await trio.to_thread.run_sync(cache.add_location, key, here)
            continue
        if here in record.locations:
            await trio.to_thread.run_sync(cache.drop_location, key, here)
        if not isinstance(dest, RegistryEndpoint):
            return False
        for origin in mount_origins(record.locations, dest):
            if await _mounted(dest, record.digest, origin):
                reporter.event("layer mounted", layer=_short(layer), origin=origin)
                await trio.to_thread.run_sync(cache.add_location, key, here)
                break
            await trio.to_thread.run_sync(cache.drop_location, key, f"{dest.ref.registry}/{origin}")
        else:
            return False
    return True


async def _mounted(dest: RegistryEndpoint, digest: str, origin: str) -> bool:
    """Mount ``digest`` from ``origin`` into ``dest`` and confirm with a HEAD; False when the registry
    refuses (blob gone, or no pull access to ``origin``: then converting is the way)."""
    try:
        return await dest.mount_blob(digest, origin) and await dest.has_blob(digest)
    except RegistryError as exc:
        if isinstance(exc, RegistryUnavailable):
            raise
        log.info("mounting %s from %s into %s failed: %s", digest, origin, dest.ref, exc)
        return False


def location_of(endpoint: Endpoint) -> str:
    """How the conversion record names where a blob was pushed."""
    ref = endpoint.ref
    if ref.transport == "oci":
        assert ref.path is not None  # an oci: reference always names its directory
        return f"oci:{Path(ref.path).resolve()}"
    return f"{ref.registry}/{ref.repository}"


def mount_origins(locations: Sequence[str], dest: RegistryEndpoint) -> list[str]:
    """Repositories among ``locations`` that ``dest`` can mount from (same registry, other repository)."""
    prefix = f"{dest.ref.registry}/"
    return [
        loc[len(prefix) :]
        for loc in locations
        if not loc.startswith("oci:") and loc.startswith(prefix) and loc[len(prefix) :] != dest.ref.repository
    ]


def _short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]
