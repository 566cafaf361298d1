"""Registry access: image references, the distribution API client (auth, ranges, uploads), OCI layouts.

Layout (imports go downwards only)::

    reference.py   ImageReference.parse("docker://host/repo:tag" | "oci:dir:tag")       pure
    media.py       media type constants, Accept headers                                    pure
    ranges.py      Range headers, Content-Range, multipart/byteranges, coalescing         pure
    credentials.py docker config.json credentials                                        local files
    http.py        httpx glue: error mapping, bounded/clean body reads, replayability    pure
    auth.py        RegistryAuth (httpx.Auth): challenges, docker credentials, tokens      I/O via httpx
    session.py     the request path: retries -> status -> httpx (auth, redirects)         I/O
    blob_reads.py  blob streams (resumed) and byte ranges, learned range quirks             I/O
    upload.py      blob upload: exists / cross-repo mount / POST, PATCH…, PUT              I/O
    client.py      RegistryClient (manifests, small blobs) + open_registry_client          I/O
    oci_layout.py  OciLayout: index.json, blobs/sha256, atomic writes                      local files
    endpoint.py    Endpoint (registry repository or OCI layout), LayoutReader, open_endpoint   I/O
"""

from .auth import Challenge, Credentials, RegistryAuth, TokenCache, parse_www_authenticate
from .client import Manifest, RangeSupport, RegistryClient, open_registry_client, range_support
from .media import ALL_MANIFEST_TYPES, INDEX_TYPES, MANIFEST_TYPES
from .oci_layout import OciLayout
from .reference import ImageReference, InvalidReference
from .session import RetryPolicy, SessionStatistics

__all__ = [
    "ALL_MANIFEST_TYPES",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "Challenge",
    "Credentials",
    "ImageReference",
    "InvalidReference",
    "Manifest",
    "OciLayout",
    "RangeSupport",
    "RegistryAuth",
    "RegistryClient",
    "RetryPolicy",
    "SessionStatistics",
    "TokenCache",
    "open_registry_client",
    "parse_www_authenticate",
    "range_support",
]
