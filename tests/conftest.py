"""Shared test setup.

Fixtures that start real components live in ``tests/fixtures/`` (one module per component) and are
registered here. Any WARNING (or worse) logged during a test fails it unless the test declares it with
``@pytest.mark.allow_warnings``: "zero warnings" is a property we test, not hope for.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests of the parsers: a bounded run by default (CI), a long one on request
# (HYPOTHESIS_PROFILE=long). No deadline: the machine is shared and timing is not what is tested.
settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.registry",
    "tests.fixtures.containerd",
    "tests.fixtures.images",
    "tests.fixtures.fuse",
]

#: Real peer-tool output (skopeo 1.9.3, ctr-remote 0.12), kept in the repository; provenance in its README.
VECTORS = Path(__file__).resolve().parent / "data" / "vectors"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_warnings: the test expects WARNING log records")
    config.addinivalue_line("markers", "needs_root: needs root (FUSE, containerd, mounts)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root")
    for item in items:
        if "needs_root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fail_on_warnings(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("allow_warnings"):
        return
    noisy = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    if noisy:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in noisy)
        pytest.fail(f"unexpected warnings logged:\n{lines}")


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS.is_dir():
        pytest.fail(f"test vectors missing at {VECTORS}")
    return VECTORS
