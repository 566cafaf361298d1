"""Where each chunk of a regular file lies in the blob, by dialect, and the rules a file's chunks obey.

Used by :func:`fs.format.index.build_index` (see its module docstring for what readers may rely on):

* c/storage dialects: chunk *i* ends at chunk *i+1*'s ``offset``, the last one at the file's
  ``endOffset``; a single-chunk file's chunk is verified with the whole-file ``digest``; ``chunkType:
  "zeros"`` marks a chunk whose range may be skipped (zeros synthesized, still hashing to its digest).
* eStargz dialects: each data entry ends where the next frame starts (the next entry with a non-zero
  ``offset`` and ``innerOffset`` 0; stargz ``initFields``), the last one at the end of the data region;
  ``chunkSize`` 0 means "to the end of the file".
* Every compressed range lies inside the data region ``[0, data_end)``, and a file's chunks tile
  ``[0, size)`` without gaps or overlaps, each within the chunk-size limits.

Every violation is a :class:`~fs.errors.FormatError`; the caller names the entry.
"""

from __future__ import annotations

from fs.errors import FormatError
from fs.format.toc import CHUNK_TYPE_ZEROS, TocEntry
from fs.format.tree import Chunk
from fs.limits import Limits

__all__ = ["check_range", "check_tiling", "cstorage_chunks", "estargz_chunks", "estargz_frame_ends"]


def check_range(start: int, end: int, data_end: int) -> None:
    """Refuse a compressed range that is empty or reaches outside ``[0, data_end)`` (0 is the blob's
    first byte, never a chunk's)."""
    if not 0 < start < end <= data_end:
        raise FormatError(f"compressed range [{start}, {end}) is outside the data region [0, {data_end})")


def estargz_frame_ends(entries: list[TocEntry], data_end: int) -> list[int]:
    """For each entry of an eStargz TOC, where its compressed data ends (stargz ``initFields``: walking
    backwards, at the next non-zero ``offset`` whose ``innerOffset`` is 0; the last at ``data_end``)."""
    ends = [0] * len(entries)
    last = data_end
    for k in range(len(entries) - 1, -1, -1):
        e = entries[k]
        ends[k] = last
        if e.offset and not e.inner_offset:
            last = e.offset
    return ends


def cstorage_chunks(e: TocEntry, chunk_entries: list[TocEntry], data_end: int) -> list[Chunk]:
    """The chunks of c/storage regular file ``e`` followed by its ``chunk`` entries."""
    if not chunk_entries:
        digest = e.digest or e.chunk_digest
        if not digest:
            raise FormatError("non-empty regular file without a digest")
        check_range(e.offset, e.end_offset, data_end)
        return [Chunk(0, e.size, e.offset, e.end_offset, digest, 0, e.chunk_type == CHUNK_TYPE_ZEROS)]
    ends = [c.offset for c in chunk_entries]
    ends.append(e.end_offset)
    chunks = []
    for c, end in zip((e, *chunk_entries), ends, strict=True):
        if c.name != e.name:
            raise FormatError(f"chunk entry named {c.name!r} follows regular file {e.name!r}")
        if not 0 < c.offset < end <= data_end:  # checked inline, worded by check_range
            check_range(c.offset, end, data_end)
        if not c.chunk_digest:
            raise FormatError(f"chunk at file offset {c.chunk_offset} has no chunkDigest")
        zeros = c.chunk_type == CHUNK_TYPE_ZEROS
        chunks.append(Chunk(c.chunk_offset, c.chunk_size, c.offset, end, c.chunk_digest, 0, zeros))
    return chunks


def estargz_chunks(e: TocEntry, chunk_entries: list[TocEntry], ends: list[int], data_end: int) -> list[Chunk]:
    """The chunks of eStargz regular file ``e`` followed by its ``chunk`` entries; ``ends`` are the
    entries' compressed ends (:func:`estargz_frame_ends`), starting with ``e``'s."""
    only = not chunk_entries
    chunks = []
    for k, c in enumerate((e, *chunk_entries)):
        if c.name != e.name:
            raise FormatError(f"chunk entry named {c.name!r} follows regular file {e.name!r}")
        size = c.chunk_size or (e.size - c.chunk_offset)
        digest = c.chunk_digest or (e.digest if only else "")
        if not digest:
            raise FormatError(f"chunk at file offset {c.chunk_offset} has no chunkDigest")
        if not c.offset:
            raise FormatError(f"chunk at file offset {c.chunk_offset} has no offset")
        check_range(c.offset, ends[k], data_end)
        chunks.append(Chunk(c.chunk_offset, size, c.offset, ends[k], digest, inner_offset=c.inner_offset))
    return chunks


def check_tiling(chunks: list[Chunk], size: int, limits: Limits) -> None:
    """Refuse chunks that do not tile ``[0, size)`` in order, or one beyond the chunk-size limits."""
    expected = 0
    max_chunk, max_zeros = limits.max_chunk_size, limits.max_zero_chunk_size
    for c in chunks:
        if c.file_offset != expected:
            what = "gap" if c.file_offset > expected else "overlap"
            raise FormatError(
                f"chunk {what} at file offset {expected} (next chunk starts at {c.file_offset})"
            )
        if c.size <= 0:
            raise FormatError(f"empty chunk at file offset {c.file_offset}")
        if c.size > (max_zeros if c.zeros else max_chunk):
            key, cap = ("max-zero-chunk-size", max_zeros) if c.zeros else ("max-chunk-size", max_chunk)
            raise FormatError(
                f"chunk at file offset {c.file_offset} is {c.size} bytes, more than {cap} ({key})"
            )
        expected += c.size
    if expected != size:
        raise FormatError(f"chunks cover {expected} bytes of a {size}-byte file")
