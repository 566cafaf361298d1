"""converter.workers.short_switch_interval: the process-wide GIL switch interval is lowered only while at
least one conversion runs, and restored exactly when the last one ends (a FUSE loop in the same process
runs at the normal interval the rest of the time)."""

from __future__ import annotations

import sys
import threading

import pytest

from converter.workers import SWITCH_INTERVAL, short_switch_interval


@pytest.fixture
def interval():
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    yield
    sys.setswitchinterval(saved)


def test_overlapping_users_are_reference_counted(interval) -> None:
    first, second = short_switch_interval(), short_switch_interval()
    first.__enter__()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    second.__enter__()
    first.__exit__(None, None, None)  # ends first: the other conversion still runs
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(0.004)


def test_restored_after_a_failure_and_across_threads(interval) -> None:
    with pytest.raises(RuntimeError), short_switch_interval():
        raise RuntimeError("conversion failed")
    assert sys.getswitchinterval() == pytest.approx(0.004)
    inside, go = threading.Barrier(5), threading.Event()

    def convert() -> None:
        with short_switch_interval():
            inside.wait()
            go.wait()

    threads = [threading.Thread(target=convert) for _ in range(4)]
    for t in threads:
        t.start()
    inside.wait()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
    go.set()
    for t in threads:
        t.join()
    assert sys.getswitchinterval() == pytest.approx(0.004)


def test_a_shorter_interval_is_kept(interval) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL / 2)
    with short_switch_interval():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 2)
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL / 2)
