"""Registry credentials from docker's ``config.json`` (``$DOCKER_CONFIG/config.json`` or
``~/.docker/config.json``): ``auths.<registry>.auth`` (base64 ``user:pass``) or ``username``/``password``.
``credsStore``/``credHelpers`` and ``identitytoken`` are not supported.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fs.errors import AuthError

__all__ = ["Credentials", "credentials_from_docker_config", "docker_config_path", "load_docker_config"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Credentials:
    username: str
    password: str = dataclasses.field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


def docker_config_path(
    docker_config: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """Where docker's ``config.json`` lives: ``docker_config`` (a directory or the file itself), else
    ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if env is None else env
    if docker_config is not None:
        path = Path(docker_config)
        return path / "config.json" if path.is_dir() or path.suffix != ".json" else path
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    return Path(env.get("HOME", str(Path.home()))) / ".docker" / "config.json"


def load_docker_config(docker_config: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read docker's ``config.json``; a missing file is an empty config.

    Raises:
        AuthError: the file exists but is not valid JSON.
    """
    path = docker_config_path(docker_config)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise AuthError(f"cannot read docker config {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AuthError(f"docker config {path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _normalize_registry_key(key: str) -> str:
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    key = key.split("/", 1)[0]
    return "docker.io" if key in ("index.docker.io", "registry-1.docker.io") else key


def credentials_from_docker_config(config: Mapping[str, Any], registry: str) -> Credentials | None:
    """Pick ``registry``'s credentials out of a parsed docker config (``auths`` section), or ``None``.

    Raises:
        AuthError: the matching entry is malformed.
    """
    wanted = _normalize_registry_key(registry)
    auths = config.get("auths") or {}
    for key, entry in auths.items():
        if _normalize_registry_key(key) != wanted or not isinstance(entry, Mapping):
            continue
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise AuthError(f"malformed 'auth' for {registry} in docker config") from exc
            if not sep:
                raise AuthError(f"malformed 'auth' for {registry} in docker config (no ':')")
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(entry["username"], entry.get("password", ""))
    if config.get("credsStore") or registry in (config.get("credHelpers") or {}):
        log.debug("docker config names a credential helper for %s; helpers are not supported", registry)
    return None
