"""Rules for names inside a layer, shared by the reader (:func:`fs.format.index.build_index`) and the
converter (:class:`LayerNames` over the source tar), so that zsnap never publishes what it refuses to
mount.

* Every name normalizes inside the layer (:func:`~fs.format.tree.normalize_name`: no ``..`` component,
  no NUL, not empty) and stays within the path limits (``max-path-length`` bytes, ``max-path-depth``
  components, ``max-name-length`` bytes per component; symlink targets only the first two).
* A hardlink names an entry seen earlier in the same layer that is not a directory
  (:func:`check_hardlink_target`); its target is normalized by the same rule, so ``../../etc/shadow``
  is refused, not cleaned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from fs.errors import FormatError
from fs.format.tree import normalize_name
from fs.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "MAX_DEV_MAJOR",
    "MAX_DEV_MINOR",
    "LayerNames",
    "check_device",
    "check_hardlink_target",
    "check_path",
]

# Linux dev_t as the kernel keeps it (MINORBITS = 20): a bigger number cannot be a real device.
MAX_DEV_MAJOR = (1 << 12) - 1
MAX_DEV_MINOR = (1 << 20) - 1


class _Typed(Protocol):
    type: str
    implied: bool


def check_path(name: str, path: str, limits: Limits = DEFAULT_LIMITS, what: str = "path") -> None:
    """Refuse a normalized ``path`` (of raw ``name``) or a symlink target beyond the path limits.

    Args:
        what: ``"path"`` (all three limits) or e.g. ``"symlink target"`` (length and depth only: a
            target's components are not names in this layer).

    Raises:
        FormatError: the message names the limit's config key.
    """
    size = len(path) if path.isascii() else len(path.encode("utf-8", "surrogateescape"))
    if size > limits.max_path_length:
        raise FormatError(
            f"{what} is {size} bytes long, more than {limits.max_path_length} (max-path-length)"
        )
    if size <= limits.max_name_length:
        return  # no component can be longer, and depth <= length
    parts = path.split("/")
    if len(parts) > limits.max_path_depth:
        raise FormatError(
            f"{what} has {len(parts)} components, more than {limits.max_path_depth} (max-path-depth)"
        )
    if what == "path":
        longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
        if longest > limits.max_name_length:
            raise FormatError(
                f"a component of {name!r} is {longest} bytes long, more than {limits.max_name_length} "
                "(max-name-length)"
            )


def check_device(major: int, minor: int) -> None:
    """Refuse a device number the kernel cannot represent (``os.makedev`` would overflow or truncate).

    Raises:
        FormatError: major or minor out of range.
    """
    if not (0 <= major <= MAX_DEV_MAJOR and 0 <= minor <= MAX_DEV_MINOR):
        raise FormatError(
            f"device number {major}:{minor} is out of range (major < {MAX_DEV_MAJOR + 1}, "
            f"minor < {MAX_DEV_MINOR + 1})"
        )


def check_hardlink_target(name: str, link_name: str, seen: Mapping[str, _Typed]) -> _Typed:
    """The entry hardlink ``name`` points to: seen earlier (explicitly) in the layer, not a directory.

    Raises:
        FormatError: the target is empty, escapes the layer, is missing or is a directory.
    """
    if not link_name:
        raise FormatError(f"hardlink {name!r} points to a missing target (its link name is empty)")
    try:
        target = normalize_name(link_name)
    except FormatError:
        raise FormatError(f"hardlink {name!r} target {link_name!r} escapes the layer") from None
    node = seen.get(target)
    if node is None or node.implied:
        raise FormatError(f"hardlink {name!r} points to missing {link_name!r}")
    if node.type == "dir":
        raise FormatError(f"hardlink {name!r} points to directory {link_name!r}")
    return node


class _Seen:
    __slots__ = ("implied", "type")

    def __init__(self, type: str) -> None:
        self.type = type
        self.implied = False


_DIR = _Seen("dir")
_OTHER = _Seen("reg")


class LayerNames:
    """Check a layer's entries one by one, in order, by the rules a mount applies (module docstring).

    Later entries of the same name replace earlier ones (tar semantics); only the kind is remembered.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._seen: dict[str, _Seen] = {}

    def add(self, name: str, type: str, link_name: str = "") -> str:
        """Check one entry (``type`` as in a TOC: ``reg``, ``dir``, ``hardlink``, ...); its normalized path.

        Raises:
            FormatError: naming the entry (``exc.path``).
        """
        try:
            try:
                path = normalize_name(name)
            except FormatError:
                if name.strip("/") in ("", "."):  # "./" or "/": the root itself
                    return ""
                raise
            check_path(name, path, self.limits)
            if type == "hardlink":
                check_hardlink_target(name, link_name, self._seen)
            elif type == "symlink":
                check_path(name, link_name, self.limits, "symlink target")
            self._seen[path] = _DIR if type == "dir" else _OTHER
            return path
        except FormatError as exc:
            if not exc.path:
                exc.path = name
            raise
