"""fs.format against the real skopeo 1.9.3 and ctr-remote 0.12 images in tests/data/vectors."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest
import zstandard

from fs.digest import sha256_digest
from fs.format import (
    FOOTER_FETCH_SIZE,
    TAIL_PREFETCH_SIZE,
    Dialect,
    LayerIndex,
    annotations_for,
    build_index,
    decode_and_verify_toc,
    decompress_and_verify_toc,
    footer_bytes,
    parse_footer,
    parse_toc,
    serialize_toc,
    sniff_toc_dialect,
    toc_location_from_annotations,
    whiteout_target,
)
from fs.format.tree import OPAQUE_WHITEOUT, is_whiteout

SKOPEO = "skopeo-1.9.3-zstd-chunked"
CTR = "ctr-remote-0.12-zstdchunked"
EXPECTED_DIALECT = {SKOPEO: Dialect.CSTORAGE_V1, CTR: Dialect.STARGZ_ZSTD}
LAYERS = [(v, i) for v in (SKOPEO, CTR) for i in range(3)]


@dataclasses.dataclass
class Layer:
    variant: str
    descriptor: dict
    blob: bytes
    toc_json: bytes

    @property
    def annotations(self) -> dict[str, str]:
        return self.descriptor["annotations"]


def load_layers(vectors_dir: Path, variant: str) -> list[Layer]:
    root = vectors_dir / variant
    index = json.loads((root / "index.json").read_bytes())
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads((root / "blobs" / "sha256" / manifest_digest[7:]).read_bytes())
    out = []
    for desc in manifest["layers"]:
        hexd = desc["digest"][7:]
        blob = (root / "blobs" / "sha256" / hexd).read_bytes()
        assert sha256_digest(blob) == desc["digest"]
        out.append(Layer(variant, desc, blob, (root / "toc" / f"{hexd[:12]}.toc.json").read_bytes()))
    return out


def load_index(layer: Layer) -> LayerIndex:
    loc = toc_location_from_annotations(
        layer.annotations, layer.descriptor["mediaType"], blob_size=len(layer.blob)
    )
    assert loc is not None
    toc = decode_and_verify_toc(layer.blob[loc.offset : loc.offset + loc.length], loc)
    return build_index(toc, loc.dialect, len(layer.blob), toc_offset=loc.offset)


def zstd_stream(data: bytes) -> bytes:
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True) as r:
        return r.read()


def read_file(layer: Layer, index: LayerIndex, path: str) -> bytes:
    node = index.lookup(path)
    assert node is not None and node.type == "reg"
    out = bytearray()
    for c in index.chunks_for(node, 0, node.size):
        raw = zstd_stream(layer.blob[c.compressed_offset : c.compressed_end])
        if layer.variant == SKOPEO:  # c/storage: the range is exactly the chunk's frame(s)
            assert len(raw) == c.size, f"{path} chunk @{c.file_offset}"
        piece = raw[c.inner_offset : c.inner_offset + c.size]
        assert len(piece) == c.size
        assert sha256_digest(piece) == c.digest, f"{path} chunk @{c.file_offset}"
        if c.zeros:
            assert piece == bytes(c.size)
        out += piece
    return bytes(out)


@pytest.fixture(scope="module")
def layers(vectors_dir: Path) -> dict[str, list[Layer]]:
    return {v: load_layers(vectors_dir, v) for v in (SKOPEO, CTR)}


@pytest.mark.parametrize(("variant", "i"), LAYERS)
def test_footer_from_blob_tail_matches_annotation(layers, variant, i):
    layer = layers[variant][i]
    size = len(layer.blob)
    off, clen, ulen, _ = map(
        int, layer.annotations["io.containers.zstd-chunked.manifest-position"].split(":")
    )
    for tail in (layer.blob[-FOOTER_FETCH_SIZE:], layer.blob[-TAIL_PREFETCH_SIZE:]):
        footer = parse_footer(tail, size)
        assert footer.dialect is Dialect.CSTORAGE_V1  # the 40-byte footer is shared by both writers
        assert (footer.toc_offset, footer.toc_length, footer.toc_uncompressed_length) == (off, clen, ulen)
        assert footer.size == 48
    assert footer_bytes(footer) == layer.blob[-48:]


@pytest.mark.parametrize(("variant", "i"), LAYERS)
def test_toc_location_verify_and_bytes(layers, variant, i):
    layer = layers[variant][i]
    loc = toc_location_from_annotations(
        layer.annotations, layer.descriptor["mediaType"], blob_size=len(layer.blob)
    )
    assert loc is not None and loc.dialect is EXPECTED_DIALECT[variant]
    compressed = layer.blob[loc.offset : loc.offset + loc.length]
    if variant == SKOPEO:
        assert loc.digest_of == "compressed" and loc.digest == sha256_digest(compressed)
    else:
        assert loc.digest_of == "uncompressed" and loc.digest == sha256_digest(layer.toc_json)
        assert loc.compressed_digest == sha256_digest(compressed)
        assert loc.uncompressed_size == len(zstd_stream(layer.blob))
    data = decompress_and_verify_toc(compressed, loc)
    assert data == layer.toc_json
    assert sniff_toc_dialect(data) is EXPECTED_DIALECT[variant]
    footer = parse_footer(layer.blob[-FOOTER_FETCH_SIZE:], len(layer.blob))
    assert loc.with_footer(footer) == loc


@pytest.mark.parametrize(("variant", "i"), LAYERS)
def test_annotations_for_reproduces_the_manifest(layers, variant, i):
    layer = layers[variant][i]
    loc = toc_location_from_annotations(layer.annotations, layer.descriptor["mediaType"])
    got = annotations_for(
        loc.dialect,
        loc,
        loc.digest,
        compressed_toc_digest=loc.compressed_digest or None,
        uncompressed_size=loc.uncompressed_size,
    )
    assert got == layer.annotations


def test_every_vector_toc_reserializes_byte_exact(vectors_dir):
    files = sorted(vectors_dir.glob("*/toc/*.toc.json"))
    assert len(files) == 6
    for f in files:
        data = f.read_bytes()
        dialect = EXPECTED_DIALECT[f.parent.parent.name]
        assert serialize_toc(parse_toc(data, dialect), dialect) == data, f
        # Same schema family, other dialect name: identical bytes.
        other = {Dialect.CSTORAGE_V1: Dialect.CSTORAGE, Dialect.STARGZ_ZSTD: Dialect.ESTARGZ_GZIP}[dialect]
        assert serialize_toc(parse_toc(data, other), other) == data


@pytest.mark.parametrize(("variant", "i"), LAYERS)
def test_every_file_decodes_from_its_chunks(layers, variant, i):
    layer = layers[variant][i]
    index = load_index(layer)
    files = 0
    for path, node in index:
        if node.type == "reg" and node.path == path:
            data = read_file(layer, index, path)
            assert sha256_digest(data) == node.digest, path
            files += 1
    assert files > 0
    # chunk ranges never include the TOC frame
    assert all(c.compressed_end <= index.data_end for _, n in index for c in n.chunks)


def _merge(layers: list[Layer]) -> dict[str, str]:
    """Apply the layers like overlayfs would; map path -> sha256 hex of regular files."""
    merged: dict[str, str] = {}
    for layer in layers:
        index = load_index(layer)
        for path, _node in index:
            head, _, base = path.rpartition("/")
            if base == OPAQUE_WHITEOUT:
                for p in [p for p in merged if p.startswith(head + "/")]:
                    del merged[p]
            elif is_whiteout(path):
                target = whiteout_target(path)
                for p in [p for p in merged if p == target or p.startswith(target + "/")]:
                    del merged[p]
        for path, node in index:
            if node.type == "reg" and not is_whiteout(path):
                merged[path] = hashlib.sha256(read_file(layer, index, path)).hexdigest()
    return merged


@pytest.mark.parametrize("variant", [SKOPEO, CTR])
def test_merged_rootfs_matches_features_sha256sums(layers, vectors_dir, variant):
    expected = {}
    for line in (vectors_dir / "features.SHA256SUMS").read_text().splitlines():
        hexd, path = line.split("  ", 1)
        expected[path.lstrip("/")] = hexd
    merged = _merge(layers[variant])
    assert merged == expected


def test_both_dialects_describe_the_same_tree(layers):
    for a, b in zip(layers[SKOPEO], layers[CTR], strict=True):
        ia, ib = load_index(a), load_index(b)
        paths_a = {p for p, _ in ia}
        paths_b = {p for p, _ in ib}
        assert paths_a == paths_b
        for p in paths_a:
            na, nb = ia.lookup(p), ib.lookup(p)
            for attr in ("type", "mode", "size", "uid", "gid", "digest", "nlink", "link_target", "rdev"):
                assert getattr(na, attr) == getattr(nb, attr), (p, attr)
            assert na.mtime_ns == nb.mtime_ns, p
            # c/storage 1.43 drops empty-valued xattrs; stargz keeps them ("user.empty": "")
            assert na.xattrs == {k: v for k, v in nb.xattrs.items() if v}, p


def test_feature_layer_details(layers):
    skopeo = load_index(layers[SKOPEO][2])
    ctr = load_index(layers[CTR][2])
    for index in (skopeo, ctr):
        assert index.lookup("feat/opaque/.wh..wh..opq") is not None
        link = index.lookup("feat/hardlink-to-regular")
        assert link is not None and link.nlink == 2 and link.type == "reg"
        assert any(n.type == "fifo" for _, n in index)
        assert any(n.type == "char" and n.rdev for _, n in index)
        assert index.lookup("feat/xattr-file").xattrs.get("user.lazyh") == b"hello"
        assert index.lookup("/feat/space name.txt") is not None
    # skopeo 1.9.3 writes Go's zero time for access/change time: reported as "unset"
    node = skopeo.lookup("feat/opaque/c")
    assert node.atime_ns is None and node.ctime_ns is None and node.mtime_ns == 1_700_000_000 * 10**9
    # multi-chunk files with zero runs exist in the c/storage vector, and chunks_for bisects them
    big = max((n for _, n in skopeo if n.type == "reg"), key=lambda n: len(n.chunks))
    assert len(big.chunks) > 10
    sparse = [n for _, n in skopeo if n.type == "reg" and any(c.zeros for c in n.chunks)]
    assert sparse and all(read_file(layers[SKOPEO][2], skopeo, n.path) for n in sparse)
    mid = big.chunks[5]
    assert skopeo.chunks_for(big, mid.file_offset, 1) == [mid]
    assert skopeo.chunks_for(big, mid.file_offset - 1, 2) == big.chunks[4:6]
    assert skopeo.chunks_for(big, 0, big.size) == big.chunks
    assert skopeo.chunks_for(big, big.size, 10) == []
    # ctr-remote: 4 MiB eStargz chunks, landmark hidden, no prefetch
    assert any(len(n.chunks) == 2 for _, n in ctr)
    assert ctr.no_prefetch and ctr.prefetch_landmark_offset is None
    assert ctr.lookup(".no.prefetch.landmark") is None
    assert ".no.prefetch.landmark" not in dict(ctr.children(""))


@pytest.mark.parametrize("variant", [SKOPEO, CTR])
def test_hardlinks_share_one_node_and_inodes_are_unique(layers, variant):
    index = load_index(layers[variant][2])
    link = index.lookup("feat/hardlink-to-regular")
    names = sorted(p for p, n in index if n is link)
    assert link.nlink == len(names) == 2
    assert len({n.ino for _, n in index}) == len({id(n) for _, n in index})
    # the busybox applets are symlinks, not hardlinks
    base = load_index(layers[variant][0])
    applets = [n for _, n in base if n.type == "symlink" and n.link_target == "busybox"]
    assert len(applets) > 100 and all(n.size == len("busybox") for n in applets)
