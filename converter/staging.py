"""Local, digest-verified files for the converter's inputs, shared through the store.

A source blob of a local OCI layout is read in place (checked first: a layout on disk is no more trusted
than a registry); one the store already holds as a file of its own is read in place under a ref; a registry
blob is downloaded once into the temp object ``source/<digest>``, which every task and process that needs it
shares, and which the layer writer may read while it downloads (:meth:`Staging.streamed_source`). The
converted output of a layer is a temp object too (``converted/<key>``, see :mod:`converter.layers`):
:meth:`Staging.acquired` holds one, producing it if nobody has.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from converter.scheduling import PriorityLimiter
from converter.source_file import Download, SourceFile
from fs.errors import NotInStore, ProducerFailed, VerificationError, ZsnapError
from fs.registry.endpoint import Endpoint
from fs.registry.manifests import Descriptor
from fs.store import Store, TempHandle, free_space_check

__all__ = ["Staging"]

# Another holder's producer failing is retried this many times in all (see Staging.acquired).
_ACQUIRE_ATTEMPTS = 4


class Staging:
    """The converter's files in one store: source blobs, small blobs it writes, converted layers.

    ``holder`` names the claims and refs taken (bound to this process by the caller); ``downloads`` bounds
    concurrent source downloads, biggest first.
    """

    def __init__(self, store: Store, holder: str, downloads: PriorityLimiter) -> None:
        self._store = store
        self._holder = holder
        self._downloads = downloads
        self._uses = 0

    @contextlib.asynccontextmanager
    async def source(
        self, source: Endpoint, desc: Descriptor, *, on_queued: Callable[[], None] | None = None
    ) -> AsyncIterator[Path]:
        """A local, digest-verified file holding blob ``desc`` of ``source``, shared via the store.

        Blobs of a local OCI layout or already in the store are used in place; registry blobs are
        downloaded once into the temp object ``source/<digest>``, which concurrent users (tasks or
        processes) share. ``on_queued`` is called once the download has queued for its slot (biggest
        first), or right away when there is nothing to download.
        """
        queued = on_queued or (lambda: None)
        local = source.local_blob_path(desc.digest)
        if local is not None:
            # Used in place, so checked here: a layout on disk is no more trusted than a registry.
            queued()
            await trio.to_thread.run_sync(_verify_file, local, desc.digest)
            yield local
            return
        async with self._stored_blob(desc.digest) as stored:
            if stored is not None:  # already in the store (verified when it was put): read in place
                queued()
                yield stored
                return
        await trio.to_thread.run_sync(free_space_check, self._store.root, desc.size)
        token = trio.lowlevel.current_trio_token()

        def download(path: Path) -> None:
            trio.from_thread.run(_fetch_unsynced, source, desc, path, None, trio_token=token)

        async with self.acquired(
            f"source/{desc.digest}", download, limiter=self._downloads, priority=desc.size, queued=queued
        ) as path:
            yield path

    @contextlib.asynccontextmanager
    async def streamed_source(
        self, source: Endpoint, desc: Descriptor, *, on_queued: Callable[[], None] | None = None
    ) -> AsyncIterator[SourceFile]:
        """Like :meth:`source`, but when this task downloads the blob it is handed out as soon as the
        download starts: a :class:`~converter.source_file.SourceFile` whose reader follows the download
        and whose :meth:`~converter.source_file.SourceFile.wait_verified` is the gate before anything
        made from it is published. A download that fails after the hand-out raises from the reader and
        from the gate (and, as itself, from here when the body did not already fail).
        """
        if source.local_blob_path(desc.digest) is not None or await trio.to_thread.run_sync(
            self._store.has, desc.digest
        ):
            async with self.source(source, desc, on_queued=on_queued) as path:
                yield SourceFile(path)
            return
        token = trio.lowlevel.current_trio_token()
        handed_out = trio.Event()
        release = trio.Event()
        state = _Acquisition()

        def announce(path: Path) -> Download:
            path.touch()  # exists before a reader opens it; fetch_blob truncates an empty file
            started = state.download = Download(path)
            trio.from_thread.run_sync(handed_out.set, trio_token=token)
            return started

        def download(path: Path) -> None:
            started = announce(path)
            try:
                trio.from_thread.run(_fetch_unsynced, source, desc, path, started.wrote, trio_token=token)
            except BaseException as exc:
                started.finished(exc)
                raise
            started.finished()

        async def hold() -> None:
            try:
                async with self.acquired(
                    f"source/{desc.digest}",
                    download,
                    limiter=self._downloads,
                    priority=desc.size,
                    queued=on_queued,
                ) as path:
                    state.path = path
                    handed_out.set()
                    await release.wait()
            except Exception as exc:  # raised by the body's task, not as a nursery's ExceptionGroup
                state.error = exc
                handed_out.set()

        await trio.to_thread.run_sync(free_space_check, self._store.root, desc.size)
        body_error: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await handed_out.wait()
            if state.download is not None:
                handout: SourceFile | None = SourceFile(state.download.path, state.download)
            elif state.path is not None:
                handout = SourceFile(state.path)
            else:
                handout = None  # not produced, nothing to hand out: the error is raised below
            if handout is not None:
                try:
                    yield handout
                except Exception as exc:  # raised below as itself, not in an ExceptionGroup
                    body_error = exc
                    nursery.cancel_scope.cancel()
                finally:
                    release.set()
        if body_error is not None:
            raise body_error
        if state.error is not None:
            raise state.error

    @contextlib.asynccontextmanager
    async def _stored_blob(self, digest: str) -> AsyncIterator[Path | None]:
        """The store's own file of blob ``digest``, held by a ref of its own while in use; None if the
        store does not have it."""
        self._uses += 1
        holder = f"{self._holder}:source:{self._uses}"  # one ref per use: refs are per (blob, holder)

        def take() -> Path | None:
            if not self._store.has(digest):
                return None
            self._store.bind_holder(holder)  # our death drops the ref at the next open/gc
            try:
                self._store.ref(digest, holder)
            except NotInStore:  # collected in between
                self._store.drop_holder(holder)
                return None
            try:
                return self._store.path_of(digest)
            except ValueError:  # a small blob kept in a pack (some image's chunk): no file to read in place
                self._store.drop_holder(holder)
                return None

        path = await trio.to_thread.run_sync(take)
        try:
            yield path
        finally:
            if path is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._store.drop_holder, holder)

    @contextlib.asynccontextmanager
    async def blob_bytes(self, digest: str, data: bytes) -> AsyncIterator[Path]:
        """``data`` (already known to hash to ``digest``) as a shared temp file ``blob/<digest>``."""

        def write(path: Path) -> None:
            path.write_bytes(data)

        async with self.acquired(f"blob/{digest}", write) as path:
            yield path

    @contextlib.asynccontextmanager
    async def acquired(
        self,
        name: str,
        producer: Callable[[Path], None],
        *,
        limiter: PriorityLimiter | None = None,
        priority: int = 0,
        queued: Callable[[], None] | None = None,
    ) -> AsyncIterator[Path]:
        """Hold temp object ``name`` (produced by ``producer`` if nobody has it); ``limiter`` bounds only
        the acquisition, i.e. the production, not the time the file is used afterwards.

        When another task or process was producing it and failed, was cancelled or was killed, this is
        not our failure: try again (and likely become the producer). Only our own producer's error ends
        the job, and it is re-raised as itself, not as the store's wrapper.
        """
        for attempt in range(1, _ACQUIRE_ATTEMPTS + 1):
            try:
                async with (
                    limiter.hold(priority, queued=queued) if limiter is not None else contextlib.nullcontext()
                ):
                    handle: TempHandle = await self._store.acquire_async(name, producer, holder=self._holder)
                break
            except ProducerFailed as exc:
                own_error = exc.__cause__
                if isinstance(own_error, ZsnapError):
                    raise own_error from None
                if own_error is not None or attempt == _ACQUIRE_ATTEMPTS:
                    raise
                await trio.sleep(0.05 * attempt)
        try:
            yield handle.path
        finally:
            handle.release()


@dataclass
class _Acquisition:
    """What :meth:`Staging.streamed_source`'s holding task found: a download it started, the finished
    file, or an error."""

    download: Download | None = None
    path: Path | None = None
    error: Exception | None = None


async def _fetch_unsynced(
    source: Endpoint, desc: Descriptor, path: Path, progress: Callable[[int], None] | None
) -> None:
    # Not fsynced: a temp object never outlives its holders (a crash's are deleted at the next open), so
    # its bytes need never reach the disk; one converted and released within the kernel's writeback
    # delay is never written at all.
    await source.fetch_blob(desc.digest, desc.size, path, progress, sync=False)


def _verify_file(path: Path, digest: str) -> None:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            hasher.update(block)
    actual = "sha256:" + hasher.hexdigest()
    if actual != digest:
        raise VerificationError(f"blob {path} hashes to {actual}, its descriptor says {digest}")
