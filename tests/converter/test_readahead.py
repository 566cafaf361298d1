"""converter.readahead: bytes identical to the source, errors surface, early close stops the thread."""

from __future__ import annotations

import io
import threading

import pytest

from converter.readahead import ReadAhead


def test_same_bytes_in_odd_reads():
    data = bytes(range(256)) * 5000
    stream = io.BufferedReader(ReadAhead(io.BytesIO(data), block=4099, depth=2), 777)
    out = bytearray()
    while piece := stream.read(1234):
        out += piece
    assert bytes(out) == data
    stream.close()


class _Failing(io.RawIOBase):
    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        self.calls += 1
        if self.calls > 2:
            raise OSError("disk went away")
        b[:10] = b"x" * 10
        return 10


def test_source_error_reaches_the_reader_after_the_good_bytes():
    stream = ReadAhead(_Failing(), block=10)
    assert stream.read(10) == b"x" * 10 and stream.read(10) == b"x" * 10
    with pytest.raises(OSError, match="disk went away"):
        stream.read(10)
    stream.close()


def test_close_before_the_end_stops_the_thread():
    before = threading.active_count()
    stream = ReadAhead(io.BytesIO(b"a" * (10 << 20)), block=1 << 16, depth=2)
    assert stream.read(5) == b"aaaaa"
    stream.close()
    assert threading.active_count() == before
