"""kill -9 of ``zsnap serve`` at seeded random points while a container (real containerd, CRI) reads a
big file lazily through it: the reader gets only right bytes (its sha256 at the end, no failed read), and
once the daemon is stopped the store under its root reopens consistent with nothing leaked.

The stack and the image come from tests/snapshotter/test_restart.py (the fixed-point restart tests).
"""

from __future__ import annotations

import signal

import pytest

from snapshotter import cri
from tests.chaos.common import assert_store_consistent, chaos_rng, chaos_rounds
from tests.fixtures.common import wait_until
from tests.snapshotter.test_restart import (  # noqa: F401  (fixtures used by name)
    STEPS,
    Reader,
    restart_image,
    restart_layout,
    served_stack,
)

pytestmark = [pytest.mark.needs_root, pytest.mark.slow]


def test_kill_9_of_serve_at_random_points_while_a_container_reads(registry, restart_image: str) -> None:  # noqa: F811
    _, rng = chaos_rng("test_kill_9_of_serve_at_random_points_while_a_container_reads")
    kills = sorted(rng.sample(range(STEPS // 10, STEPS * 9 // 10), chaos_rounds(2)))
    print(f"kill -9 after read steps {kills} of {STEPS}")
    with served_stack(registry.host) as served:
        cri.pull_image(served.ctrd.address, restart_image, timeout=120)
        reader = Reader(served, restart_image)
        try:
            for step in kills:
                wait_until(lambda step=step: reader.steps() >= step or reader.proc.poll() is not None,
                           timeout=120, what=f"the container to read {step} steps")  # fmt: skip
                assert reader.proc.poll() is None, reader.lines[-5:]
                served.restart(signal.SIGKILL)
            code = reader.wait(timeout=300)
        finally:
            reader.stop()
        reader.assert_read_all_right(code, served)
        assert served.log().count("adopted the FUSE session") == len(kills)
        # one last crash; with nothing running, the store the daemon used reopens consistent
        served.stop(signal.SIGKILL)
        stats = assert_store_consistent(served.root)
        assert stats["objects"] > 0  # the lazily read chunks are there (verified, hashing to their names)
        served.start()
        cri.remove_image(served.ctrd.address, restart_image)
    print(
        f"store after the kills: {stats['objects']} objects, reclaimed at open {stats['reclaimed_at_open']}"
    )
