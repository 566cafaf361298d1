"""zstd:chunked / eStargz format model (no I/O): footers, skippable frames, TOC model, parse + serialize,
annotations, verify-then-trust TOC decoding, and the validated layer index.

Layout (each module owns one noun; imports only go downwards in this list)::

    dialect      Dialect enum
    frames       skippable frames, zstd magic
    gojson       Go-compatible JSON strings and RFC 3339 times
    toc          TocEntry / Toc, serialize_toc
    tocexact     parse_toc_exact: the reference parser (pure Python, Go's semantics, exact errors)
    tocparse     parse_toc: the compiled fast path, falling back to the reference parser
    footer       Footer, footer_bytes, parse_footer          (estargz: the gzip footer + TOC member)
    annotations  TocLocation, toc_location_from_annotations, annotations_for
    verify       decode_and_verify_toc, tar-split verification
    tree         LayerIndex / FileNode / Chunk, whiteout + path helpers
    chunkranges  where each dialect's chunks lie in the blob, and how a file's chunks tile it
    index        build_index (validation of the tree)
    hints        the prefetch hint annotation: the prefetch list's byte ranges, written and parsed
"""

from fs.format.annotations import TocLocation, annotations_for, toc_location_from_annotations
from fs.format.dialect import Dialect
from fs.format.estargz import extract_gzip_toc
from fs.format.footer import FOOTER_FETCH_SIZE, TAIL_PREFETCH_SIZE, Footer, footer_bytes, parse_footer
from fs.format.frames import SKIPPABLE_MAGIC, ZSTD_MAGIC, skippable_frame
from fs.format.index import build_index
from fs.format.toc import (
    MAX_TOC_SIZE,
    Toc,
    TocEntry,
    ns_to_rfc3339,
    rfc3339_to_ns,
    serialize_toc,
)
from fs.format.tocparse import parse_toc, sniff_toc_dialect
from fs.format.tree import (
    OPAQUE_WHITEOUT,
    Chunk,
    FileNode,
    LayerIndex,
    is_whiteout,
    normalize_name,
    whiteout_target,
)
from fs.format.verify import (
    decode_and_verify_toc,
    decompress_and_verify_tar_split,
    decompress_and_verify_toc,
    zstd_decompress,
)

__all__ = [
    "FOOTER_FETCH_SIZE",
    "MAX_TOC_SIZE",
    "OPAQUE_WHITEOUT",
    "SKIPPABLE_MAGIC",
    "TAIL_PREFETCH_SIZE",
    "ZSTD_MAGIC",
    "Chunk",
    "Dialect",
    "FileNode",
    "Footer",
    "LayerIndex",
    "Toc",
    "TocEntry",
    "TocLocation",
    "annotations_for",
    "build_index",
    "decode_and_verify_toc",
    "decompress_and_verify_tar_split",
    "decompress_and_verify_toc",
    "extract_gzip_toc",
    "footer_bytes",
    "is_whiteout",
    "normalize_name",
    "ns_to_rfc3339",
    "parse_footer",
    "parse_toc",
    "rfc3339_to_ns",
    "serialize_toc",
    "skippable_frame",
    "sniff_toc_dialect",
    "toc_location_from_annotations",
    "whiteout_target",
    "zstd_decompress",
]
