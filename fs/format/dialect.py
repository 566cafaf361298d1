"""The zstd:chunked / eStargz dialects zsnap reads and writes (FORMAT.md "Key point up front")."""

from __future__ import annotations

import enum

__all__ = ["Dialect"]


class Dialect(enum.Enum):
    """Which writer family produced a layer; decides footer, TOC schema, annotations and trust anchor.

    * ``CSTORAGE``: containers/storage ≥ v1.50 (Dialect A): 64-byte footer ``GNUlInUx``, compact c/storage
      TOC, tar-split frame, ``io.github.containers.zstd-chunked.*`` annotations, TOC digest = sha256 of the
      *compressed* TOC. (Also used for c/storage 1.44–1.49 layers that carry the ``io.github`` keys.)
    * ``CSTORAGE_V1``: c/storage ≤ v1.46 (skopeo 1.9.3): 40-byte footer ``GnUlInUx``, compact c/storage TOC,
      no tar-split, ``io.containers.zstd-chunked.*`` annotations, digest of the compressed TOC.
    * ``STARGZ_ZSTD``: stargz-snapshotter ``--zstdchunked`` (Dialect B): 40-byte footer ``GnUlInUx``,
      tab-indented eStargz TOC, ``containerd.io/snapshot/stargz/toc.digest`` = sha256 of the
      *uncompressed* TOC.
    * ``ESTARGZ_GZIP``: gzip eStargz: 51-byte (or legacy 47-byte) gzip footer, TOC is the tar member
      ``stargz.index.json``, digest of the uncompressed TOC.
    """

    CSTORAGE = "cstorage"
    CSTORAGE_V1 = "cstorage-v1"
    STARGZ_ZSTD = "stargz-zstd"
    ESTARGZ_GZIP = "estargz-gzip"

    @property
    def is_cstorage(self) -> bool:
        """True for the c/storage TOC schema (compact JSON, digest of the compressed TOC)."""
        return self in (Dialect.CSTORAGE, Dialect.CSTORAGE_V1)

    @property
    def is_estargz(self) -> bool:
        """True for the eStargz TOC schema (indented JSON, digest of the uncompressed TOC)."""
        return self in (Dialect.STARGZ_ZSTD, Dialect.ESTARGZ_GZIP)
