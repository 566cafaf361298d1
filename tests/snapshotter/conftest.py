"""Fixtures for the snapshotter daemon tests (see ``tests/snapshotter/daemon.py``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.containerd import unmount_below
from tests.snapshotter.daemon import Daemon, running_daemon, short_tempdir


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path (sockets), removed afterwards with everything mounted below it."""
    base = short_tempdir()
    try:
        yield base
    finally:
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    """A ``zsnap serve`` on a socket under a short temp dir, lazy layers off, metrics on a free port."""
    if os.geteuid() != 0:
        pytest.skip("zsnap serve needs root (mounts, FUSE)")
    with running_daemon(short_tmp, config='metrics_address = "127.0.0.1:0"\nlazy = false\n') as d:
        yield d
