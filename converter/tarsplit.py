"""tar-split JSON-lines packer, byte-compatible with tar-split ``storage.NewJSONPacker`` (FORMAT.md §1.6).

What ``asm.NewInputTarStream`` emits per tar entry, and what :class:`TarSplitPacker` reproduces:

1. a *segment* with the raw bytes read since the previous payload (padding, extension headers, header):
   ``{"type":2,"payload":"<base64>","position":N}``
2. a *file* entry: ``{"type":1,"name":"<name>","size":S,"payload":"<base64 crc>","position":N}`` where the
   payload is the 8-byte big-endian CRC-64/ISO (Go ``crc64.New(crc64.MakeTable(crc64.ISO)).Sum(nil)``) of
   the content, ``null`` when the header size is 0; ``name`` holds the name when it is valid UTF-8 without
   U+FFFD (tar-split's ``IsValidUtf8String``), else ``name_raw`` holds the raw bytes base64-encoded;
   ``name``/``name_raw``/``size`` follow Go ``omitempty``.

then, after the last entry, a segment with the end-of-archive bytes and one segment per ≤ 1 MiB of
whatever follows. Each line is Go ``json.Encoder`` output: struct field order ``type, name, name_raw,
size, payload, position``, HTML-safe string escaping, a trailing newline.

Like the Go packer, a second *file* entry whose ``filepath.Clean``-ed name was already seen is refused
(``ErrDuplicatePath``), here as :class:`~fs.errors.UnsupportedFormat`: c/storage could not convert such a
tar either, and its reader insists that TOC names be unique.
"""

from __future__ import annotations

import base64
import posixpath

import anycrc

from fs.errors import UnsupportedFormat
from fs.format.gojson import go_string

__all__ = [
    "CRC64_ISO",
    "TarSplitPacker",
    "crc64_bytes",
    "crc64_combine",
    "crc64_iso",
]

#: Go's ``crc64.ISO`` as ``hash/crc64`` computes it (init/xor-out all ones): "123456789" → 0xb90956c775a41001
CRC64_ISO = anycrc.Model("CRC64-GO-ISO")


def crc64_iso(data: bytes | bytearray | memoryview, crc: int | None = None) -> int:
    """CRC-64/ISO of ``data``, continuing from ``crc`` (the CRC of the preceding bytes) when given."""
    value: int = CRC64_ISO.calc(data) if crc is None else CRC64_ISO.calc(data, crc)  # anycrc: untyped
    return value


def crc64_combine(crc1: int, crc2: int, length2: int) -> int:
    """CRC of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)`` (lets chunks be checksummed apart)."""
    value: int = CRC64_ISO.combine(crc1, crc2, length2)
    return value


def crc64_bytes(crc: int) -> bytes:
    """The 8 bytes Go's ``Sum(nil)`` appends: big-endian."""
    return crc.to_bytes(8, "big")


def _go_clean(name: bytes) -> bytes:
    """Go ``filepath.Clean`` on a slash path."""
    cleaned = posixpath.normpath(name) if name else b"."
    if cleaned.startswith(b"//"):
        cleaned = b"/" + cleaned.lstrip(b"/")
    return cleaned


def _utf8_name(name: bytes) -> str | None:
    """The name as ``str`` when tar-split stores it in ``name`` (valid UTF-8, no U+FFFD), else None."""
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\ufffd" in text else text


class TarSplitPacker:
    """Builds tar-split lines one at a time; positions count from 0 across segments and files.

    Not thread-safe. Each method returns the encoded line (UTF-8 bytes, newline-terminated); the caller
    concatenates (and compresses) them in order.
    """

    __slots__ = ("_position", "_seen")

    def __init__(self) -> None:
        self._position = 0
        self._seen: set[bytes] = set()

    @property
    def position(self) -> int:
        """The position the next entry will get (= number of entries packed so far)."""
        return self._position

    def segment(self, payload: bytes | bytearray | memoryview) -> bytes:
        """A segment line for raw tar bytes (callers skip empty segments, as tar-split does)."""
        pos = self._position
        self._position = pos + 1
        return b'{"type":2,"payload":"%b","position":%d}\n' % (base64.b64encode(payload), pos)

    def file(self, name_raw: bytes, size: int, crc: int | None) -> bytes:
        """A file line: ``size`` is the header size, ``crc`` the CRC-64/ISO of the content (None when
        ``size`` is 0, giving ``"payload":null``).

        Raises:
            UnsupportedFormat: the cleaned name was already packed (tar-split ``ErrDuplicatePath``).
        """
        cleaned = _go_clean(name_raw)
        if cleaned in self._seen:
            raise UnsupportedFormat(
                "duplicate path in the tar stream (tar-split and c/storage refuse duplicates)",
                path=name_raw.decode("utf-8", "surrogateescape"),
            )
        self._seen.add(cleaned)
        pos = self._position
        self._position = pos + 1
        parts = ['{"type":1']
        text = _utf8_name(name_raw)
        if text is not None:
            if text:
                parts.append(',"name":' + go_string(text))
        else:
            parts.append(',"name_raw":"' + base64.b64encode(name_raw).decode("ascii") + '"')
        if size:
            parts.append(f',"size":{size}')
        if crc is None:
            parts.append(f',"payload":null,"position":{pos}}}\n')
        else:
            payload = base64.b64encode(crc64_bytes(crc)).decode("ascii")
            parts.append(f',"payload":"{payload}","position":{pos}}}\n')
        return "".join(parts).encode("utf-8")
