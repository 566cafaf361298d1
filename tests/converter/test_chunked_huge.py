"""A > 4 GiB file through the converter, streamed (never stored): exact output, bounded memory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fs.format import Dialect, parse_footer
from fs.format.annotations import toc_location_from_annotations
from fs.format.verify import decode_and_verify_toc
from tests.converter.tarfactory import StreamingZeroTar

HUGE = (4 << 30) + 4097
REPO = Path(__file__).resolve().parents[2]

_CONVERT = """
import json, sys

def hwm_kib():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

sys.path.insert(0, {repo!r})
from converter.chunked import write_zstd_chunked
from tests.converter.tarfactory import StreamingZeroTar
with open({out!r}, "wb") as dst:
    layer = write_zstd_chunked(StreamingZeroTar({size}), dst)
print(json.dumps({{"digest": layer.digest, "size": layer.size, "diff_id": layer.diff_id,
                   "uncompressed_size": layer.uncompressed_size, "annotations": layer.annotations,
                   "maxrss_kib": hwm_kib()}}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_file_over_4_gib(tmp_path: Path) -> None:
    out = tmp_path / "huge.zst"
    script = _CONVERT.format(repo=str(REPO), out=str(out), size=HUGE)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    print(f"peak RSS converting a {HUGE >> 20} MiB file: {result['maxrss_kib'] // 1024} MiB")
    source = StreamingZeroTar(HUGE)
    assert result["uncompressed_size"] == source.size
    assert result["diff_id"] == source.expected_sha256()
    assert result["maxrss_kib"] < 300 * 1024, f"peak RSS {result['maxrss_kib'] // 1024} MiB"
    blob = out.read_bytes()
    assert result["size"] == len(blob) and result["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    # the zstd CLI decompresses it to the input stream
    digest = hashlib.sha256()
    with subprocess.Popen(["zstd", "-d", "-c", "-q", str(out)], stdout=subprocess.PIPE) as zstd:
        assert zstd.stdout is not None
        while chunk := zstd.stdout.read(8 << 20):
            digest.update(chunk)
    assert zstd.returncode == 0
    assert "sha256:" + digest.hexdigest() == result["diff_id"]
    # the TOC describes the huge file as zero chunks that add up to its size
    footer = parse_footer(blob[-72:], len(blob))
    location = toc_location_from_annotations(result["annotations"], None, blob_size=len(blob))
    assert location is not None and location.dialect is Dialect.CSTORAGE
    toc = decode_and_verify_toc(blob[footer.toc_offset : footer.toc_offset + footer.toc_length], location)
    huge = [e for e in toc.entries if e.name == "huge.img"]
    assert huge[0].type == "reg" and huge[0].size == HUGE
    assert sum(e.chunk_size for e in huge) == HUGE
    assert all(e.chunk_type == "zeros" for e in huge)
    zeros = hashlib.sha256(bytes(huge[1].chunk_size)).hexdigest()
    assert huge[1].chunk_digest == "sha256:" + zeros
    after = next(e for e in toc.entries if e.name == "after")
    assert after.digest == "sha256:" + hashlib.sha256(b"after").hexdigest()
