"""converter.source_file: reading a source layer while another thread downloads it into a real file."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from converter.source_file import Download, SourceFile
from fs.errors import ConversionError, VerificationError


def _appender(path: Path, download: Download, pieces: list[bytes], gate: threading.Event | None = None):
    """Append ``pieces`` to ``path`` as a download would (write, then report), waiting for ``gate``
    before the last one."""

    def run() -> None:
        with open(path, "ab", buffering=0) as out:
            for i, piece in enumerate(pieces):
                if gate is not None and i == len(pieces) - 1:
                    gate.wait(10)
                out.write(piece)
                download.wrote(len(piece))

    return threading.Thread(target=run, daemon=True)


def test_reader_gets_bytes_before_the_download_ends_and_eof_only_after_it_verified(tmp_path):
    path = tmp_path / "blob"
    path.touch()
    download = Download(path)
    pieces = [os.urandom(300_000) for _ in range(4)]
    last_piece = threading.Event()
    writer = _appender(path, download, pieces, gate=last_piece)
    writer.start()
    with SourceFile(path, download).open() as reader:
        first = reader.read(len(pieces[0]))  # arrives while the download still waits for its last piece
        assert first == pieces[0]
        assert reader.tell() == len(first)  # the converter's progress reports it
        assert not download_done(download)
        last_piece.set()
        rest = bytearray()
        reader_done = threading.Event()

        def drain() -> None:
            while block := reader.read(100_000):
                rest.extend(block)
            reader_done.set()

        drainer = threading.Thread(target=drain, daemon=True)
        drainer.start()
        writer.join(10)
        time.sleep(0.3)
        assert not reader_done.is_set()  # every byte is there, but nothing vouched for them yet
        download.finished()
        drainer.join(10)
    assert reader_done.is_set()
    assert first + bytes(rest) == b"".join(pieces)


def download_done(download: Download) -> bool:
    done = threading.Event()

    def check() -> None:
        download.wait_verified()
        done.set()

    threading.Thread(target=check, daemon=True).start()
    return done.wait(0.2)


def test_a_failed_download_fails_the_reader_and_the_gate_raises_its_own_error(tmp_path):
    path = tmp_path / "blob"
    path.touch()
    download = Download(path)
    source = SourceFile(path, download)
    writer = _appender(path, download, [b"x" * 1000])
    writer.start()
    writer.join(10)
    error = VerificationError("blob from docker://r/x hashes to sha256:aa, expected sha256:bb")
    with source.open() as reader:
        assert reader.read(1000) == b"x" * 1000
        download.finished(error)
        with pytest.raises(ConversionError, match="download failed: blob from docker://r/x hashes to"):
            reader.read(1)
    with pytest.raises(VerificationError) as raised:
        source.wait_verified()
    assert raised.value is error


def test_the_gate_gives_up_when_the_conversion_is_stopped(tmp_path):
    path = tmp_path / "blob"
    path.touch()
    source = SourceFile(path, Download(path))  # a download that never ends
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(ConversionError, match="cancelled"):
        source.wait_verified(stop)
    assert time.monotonic() - started < 5


def test_a_complete_source_reads_as_a_plain_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 1000)
    source = SourceFile(path)
    assert source.download is None
    source.wait_verified()  # nothing to wait for
    with source.open() as f:
        assert f.read() == b"abc" * 1000
