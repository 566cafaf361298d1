"""A source layer the converter may read while it is still being downloaded.

Downloading a registry layer into the store and converting it afterwards leaves the cores idle for the
length of the download, which across a 200 Mbit/s link is most of a conversion's time. :class:`SourceFile`
lets the layer writer start on the bytes already on disk: its reader returns what the download has
written so far, blocks at the end of it until more arrives, and reports end of file only once the whole
blob is there *and* hashed to its digest. A download that fails makes the reader raise, so a converter
never finishes on unverified bytes; :meth:`SourceFile.wait_verified` is the gate before anything derived
from them is recorded or published, and raises the download's own error (a :class:`VerificationError`
says what the blob hashed to).
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from fs.errors import ConversionError

__all__ = ["Download", "SourceFile"]

#: A reader at the end of the written bytes re-checks this often even without a wake-up (belt and braces:
#: every write and the outcome notify it).
_POLL_S = 0.2


class Download:
    """The state of one blob download into a file, shared between the downloading and reading threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._written = 0
        self._done = False
        self._error: BaseException | None = None

    # -- downloader side --------------------------------------------------------------------------

    def wrote(self, n: int) -> None:
        """``n`` more bytes are in the file."""
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def finished(self, error: BaseException | None = None) -> None:
        """The download ended: verified (``error`` None) or failed with ``error``."""
        with self._cond:
            self._done = True
            self._error = error
            self._cond.notify_all()

    # -- reader side ------------------------------------------------------------------------------

    def wait_beyond(self, offset: int) -> bool:
        """Block until more than ``offset`` bytes are written (True) or the verified download ended at or
        before ``offset`` (False); raise if the download failed."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._failure()
                if self._written > offset:
                    return True
                if self._done:
                    return False
                self._cond.wait(_POLL_S)

    def wait_verified(self, stop: threading.Event | None = None) -> None:
        """Block until the download ended; raise its own error if it failed, and
        :class:`ConversionError` if ``stop`` is set first (the conversion was cancelled)."""
        with self._cond:
            while not self._done:
                if stop is not None and stop.is_set():
                    raise ConversionError("conversion cancelled")
                self._cond.wait(_POLL_S)
            if self._error is not None:
                raise self._error

    def _failure(self) -> ConversionError:
        # A new error per reader: the download's own is raised once, by wait_verified (the gate).
        return ConversionError(f"the source layer's download failed: {self._error}")


class SourceFile:
    """A local source blob: complete and verified (``download`` None), or still arriving."""

    def __init__(self, path: Path, download: Download | None = None) -> None:
        self.path = path
        self.download = download

    def open(self) -> BinaryIO:
        """A binary reader from the blob's first byte; over a download in progress it blocks for bytes
        not yet written and sees end of file only after the blob verified."""
        if self.download is None:
            return open(self.path, "rb")
        return io.BufferedReader(_GrowingReader(self.download), 1 << 20)

    def wait_verified(self, stop: threading.Event | None = None) -> None:
        """Return once every byte is verified; raise the download's error if it failed (see
        :meth:`Download.wait_verified`)."""
        if self.download is not None:
            self.download.wait_verified(stop)


class _GrowingReader(io.RawIOBase):
    """Reads a file another thread is appending to, as described by :class:`Download`."""

    def __init__(self, download: Download) -> None:
        super().__init__()
        self._download = download
        self._fd = os.open(download.path, os.O_RDONLY | os.O_CLOEXEC)
        self._offset = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._offset

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            n = os.preadv(self._fd, [view], self._offset)
            if n:
                self._offset += n
                return n
            if not self._download.wait_beyond(self._offset):
                return 0

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
