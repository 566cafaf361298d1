"""zsnap's exception tree.

Every error zsnap raises on purpose derives from :class:`ZsnapError`; foreign errors (httpx, lmdb,
zstandard, OSError) are translated once, in the module that calls the foreign library::

    ZsnapError                  anything zsnap reports on purpose
    ├── FormatError             a footer, TOC, tar stream or manifest is malformed or inconsistent
    │   └── UnsupportedFormat   well-formed, but not something zsnap can read lazily
    ├── VerificationError       bytes do not hash to the digest that vouches for them
    ├── RegistryError           the registry refused, failed or was unreachable
    │   ├── AuthError           credentials missing or rejected (401/403 after refresh)
    │   ├── NotFoundError       manifest or blob does not exist (404)
    │   └── RegistryUnavailable network failure or timeout after the bounded retries
    ├── StoreError              the local store cannot do what was asked
    │   ├── NotInStore          the object is not (or no longer) in the store
    │   ├── ProducerFailed      the producer of a shared temp object failed; waiters may retry
    │   └── DiskFull            not enough free space, with how much is needed and where
    └── ConversionError         a conversion step failed (wraps the cause)

Errors carry context (``image``, ``layer``, ``path``) as attributes, and :func:`error_context` attaches it
as an error propagates so that messages name the image, layer and file without every frame repeating it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "AuthError",
    "ConversionError",
    "DiskFull",
    "FormatError",
    "NotFoundError",
    "NotInStore",
    "ProducerFailed",
    "RegistryError",
    "RegistryUnavailable",
    "StoreError",
    "UnsupportedFormat",
    "VerificationError",
    "ZsnapError",
    "error_context",
]

_CONTEXT_KEYS = ("image", "layer", "path")


class ZsnapError(Exception):
    """Base of every error zsnap raises on purpose.

    Args:
        message: what went wrong, in words a user can act on.
        image, layer, path: optional context; also settable later through :func:`error_context`.
    """

    def __init__(
        self,
        message: str,
        *,
        image: str | None = None,
        layer: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.image = image
        self.layer = layer
        self.path = path

    def __str__(self) -> str:
        where = [f"{key} {_printable(getattr(self, key))}" for key in _CONTEXT_KEYS if getattr(self, key)]
        return f"{self.message} ({', '.join(where)})" if where else self.message


def _printable(value: str, limit: int = 200) -> str:
    """Context as one printable line: an image may name a file with 10,000 components or with bytes that
    are not UTF-8 (kept as lone surrogates), and neither may break or flood the ``zsnap: error:`` line."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[: limit // 2]}…{text[-limit // 2 :]} ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class FormatError(ZsnapError):
    """A footer, TOC, tar stream or manifest is malformed or inconsistent."""


class UnsupportedFormat(FormatError):
    """Input is well-formed but cannot be read lazily (e.g. a plain gzip layer)."""


class VerificationError(ZsnapError):
    """Bytes do not hash to the digest that vouches for them; they must never be served or cached."""


class RegistryError(ZsnapError):
    """The registry refused, failed or could not be reached.

    Attributes:
        status: the HTTP status code, when there was a response.
    """

    def __init__(self, message: str, *, status: int | None = None, **context: str | None) -> None:
        super().__init__(message, **context)
        self.status = status


class AuthError(RegistryError):
    """Credentials are missing or were rejected even after a token refresh."""


class NotFoundError(RegistryError):
    """The manifest or blob does not exist."""


class RegistryUnavailable(RegistryError):
    """Network failure or timeout that persisted through the bounded retries."""


class StoreError(ZsnapError):
    """The local store cannot do what was asked."""


class NotInStore(StoreError):
    """The object is not (or no longer) in the store."""


class ProducerFailed(StoreError):
    """The producer of a shared temp object failed or was cancelled; a waiter may retry."""


class DiskFull(StoreError):
    """Not enough free space: the message says how much is needed and where."""


class ConversionError(ZsnapError):
    """A conversion step failed; ``__cause__`` holds the underlying error."""


@contextlib.contextmanager
def error_context(
    *, image: str | None = None, layer: str | None = None, path: str | None = None
) -> Iterator[None]:
    """Attach image/layer/path to any :class:`ZsnapError` passing through, without overwriting.

    Inner frames know the most specific context (the file), outer frames the broadest (the image);
    each fills only what is still missing. Errors inside exception groups (a trio nursery opening several
    layers at once) get it too.
    """
    try:
        yield
    except BaseException as exc:
        for leaf in _zsnap_leaves(exc):
            for key, value in (("image", image), ("layer", layer), ("path", path)):
                if value and not getattr(leaf, key):
                    setattr(leaf, key, value)
        raise


def _zsnap_leaves(exc: BaseException) -> Iterator[ZsnapError]:
    if isinstance(exc, ZsnapError):
        yield exc
    elif isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _zsnap_leaves(inner)
