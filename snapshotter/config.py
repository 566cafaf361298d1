"""The daemon's configuration: ``/etc/zsnap/config.toml`` (stdlib ``tomllib``), overridden by flags.

Every key, its type and default (``systemd/config.toml`` is the annotated sample)::

    root = "/var/lib/zsnap"              state: store, snapshots, FUSE mount
    socket = "/run/zsnap/zsnap.sock"     the unix socket containerd dials (proxy_plugins address)
    cache_max_size = "20G"               cap on cached chunk bytes (LRU eviction); "" or absent: no cap
    lazy = true                          serve layers lazily when containerd sends the labels
    prefetch = true                      fetch the files an image marks for prefetch after attaching it
    background_fetch = true              then fetch the rest of the image at low priority
    fetch_timeout = 30.0                 seconds for one registry request (after bounded retries: EIO)
    prepare_timeout = 60.0               seconds a lazy Prepare may spend attaching before falling back
    prefetch_wait = 0.0                  seconds a lazy pull waits for the prefetch list to land (0: none)
    metrics_address = "127.0.0.1:9155"   Prometheus endpoint (HOST:PORT); "" or absent: off
    grpc_threads = 16                    gRPC worker threads

    [registry]
    plain_http = ["127.0.0.1:5000"]      registries reached over plain HTTP (loopback ones always are)
    docker_config = "/root/.docker/config.json"   credentials file (docker login format)
    [registry.mirrors]                   accepted; not used by zsnap's own fetches yet
    "docker.io" = ["https://mirror.example.com"]
    [registry.auth."registry.example.com"]
    username = "..."
    password = "..."
    [limits]                             bounds an image may not push zsnap past (fs/limits.py has them all)
    max-toc-entries = 1000000            e.g.; keys are fs.limits.Limits fields with '-', positive integers

An unknown key, a wrong type or a bad value is a :class:`~snapshotter.errors.ConfigError` naming the key
and the file, reported at start as one ``zsnap: error:`` line.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fs.errors import FormatError
from fs.limits import DEFAULT_LIMITS, Limits
from fs.store import parse_size

from .errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "DEFAULT_SOCKET", "RegistryConfig", "ServeConfig", "load_config"]

DEFAULT_CONFIG = Path("/etc/zsnap/config.toml")
DEFAULT_SOCKET = Path("/run/zsnap/zsnap.sock")


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach registries: plain-HTTP hosts, mirrors, credentials."""

    plain_http: tuple[str, ...] = ()
    docker_config: Path | None = None
    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    auth: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # host -> (username, password)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``zsnap serve`` needs; see the module docstring for the keys."""

    root: Path = Path("/var/lib/zsnap")
    socket: Path = DEFAULT_SOCKET
    cache_max_size: int | None = None
    lazy: bool = True
    prefetch: bool = True
    background_fetch: bool = True
    fetch_timeout: float = 30.0
    prepare_timeout: float = 60.0
    #: the pull returns at once: containerd's own pull work, create and the container's first reads overlap
    #: the prefetch (a read of a chunk being prefetched joins its fetch); waiting for it (2 s cap) was
    #: about 0.2 s slower to first output on the 2 GB bench image (docs/DESIGN.md)
    prefetch_wait: float = 0.0
    metrics_address: tuple[str, int] | None = None
    grpc_threads: int = 16
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    limits: Limits = DEFAULT_LIMITS

    def with_overrides(self, **overrides: Any) -> ServeConfig:
        """A copy with the non-None ``overrides`` applied (command-line flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _type_error(where: str, key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{where}: {key} must be {expected}, not {value!r}")


def _bool(where: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _type_error(where, key, "true or false", value)
    return value


def _seconds(where: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise _type_error(where, key, "a number of seconds in (0, 86400]", value)
    return float(value)


def _string(where: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _type_error(where, key, "a string", value)
    return value


def _strings(where: str, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _type_error(where, key, "a list of non-empty strings", value)
    return tuple(value)


def parse_metrics_address(text: str, where: str = "metrics_address") -> tuple[str, int] | None:
    """``HOST:PORT`` (an IP address, ``[v6]:port`` or ``localhost``) -> (host, port); ``""`` -> None."""
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if host != "localhost":
            ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where}: not an address HOST:PORT with an IP host: {text!r}") from None
    return host, number


def _registry(where: str, table: object) -> RegistryConfig:
    if not isinstance(table, dict):
        raise _type_error(where, "registry", "a table", table)
    known = {"plain_http", "docker_config", "mirrors", "auth"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key registry.{key} (known: {', '.join(sorted(known))})")
    mirrors = table.get("mirrors", {})
    if not isinstance(mirrors, dict):
        raise _type_error(where, "registry.mirrors", "a table of host = [mirror, ...]", mirrors)
    auth: dict[str, tuple[str, str]] = {}
    auth_table = table.get("auth", {})
    if not isinstance(auth_table, dict):
        raise _type_error(where, "registry.auth", "a table of host tables", auth_table)
    for host, creds in auth_table.items():
        key = f"registry.auth.{host!r}"
        if not isinstance(creds, dict) or set(creds) != {"username", "password"}:
            raise _type_error(where, key, "a table with exactly username and password", creds)
        auth[host] = (_string(where, key, creds["username"]), _string(where, key, creds["password"]))
    docker_config = table.get("docker_config")
    docker_config_path = None
    if docker_config is not None:
        docker_config_path = Path(_string(where, "registry.docker_config", docker_config))
    return RegistryConfig(
        plain_http=_strings(where, "registry.plain_http", table.get("plain_http", [])),
        docker_config=docker_config_path,
        mirrors={h: _strings(where, f"registry.mirrors.{h!r}", m) for h, m in mirrors.items()},
        auth=auth,
    )  # fmt: skip


def _limits(where: str, table: object) -> Limits:
    if not isinstance(table, dict):
        raise _type_error(where, "limits", "a table", table)
    try:
        return Limits.from_mapping(table)
    except FormatError as exc:
        raise ConfigError(f"{where}: [limits]: {exc.message}") from None


def config_from_mapping(doc: Mapping[str, Any], where: str) -> ServeConfig:
    """Validate a parsed TOML document into a :class:`ServeConfig`.

    Raises:
        ConfigError: an unknown key or a bad value, naming ``where`` and the key.
    """
    known = {f.name for f in fields(ServeConfig)}
    for key in doc:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in doc.items():
        if key in ("root", "socket"):
            text = _string(where, key, value)
            if not text.startswith("/"):
                raise _type_error(where, key, "an absolute path", value)
            values[key] = Path(text)
        elif key == "cache_max_size":
            text = _string(where, key, value) if not isinstance(value, int) else str(value)
            try:
                values[key] = parse_size(text) if text else None
            except ValueError as exc:
                raise ConfigError(f"{where}: cache_max_size: {exc}") from None
        elif key in ("lazy", "prefetch", "background_fetch"):
            values[key] = _bool(where, key, value)
        elif key in ("fetch_timeout", "prepare_timeout"):
            values[key] = _seconds(where, key, value)
        elif key == "prefetch_wait":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 600:
                raise _type_error(where, key, "a number of seconds in [0, 600]", value)
            values[key] = float(value)
        elif key == "metrics_address":
            values[key] = parse_metrics_address(_string(where, key, value), f"{where}: metrics_address")
        elif key == "grpc_threads":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
                raise _type_error(where, key, "an integer in [1, 256]", value)
            values[key] = value
        elif key == "registry":
            values[key] = _registry(where, value)
        elif key == "limits":
            values[key] = _limits(where, value)
    return ServeConfig(**values)


def load_config(path: Path | None) -> ServeConfig:
    """Read and validate the TOML file at ``path``; None (or the default path missing): the defaults.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has an unknown key or a bad value.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return ServeConfig()
        path = DEFAULT_CONFIG
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    return config_from_mapping(doc, f"config {path}")
