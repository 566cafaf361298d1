"""The converted blob as a worker thread writes it, followed by a trio task that uploads it meanwhile.

The layer writer runs in a worker thread and writes the output file through :meth:`OutputTap.writer`;
every few MiB the tap wakes the trio side (``TrioToken.run_sync_soon``: the writer never blocks on trio or
on the network). The trio side (:func:`fs.registry.stream_upload.push_growing_blob`) waits with
:meth:`OutputTap.wait_for` and reads the bytes back from the file, which the page cache still holds.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

import trio

from fs.errors import ConversionError

__all__ = ["OutputTap"]

_NOTIFY_STEP = 4 << 20


class OutputTap:
    """One blob being written (thread side) and followed (trio side). Create it in trio.

    Implements :class:`fs.registry.stream_upload.GrowingBlob`.
    """

    def __init__(self, *, notify_step: int = _NOTIFY_STEP) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._changed = trio.Event()
        self._step = notify_step
        self._path: Path | None = None
        self._written = 0
        self._notified = 0
        self._digest: str | None = None
        self._closed: str | None = None

    # -- writer side (any thread) ----------------------------------------------------------------

    def writer(self, path: Path) -> BinaryIO:
        """Create ``path`` and return the file to write the blob through (the caller closes it)."""
        raw = open(path, "wb", buffering=0)  # noqa: SIM115 - returned wrapped
        self._path = path
        self._notify()
        return _TappedFile(raw, self)  # type: ignore[return-value]

    def finish(self, digest: str) -> None:
        """Every byte is written and ``digest`` is its sha256 (call after the file is closed)."""
        self._digest = digest
        self._notify()

    def close(self, reason: str) -> None:
        """The blob will not be finished (the writer failed, or another process produced it); a no-op
        once :meth:`finish` was called."""
        if self._digest is None and self._closed is None:
            self._closed = reason
            self._notify()

    def _wrote(self, n: int) -> None:
        self._written += n
        if self._written - self._notified >= self._step:
            self._notified = self._written
            self._notify()

    def _notify(self) -> None:
        # An abandoned writer thread may outlive the run: then nobody listens.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:  # in the trio thread
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    # -- follower side (trio) --------------------------------------------------------------------

    @property
    def digest(self) -> str | None:
        """The blob's digest once finished."""
        return self._digest

    async def wait_for(self, size: int) -> int:
        """Wait until ``size`` bytes are written or the blob is finished; return the bytes written.

        Raises:
            ConversionError: the blob was given up (see :meth:`close`).
        """
        while True:
            changed = self._changed
            if self._digest is not None:
                return self._written
            if self._closed is not None:
                raise ConversionError(f"the converted blob was not finished: {self._closed}")
            if self._path is not None and self._written >= size:
                return self._written
            await changed.wait()

    def open(self) -> BinaryIO:
        """A reader of the file from its start (the file must exist: call after ``wait_for`` returned)."""
        assert self._path is not None
        return open(self._path, "rb")


class _TappedFile(io.RawIOBase):
    """Writes straight to the file (no buffer: what is counted is in the kernel) and counts the bytes."""

    def __init__(self, raw: io.FileIO, tap: OutputTap) -> None:
        self._raw = raw
        self._tap = tap

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            view = view[self._raw.write(view) :]
        self._tap._wrote(total)
        return total

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
