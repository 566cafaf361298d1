"""The daemon config's ``[limits]`` table: read into :class:`fs.limits.Limits`, bad keys refused clearly,
and carried into the lazy host's options the way the daemon builds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from fs.limits import DEFAULT_LIMITS
from snapshotter.config import ServeConfig, load_config
from snapshotter.errors import ConfigError
from snapshotter.remote import host_options


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_limits_table_is_read_and_reaches_the_host_options(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "[limits]\nmax-toc-entries = 10\nmax-concurrent-fetches = 3\n"))
    assert config.limits == DEFAULT_LIMITS.replace(max_toc_entries=10, max_concurrent_fetches=3)
    assert ServeConfig().limits == DEFAULT_LIMITS
    options = host_options(config)
    assert options.limits is config.limits


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[limits]\nmax-toc-entrys = 10\n", "unknown limit 'max-toc-entrys'"),
        ("[limits]\nmax_toc_entries = 10\n", "unknown limit 'max_toc_entries'"),  # keys use '-'
        ("[limits]\nmax-toc-entries = 0\n", "'max-toc-entries' must be a positive integer"),
        ('[limits]\nmax-toc-entries = "10"\n', "'max-toc-entries' must be a positive integer"),
        ("limits = 5\n", "limits must be a table"),
    ],
)
def test_bad_limits_are_one_clear_error_naming_file_and_key(tmp_path: Path, text: str, named: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert named in message and str(path) in message and "\n" not in message
