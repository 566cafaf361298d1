"""``sha256:`` digest helpers.

zsnap only speaks sha256 (the only algorithm both zstd:chunked dialects use for TOC, file and chunk
digests). A digest string is always ``"sha256:"`` followed by exactly 64 lowercase hex characters;
anything else is a :class:`~fs.errors.FormatError` when parsed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from fs.errors import FormatError, VerificationError

__all__ = [
    "EMPTY_SHA256",
    "Hasher",
    "is_digest",
    "parse_digest",
    "sha256_digest",
    "verify_digest",
]

_ALGO = "sha256"
_HEX_RE = re.compile(r"[0-9a-f]{64}")

#: Digest of the empty byte string (what c/storage fills in for empty regular files).
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def sha256_digest(data: bytes | bytearray | memoryview) -> str:
    """Return ``"sha256:<hex>"`` of ``data``."""
    return f"{_ALGO}:{hashlib.sha256(data).hexdigest()}"


def parse_digest(s: str) -> tuple[str, str]:
    """Split and validate a digest string.

    Returns:
        ``(algorithm, hex)``, e.g. ``("sha256", "e3b0…")``.

    Raises:
        FormatError: not a string, algorithm other than sha256, or hex part not 64 lowercase hex chars.
    """
    if not isinstance(s, str):
        raise FormatError(f"digest must be a string, got {type(s).__name__}")
    algo, sep, hexpart = s.partition(":")
    if not sep:
        raise FormatError(f"malformed digest {s!r}: missing algorithm prefix")
    if algo != _ALGO:
        raise FormatError(f"unsupported digest algorithm {algo!r} in {s!r} (only sha256)")
    if not _HEX_RE.fullmatch(hexpart):
        raise FormatError(f"malformed digest {s!r}: expected 64 lowercase hex characters")
    return algo, hexpart


def is_digest(s: object) -> bool:
    """True if ``s`` is a valid ``sha256:<64 lowercase hex>`` string."""
    try:
        parse_digest(s)  # type: ignore[arg-type]
    except FormatError:
        return False
    return True


def verify_digest(data: bytes | bytearray | memoryview, expected: str, *, what: str = "data") -> None:
    """Raise :class:`VerificationError` unless ``sha256(data) == expected``.

    ``expected`` is validated first (:class:`FormatError` if malformed). ``what`` names the object in the
    error message ("TOC", "chunk 3 of usr/bin/x", ...).
    """
    parse_digest(expected)
    actual = sha256_digest(data)
    if actual != expected:
        raise VerificationError(f"{what}: digest mismatch: expected {expected}, got {actual}")


class Hasher:
    """Incremental sha256 producing a digest string.

    >>> h = Hasher(); h.update(b"a"); h.update(b"b"); h.digest() == sha256_digest(b"ab")
    True
    """

    __slots__ = ("_h", "size")

    def __init__(self, data: Iterable[bytes] | bytes | None = None) -> None:
        self._h = hashlib.sha256()
        #: number of bytes fed so far
        self.size = 0
        if isinstance(data, (bytes, bytearray, memoryview)):
            self.update(data)
        elif data is not None:
            for piece in data:
                self.update(piece)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes."""
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> str:
        """``"sha256:<hex>"`` of everything fed so far (the hasher stays usable)."""
        return f"{_ALGO}:{self._h.hexdigest()}"

    def copy(self) -> Hasher:
        """An independent copy of the current state."""
        other = Hasher()
        other._h = self._h.copy()
        other.size = self.size
        return other
