"""Build test tars (in memory, or streamed for huge ones) with every entry kind the converter handles.

``build_tar(members, fmt=...)`` writes a tar with Python's :mod:`tarfile` (record size 512 so the archive
ends with exactly 1024 zero bytes, or ``padding_to`` for the classic 10240-byte record padding) and
returns it with the payload of every regular file, keyed by the raw name bytes (what a tar-split
reassembler needs).
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import tarfile
from collections.abc import Iterable

__all__ = [
    "Member",
    "StreamingZeroTar",
    "TarImage",
    "build_tar",
    "standard_members",
    "zero_heavy",
]

MTIME = 1_700_000_000


@dataclasses.dataclass
class Member:
    """One tar member to write. ``kind`` is a :mod:`tarfile` type constant."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: float = MTIME
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TarImage:
    """A built tar and what went into it."""

    data: bytes
    files: dict[bytes, bytes]  # raw name -> payload, for every member with payload


def build_tar(members: Iterable[Member], *, fmt: int = tarfile.PAX_FORMAT, padding_to: int = 512) -> TarImage:
    """Write ``members`` as a tar of format ``fmt`` (PAX_FORMAT or GNU_FORMAT).

    ``padding_to``: the archive size is rounded up to a multiple of this (tarfile's RECORDSIZE semantics);
    512 means "exactly two zero blocks at the end".
    """
    buf = io.BytesIO()
    files: dict[bytes, bytes] = {}
    tf = tarfile.open(  # noqa: SIM115 (closed below; its end padding is replaced)
        fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape"
    )
    for m in members:
        info = tarfile.TarInfo(m.name)
        info.type = m.kind
        info.mode = m.mode
        info.uid, info.gid = m.uid, m.gid
        info.uname, info.gname = m.uname, m.gname
        info.mtime = m.mtime
        info.linkname = m.linkname
        info.devmajor, info.devminor = m.devmajor, m.devminor
        if m.pax:
            info.pax_headers = dict(m.pax)
        if m.kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
            info.size = len(m.data)
            tf.addfile(info, io.BytesIO(m.data))
            if m.data:
                files[os.fsencode(m.name)] = m.data
        else:
            tf.addfile(info)
    end = tf.offset
    tf.close()
    # tarfile pads to its global 10240-byte RECORDSIZE; write the end marker and padding ourselves
    data = buf.getvalue()[:end] + bytes(1024)
    data += bytes(-len(data) % padding_to)
    return TarImage(data=data, files=files)


def zero_heavy(rng: random.Random, size: int) -> bytes:
    """Data with zero runs of many lengths (shorter and longer than the 1024-byte hole threshold)."""
    out = bytearray()
    runs = [1, 100, 1023, 1024, 1025, 4096, 70_000, 300_000]
    while len(out) < size:
        out += rng.randbytes(rng.choice([10, 500, 3000, 40_000, 200_000]))
        out += bytes(rng.choice(runs))
    return bytes(out[:size])


def standard_members(*, seed: int = 7, big: int = 3 << 20) -> list[Member]:
    """Every entry kind: dirs, empty/small/big/zero-heavy files, links, devices, fifo, long names,
    xattrs, non-UTF-8 names, whiteouts, a sub-second mtime, a file ending in zeros."""
    rng = random.Random(seed)
    long_dir = "deep/" + "/".join(["d" * 40] * 3)
    return [
        Member("etc/", tarfile.DIRTYPE, mode=0o755),
        Member("etc/empty", data=b""),
        Member("etc/hosts", data=b"127.0.0.1 localhost\n"),
        Member("etc/exact512", data=rng.randbytes(512)),
        Member(
            "etc/text", data=b"hello world\n" * 5000, mode=0o600, uid=1000, gid=1000, uname="u", gname="g"
        ),
        Member("bin/", tarfile.DIRTYPE, mode=0o755),
        Member("bin/big", data=rng.randbytes(big), mode=0o755),
        Member("bin/sparse", data=zero_heavy(rng, 2 << 20)),
        Member("bin/allzero", data=bytes(300_000)),
        Member("bin/tailzero", data=rng.randbytes(5000) + bytes(3000)),
        Member("bin/small-hole", data=rng.randbytes(100) + bytes(2000) + rng.randbytes(100)),
        Member("bin/hard", tarfile.LNKTYPE, linkname="bin/big"),
        Member("bin/sym", tarfile.SYMTYPE, linkname="big", mode=0o777),
        Member("dev/", tarfile.DIRTYPE, mode=0o755),
        Member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        Member("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0),
        Member("dev/fifo", tarfile.FIFOTYPE, mode=0o600),
        Member(long_dir + "/", tarfile.DIRTYPE, mode=0o755),
        Member(long_dir + "/file-with-a-long-name-" + "x" * 60, data=b"long\n"),
        Member(long_dir + "/link", tarfile.SYMTYPE, linkname="../" + "t" * 120),
        Member("attrs", data=b"x", pax={"SCHILY.xattr.user.x": "v1", "SCHILY.xattr.user.empty": ""}),
        Member("caps", data=b"y", pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}),
        Member("latin1-\udce9t\udce9", data=b"non-utf8 name\n"),
        Member("utf8-é-<&>", data=b"utf8 name\n"),
        Member(".wh.foo", data=b""),
        Member("etc/.wh..wh..opq", data=b""),
        Member("subsec", data=b"t", mtime=MTIME + 0.123456789),
        Member("setuid", data=b"s", mode=0o4755),
        Member("sticky/", tarfile.DIRTYPE, mode=0o1777),
    ]


class StreamingZeroTar(io.RawIOBase):
    """A read-only, non-seekable tar of one ``size``-byte all-zero file plus a small file, generated on the
    fly (for > 4 GiB tests without storing the tar)."""

    def __init__(self, size: int, *, fmt: int = tarfile.PAX_FORMAT) -> None:
        info = tarfile.TarInfo("huge.img")
        info.size = size
        info.mtime = MTIME
        head = info.tobuf(fmt, "utf-8", "surrogateescape")
        small = tarfile.TarInfo("after")
        small.size = 5
        small.mtime = MTIME
        tail = (
            bytes(-size % 512)
            + small.tobuf(fmt, "utf-8", "surrogateescape")
            + b"after"
            + bytes(507)
            + bytes(1024)
        )
        self._parts: list[tuple[bytes | None, int]] = [(head, len(head)), (None, size), (tail, len(tail))]
        self.size = len(head) + size + len(tail)
        self._index = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        while self._index < len(self._parts):
            data, length = self._parts[self._index]
            left = length - self._pos
            if left <= 0:
                self._index += 1
                self._pos = 0
                continue
            n = min(left, len(b))
            if data is None:
                b[:n] = bytes(n)
            else:
                b[:n] = data[self._pos : self._pos + n]
            self._pos += n
            return n
        return 0

    def expected_sha256(self) -> str:
        """sha256 of the whole stream, computed by streaming a fresh copy."""
        import hashlib

        h = hashlib.sha256()
        copy = StreamingZeroTar(self._parts[1][1])
        while chunk := copy.read(8 << 20):
            h.update(chunk)
        return "sha256:" + h.hexdigest()
