"""Layer-descriptor annotations: where the TOC is and which digest vouches for it (FORMAT.md §1.3, §2.4).

The manifest is the only authenticated input of a lazy read (§4.1), so the TOC digest comes from here:

================  =========================================================  =======================
dialect           trust anchor                                               position
================  =========================================================  =======================
``CSTORAGE``      ``io.github.containers.zstd-chunked.manifest-checksum``    ``…manifest-position``,
                  = sha256 of the *compressed* TOC                           ``…tarsplit-position``
``CSTORAGE_V1``   ``io.containers.zstd-chunked.manifest-checksum`` (same)    ``io.containers…position``
``STARGZ_ZSTD``   ``containerd.io/snapshot/stargz/toc.digest``               ``io.containers…position``
                  = sha256 of the *uncompressed* TOC JSON                    (optional: else footer)
``ESTARGZ_GZIP``  ``containerd.io/snapshot/stargz/toc.digest`` (same)        footer only
================  =========================================================  =======================

c/storage's rule "``io.github…manifest-checksum`` together with ``stargz/toc.digest`` is an error" is
enforced; the old-prefix checksum next to the stargz digest is what stargz-snapshotter writes and is fine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Literal

from fs.digest import parse_digest
from fs.errors import FormatError, UnsupportedFormat
from fs.format.dialect import Dialect
from fs.format.footer import MANIFEST_TYPE_CRFS, Footer
from fs.format.toc import MAX_TOC_SIZE

__all__ = [
    "CSTORAGE_MANIFEST_CHECKSUM",
    "CSTORAGE_MANIFEST_POSITION",
    "CSTORAGE_TARSPLIT_CHECKSUM",
    "CSTORAGE_TARSPLIT_POSITION",
    "ESTARGZ_UNCOMPRESSED_SIZE",
    "GZIP_LAYER_MEDIA_TYPES",
    "STARGZ_TOC_DIGEST",
    "V1_MANIFEST_CHECKSUM",
    "V1_MANIFEST_POSITION",
    "ZSTD_LAYER_MEDIA_TYPES",
    "TocLocation",
    "annotations_for",
    "toc_location_from_annotations",
]

_NEW = "io.github.containers.zstd-chunked."
_OLD = "io.containers.zstd-chunked."
CSTORAGE_MANIFEST_CHECKSUM = _NEW + "manifest-checksum"
CSTORAGE_MANIFEST_POSITION = _NEW + "manifest-position"
CSTORAGE_TARSPLIT_POSITION = _NEW + "tarsplit-position"
#: historic (c/storage 1.47–1.53): sha256 of the compressed tar-split; now ``tarSplitDigest`` in the TOC.
CSTORAGE_TARSPLIT_CHECKSUM = _NEW + "tarsplit-checksum"
V1_MANIFEST_CHECKSUM = _OLD + "manifest-checksum"
V1_MANIFEST_POSITION = _OLD + "manifest-position"
STARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ESTARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"

ZSTD_LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    }
)
GZIP_LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclasses.dataclass(frozen=True, slots=True)
class TocLocation:
    """Where a layer's TOC is and how to verify it, as told by the (authenticated) manifest.

    ``offset``/``length`` are the compressed TOC byte range; ``length == 0`` means the annotations do not
    give a position (eStargz without ``manifest-position``): read the footer to find it, then use
    :meth:`with_footer`. ``digest`` hashes the compressed bytes (``digest_of == "compressed"``, c/storage)
    or the decompressed JSON (``"uncompressed"``, eStargz). ``compressed_digest`` is the optional second
    check stargz-snapshotter layers carry (old-prefix ``manifest-checksum``). ``tar_split_*`` are 0 when
    absent; ``tar_split_digest`` is the historic ``tarsplit-checksum`` ("" if absent);
    ``uncompressed_size`` is ``io.containers.estargz.uncompressed-size`` (None if absent).
    """

    dialect: Dialect
    offset: int
    length: int
    uncompressed_length: int
    digest: str
    digest_of: Literal["compressed", "uncompressed"]
    tar_split_offset: int = 0
    tar_split_length: int = 0
    tar_split_uncompressed_length: int = 0
    tar_split_digest: str = ""
    compressed_digest: str = ""
    uncompressed_size: int | None = None

    @property
    def needs_footer(self) -> bool:
        """True when the TOC position must come from the blob footer."""
        return self.length == 0

    @property
    def has_tar_split(self) -> bool:
        """True when a tar-split position is known."""
        return self.tar_split_length > 0

    def with_footer(self, footer: Footer) -> TocLocation:
        """Fill the TOC position from an (unauthenticated) footer; the digest still decides trust.

        Raises:
            FormatError: the footer disagrees with a position the annotations already gave.
        """
        if not self.needs_footer:
            if (footer.toc_offset, footer.toc_length) != (self.offset, self.length):
                raise FormatError(
                    f"footer TOC position {footer.toc_offset}:{footer.toc_length} disagrees with the "
                    f"annotations ({self.offset}:{self.length})"
                )
            return self
        return dataclasses.replace(
            self,
            offset=footer.toc_offset,
            length=footer.toc_length,
            uncompressed_length=footer.toc_uncompressed_length,
        )


def _ints(value: str, count: int, key: str) -> list[int]:
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != count or not all(_DECIMAL.fullmatch(p) for p in parts):
        raise FormatError(f"annotation {key}={value!r}: expected {count} colon-separated decimal integers")
    return [int(p) for p in parts]


def _digest(annotations: Mapping[str, str], key: str) -> str:
    value = annotations[key]
    try:
        parse_digest(value)
    except FormatError as exc:
        raise FormatError(f"annotation {key}: {exc.message}") from None
    return value


def _position(annotations: Mapping[str, str], key: str) -> tuple[int, int, int]:
    off, clen, ulen, mtype = _ints(annotations[key], 4, key)
    if mtype != MANIFEST_TYPE_CRFS:
        raise FormatError(f"annotation {key}: unsupported manifest type {mtype} (expected 1)")
    if off < 8 or clen == 0:
        raise FormatError(f"annotation {key}: implausible TOC position {off}:{clen}")
    if clen > MAX_TOC_SIZE or ulen > MAX_TOC_SIZE:
        raise UnsupportedFormat(
            f"TOC of {clen} compressed / {ulen} uncompressed bytes exceeds the {MAX_TOC_SIZE}-byte cap"
        )
    return off, clen, ulen


def toc_location_from_annotations(
    annotations: Mapping[str, str] | None, media_type: str | None, *, blob_size: int | None = None
) -> TocLocation | None:
    """Decide from a layer descriptor whether (and how) the layer can be read lazily.

    Args:
        annotations: the descriptor's annotations (None/empty allowed).
        media_type: the descriptor's media type; None = unknown (do not filter on it).
        blob_size: the descriptor's size; when given, positions are checked against it.

    Returns:
        A :class:`TocLocation`, or None if the annotations do not mark a zstd:chunked/eStargz layer (a
        plain layer: pull it in full).

    Raises:
        FormatError: inconsistent or malformed annotations (both the ``io.github`` checksum and the stargz
            digest, a position without a checksum or vice versa, malformed digests/positions, eStargz
            annotations on a non-gzip/zstd media type, positions outside the blob).
        UnsupportedFormat: the TOC is bigger than :data:`~fs.format.toc.MAX_TOC_SIZE`.
    """
    ann = dict(annotations or {})
    is_zstd = media_type is None or media_type in ZSTD_LAYER_MEDIA_TYPES
    is_gzip = media_type is None or media_type in GZIP_LAYER_MEDIA_TYPES
    has_new = CSTORAGE_MANIFEST_CHECKSUM in ann
    has_old = V1_MANIFEST_CHECKSUM in ann
    has_stargz = STARGZ_TOC_DIGEST in ann
    if has_new and has_stargz:
        raise FormatError(
            f"layer carries both {CSTORAGE_MANIFEST_CHECKSUM} and {STARGZ_TOC_DIGEST}: ambiguous trust anchor"
        )
    if not (has_new or has_old or has_stargz):
        for key in (CSTORAGE_MANIFEST_POSITION, V1_MANIFEST_POSITION):
            if key in ann and is_zstd:
                raise FormatError(f"annotation {key} without a TOC checksum: cannot verify the TOC")
        return None
    if not is_zstd and not (has_stargz and is_gzip):
        raise FormatError(f"zstd:chunked/eStargz annotations on a layer of media type {media_type!r}")

    loc: TocLocation
    if has_new:
        if CSTORAGE_MANIFEST_POSITION not in ann:
            raise FormatError(f"{CSTORAGE_MANIFEST_CHECKSUM} without {CSTORAGE_MANIFEST_POSITION}")
        off, clen, ulen = _position(ann, CSTORAGE_MANIFEST_POSITION)
        ts = (0, 0, 0)
        if CSTORAGE_TARSPLIT_POSITION in ann:
            ts = tuple(_ints(ann[CSTORAGE_TARSPLIT_POSITION], 3, CSTORAGE_TARSPLIT_POSITION))  # type: ignore[assignment]
        ts_digest = _digest(ann, CSTORAGE_TARSPLIT_CHECKSUM) if CSTORAGE_TARSPLIT_CHECKSUM in ann else ""
        loc = TocLocation(
            Dialect.CSTORAGE, off, clen, ulen, _digest(ann, CSTORAGE_MANIFEST_CHECKSUM), "compressed",
            *ts, tar_split_digest=ts_digest,
        )  # fmt: skip
    elif has_stargz:
        size = None
        if ESTARGZ_UNCOMPRESSED_SIZE in ann:
            (size,) = _ints(ann[ESTARGZ_UNCOMPRESSED_SIZE], 1, ESTARGZ_UNCOMPRESSED_SIZE)
        zstd = media_type in ZSTD_LAYER_MEDIA_TYPES or (media_type is None and V1_MANIFEST_POSITION in ann)
        dialect = Dialect.STARGZ_ZSTD if zstd else Dialect.ESTARGZ_GZIP
        off = clen = ulen = 0
        if dialect is Dialect.STARGZ_ZSTD and V1_MANIFEST_POSITION in ann:
            off, clen, ulen = _position(ann, V1_MANIFEST_POSITION)
        loc = TocLocation(
            dialect, off, clen, ulen, _digest(ann, STARGZ_TOC_DIGEST), "uncompressed",
            compressed_digest=_digest(ann, V1_MANIFEST_CHECKSUM) if has_old else "",
            uncompressed_size=size,
        )  # fmt: skip
    else:
        if V1_MANIFEST_POSITION not in ann:
            raise FormatError(f"{V1_MANIFEST_CHECKSUM} without {V1_MANIFEST_POSITION}")
        off, clen, ulen = _position(ann, V1_MANIFEST_POSITION)
        loc = TocLocation(
            Dialect.CSTORAGE_V1, off, clen, ulen, _digest(ann, V1_MANIFEST_CHECKSUM), "compressed"
        )
    if blob_size is not None:
        _check_in_blob(loc, blob_size)
    return loc


def _check_in_blob(loc: TocLocation, blob_size: int) -> None:
    if loc.offset + loc.length > blob_size:
        raise FormatError(
            f"TOC range [{loc.offset}, {loc.offset + loc.length}) exceeds blob size {blob_size}"
        )
    end = loc.tar_split_offset + loc.tar_split_length
    if loc.has_tar_split and end > blob_size:
        raise FormatError(f"tar-split range [{loc.tar_split_offset}, {end}) exceeds blob size {blob_size}")


def annotations_for(
    dialect: Dialect,
    where: Footer | TocLocation,
    toc_digest: str,
    *,
    compressed_toc_digest: str | None = None,
    uncompressed_size: int | None = None,
) -> dict[str, str]:
    """The layer annotations a writer of ``dialect`` emits (keys sorted).

    Args:
        where: TOC (and, for ``CSTORAGE``, tar-split) position.
        toc_digest: the dialect's trust anchor: sha256 of the *compressed* TOC for c/storage dialects,
            of the *uncompressed* TOC JSON for eStargz dialects.
        compressed_toc_digest: ``STARGZ_ZSTD`` only (required): sha256 of the compressed TOC, written
            under the old ``io.containers.zstd-chunked.manifest-checksum`` key.
        uncompressed_size: eStargz dialects (required): length of the decompressed blob.

    Raises:
        FormatError: a required argument is missing or a digest is malformed.
    """
    parse_digest(toc_digest)
    if isinstance(where, Footer):
        off, clen, ulen = where.toc_offset, where.toc_length, where.toc_uncompressed_length
    else:
        off, clen, ulen = where.offset, where.length, where.uncompressed_length
    position = f"{off}:{clen}:{ulen}:{MANIFEST_TYPE_CRFS}"
    out: dict[str, str] = {}
    if dialect is Dialect.CSTORAGE:
        out[CSTORAGE_MANIFEST_CHECKSUM] = toc_digest
        out[CSTORAGE_MANIFEST_POSITION] = position
        if where.tar_split_length:
            out[CSTORAGE_TARSPLIT_POSITION] = (
                f"{where.tar_split_offset}:{where.tar_split_length}:{where.tar_split_uncompressed_length}"
            )
    elif dialect is Dialect.CSTORAGE_V1:
        out[V1_MANIFEST_CHECKSUM] = toc_digest
        out[V1_MANIFEST_POSITION] = position
    else:
        if uncompressed_size is None:
            raise FormatError(f"{dialect.value} annotations need the uncompressed blob size")
        out[STARGZ_TOC_DIGEST] = toc_digest
        out[ESTARGZ_UNCOMPRESSED_SIZE] = str(int(uncompressed_size))
        if dialect is Dialect.STARGZ_ZSTD:
            if compressed_toc_digest is None:
                raise FormatError("stargz zstdchunked annotations need the compressed TOC digest")
            parse_digest(compressed_toc_digest)
            out[V1_MANIFEST_CHECKSUM] = compressed_toc_digest
            out[V1_MANIFEST_POSITION] = position
    return dict(sorted(out.items()))
