"""zstd:chunked / eStargz format model: footers, skippable frames, TOC model, parse + serialize (no I/O)."""

from fs.format.dialect import Dialect
from fs.format.footer import FOOTER_FETCH_SIZE, TAIL_PREFETCH_SIZE, Footer, footer_bytes, parse_footer
from fs.format.frames import SKIPPABLE_MAGIC, ZSTD_MAGIC, skippable_frame
from fs.format.toc import (
    MAX_TOC_SIZE,
    Toc,
    TocEntry,
    ns_to_rfc3339,
    parse_toc,
    rfc3339_to_ns,
    serialize_toc,
    sniff_toc_dialect,
)

__all__ = [
    "FOOTER_FETCH_SIZE",
    "MAX_TOC_SIZE",
    "SKIPPABLE_MAGIC",
    "TAIL_PREFETCH_SIZE",
    "ZSTD_MAGIC",
    "Dialect",
    "Footer",
    "Toc",
    "TocEntry",
    "footer_bytes",
    "ns_to_rfc3339",
    "parse_footer",
    "parse_toc",
    "rfc3339_to_ns",
    "serialize_toc",
    "skippable_frame",
    "sniff_toc_dialect",
]
