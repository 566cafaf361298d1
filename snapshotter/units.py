"""``zsnap install-units``: put the systemd unit and the sample configuration in place.

Files (under ``prefix``, ``/`` by default)::

    etc/systemd/system/zsnap.service   from systemd/zsnap.service, ExecStart pointing at this zsnap
    etc/zsnap/config.toml              from systemd/config.toml, only if no config exists yet

The sources are the repository's ``systemd/`` directory (next to the ``snapshotter`` package).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from fs.errors import ZsnapError

__all__ = ["SOURCE_DIR", "install_units"]

SOURCE_DIR = Path(__file__).resolve().parents[1] / "systemd"


def zsnap_command() -> list[str]:
    """The command that runs this zsnap: the ``zsnap`` script next to this interpreter if there is one."""
    script = Path(sys.executable).parent / "zsnap"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("zsnap")
    return [found] if found else [sys.executable, "-m", "snapshotter"]


def unit_text(template: str, command: list[str]) -> str:
    """The unit with its ``ExecStart=`` running ``command serve`` with the installed config."""
    lines = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            line = "ExecStart=" + shlex.join([*command, "serve", "--config", "/etc/zsnap/config.toml"])
        lines.append(line)
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install_units(prefix: Path = Path("/"), *, source: Path = SOURCE_DIR) -> list[tuple[Path, str]]:
    """Install the unit and (if absent) the config under ``prefix``; returns ``(path, what happened)``.

    Raises:
        ZsnapError: the sources are missing or a file cannot be written.
    """
    try:
        template = (source / "zsnap.service").read_text()
        sample = (source / "config.toml").read_text()
    except OSError as exc:
        raise ZsnapError(f"cannot read the unit sources: {exc.strerror}", path=str(source)) from None
    unit = prefix / "etc/systemd/system/zsnap.service"
    config = prefix / "etc/zsnap/config.toml"
    done = []
    try:
        _write(unit, unit_text(template, zsnap_command()), 0o644)
        done.append((unit, "installed"))
        if config.exists():
            done.append((config, "kept (exists)"))
        else:
            _write(config, sample, 0o600)
            done.append((config, "installed"))
    except OSError as exc:
        raise ZsnapError(f"cannot install: {exc.strerror}", path=exc.filename) from None
    return done
