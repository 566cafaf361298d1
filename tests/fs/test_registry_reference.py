"""ImageReference.parse: skopeo transport syntax, docker.io normalisation, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from fs.errors import FormatError
from fs.registry import ImageReference, InvalidReference

D = "sha256:" + "ab" * 32

# text -> (transport, registry, repository, tag, digest, reference, str)
CASES = [
    ("docker://127.0.0.1:5000/demo/app:v1", ("docker", "127.0.0.1:5000", "demo/app", "v1", None, "v1")),
    ("docker://127.0.0.1:5000/demo/app", ("docker", "127.0.0.1:5000", "demo/app", "latest", None, "latest")),
    (f"docker://127.0.0.1:5000/demo/app@{D}", ("docker", "127.0.0.1:5000", "demo/app", None, D, D)),
    (f"docker://127.0.0.1:5000/demo/app:v1@{D}", ("docker", "127.0.0.1:5000", "demo/app", "v1", D, D)),
    ("docker://[::1]:5000/demo/app:v1", ("docker", "[::1]:5000", "demo/app", "v1", None, "v1")),
    ("docker://localhost/app", ("docker", "localhost", "app", "latest", None, "latest")),
    (
        "docker://localhost:5000/a/b/c:1.0-rc_1",
        ("docker", "localhost:5000", "a/b/c", "1.0-rc_1", None, "1.0-rc_1"),
    ),
    ("docker://busybox", ("docker", "docker.io", "library/busybox", "latest", None, "latest")),
    ("docker://busybox:1.36", ("docker", "docker.io", "library/busybox", "1.36", None, "1.36")),
    ("docker://user/app:v2", ("docker", "docker.io", "user/app", "v2", None, "v2")),
    ("docker://docker.io/busybox", ("docker", "docker.io", "library/busybox", "latest", None, "latest")),
    (
        "docker://index.docker.io/library/busybox",
        ("docker", "docker.io", "library/busybox", "latest", None, "latest"),
    ),
    ("docker://ghcr.io/o/r:t", ("docker", "ghcr.io", "o/r", "t", None, "t")),
    (
        "docker://my-reg.example.com:443/x__y/z-1.2:T",
        ("docker", "my-reg.example.com:443", "x__y/z-1.2", "T", None, "T"),
    ),
    ("127.0.0.1:5000/demo/app:v1", ("docker", "127.0.0.1:5000", "demo/app", "v1", None, "v1")),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_parse_docker(text: str, expected: tuple) -> None:
    ref = ImageReference.parse(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag, ref.digest, ref.reference) == expected
    assert ImageReference.parse(str(ref)) == ref
    assert str(ImageReference.parse(str(ref))) == str(ref)


def test_canonical_strings() -> None:
    assert str(ImageReference.parse("docker://busybox")) == "docker://docker.io/library/busybox:latest"
    assert str(ImageReference.parse(f"docker://h:1/a@{D}")) == f"docker://h:1/a@{D}"
    assert ImageReference.parse("docker://h:1/a:v").name == "h:1/a"


OCI_CASES = [
    ("oci:/tmp/layout", ("/tmp/layout", None)),
    ("oci:/tmp/layout:features", ("/tmp/layout", "features")),
    ("oci:relative/dir:v1.0", ("relative/dir", "v1.0")),
    # containers/image on Linux: the path ends at the FIRST colon; the image name may contain ':' and '/'
    ("oci:/tmp/layout:example.com/app:v1", ("/tmp/layout", "example.com/app:v1")),
    ("oci:/tmp/layout:@1", ("/tmp/layout", "@1")),
]


@pytest.mark.parametrize(("text", "expected"), OCI_CASES, ids=[c[0] for c in OCI_CASES])
def test_parse_oci(text: str, expected: tuple) -> None:
    ref = ImageReference.parse(text)
    assert ref.transport == "oci"
    assert (ref.path, ref.tag) == (Path(expected[0]), expected[1])
    assert ref.reference == expected[1]
    assert ref.registry == "" and ref.digest is None
    assert str(ref) == text
    assert ImageReference.parse(str(ref)) == ref


BAD = [
    "docker://",
    "docker://127.0.0.1:5000/Demo/app",  # upper-case repository
    "docker://127.0.0.1:5000/demo/app:bad tag",
    "docker://127.0.0.1:5000/demo/app@sha256:1234",
    "docker://127.0.0.1:5000/demo//app",
    "docker://127.0.0.1:5000/demo/app:-leading",
    "oci:",
    "oci:/tmp/x:bad name",
    "dir:/tmp/x",
    "docker-archive:/tmp/x.tar",
]


@pytest.mark.parametrize("text", BAD)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        ImageReference.parse(text)
    assert isinstance(info.value, FormatError) and isinstance(info.value, ValueError)


def test_builders() -> None:
    ref = ImageReference.docker("127.0.0.1:5000", "demo/app", tag="v1")
    assert ref == ImageReference.parse("docker://127.0.0.1:5000/demo/app:v1")
    pinned = ref.with_digest(D)
    assert pinned.reference == D and pinned.tag == "v1"
    assert pinned.with_tag("v2").reference == "v2"
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:nope")
