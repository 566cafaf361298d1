"""What an image may not do to the host through ``zsnap mount`` (DESIGN.md decision 11), on real mounts.

* setuid-root binaries and device nodes have no effect at MOUNTPOINT unless ``--allow-suid-dev``
  (checked by running the binary as an unprivileged user);
* nobody but root can walk into the FUSE session's layer directories (where setuid is kept, for
  containerd's bind mounts);
* ``trusted.*`` xattrs from an image never reach overlayfs;
* mountpoints inside or above the root are refused before anything is mounted.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fuse import start_mount, zsnap_command
from tests.fixtures.images import Entry, ImageSpec, LayerSpec, LayoutWriter, build_image, d, f

pytestmark = pytest.mark.needs_root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp dirs are 0700), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="zsnap-sec-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _layout(dest: Path, layers: list[LayerSpec], tag: str = "v1") -> str:
    writer = LayoutWriter(dest)
    try:
        build_image(writer, ImageSpec("sec", tuple(layers), ("bin",)), tag, compression="gzip")
    finally:
        writer.close()
    return f"oci:{dest}:{tag}"


def _suid_image(dest: Path, nlayers: int) -> str:
    id_binary = Path(shutil.which("id") or "/usr/bin/id").read_bytes()
    top = LayerSpec(
        (
            d("bin"),
            f("bin/id", id_binary, mode=0o4755),  # setuid root
            d("dev"),
            Entry("dev/null", "char", mode=0o666, dev=(1, 3)),
        )
    )
    layers = [LayerSpec((d("etc"), f("etc/hostname", b"sec\n")))] * (nlayers - 1) + [top]
    return _layout(dest, layers)


@pytest.mark.parametrize("nlayers", [1, 2], ids=["bind", "overlay"])
@pytest.mark.parametrize("allow", [False, True], ids=["default", "allow-suid-dev"])
def test_setuid_and_devices_only_with_allow_suid_dev(nlayers: int, allow: bool, world: Path) -> None:
    ref = _suid_image(world / "layout", nlayers)
    root, mp = world / "root", world / "mp"
    m = start_mount(root, ref, mp, *(["--allow-suid-dev"] if allow else []))
    try:
        assert (mp / "bin/id").stat().st_mode & 0o4000  # the bit is shown either way
        done = subprocess.run([*NOBODY, str(mp / "bin/id"), "-u"], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ("0" if allow else "65534")
        if allow:
            with open(mp / "dev/null", "rb") as dev:
                assert dev.read(10) == b""  # the host's /dev/null
        else:
            with pytest.raises(PermissionError):
                open(mp / "dev/null", "rb")  # noqa: SIM115
        # the FUSE session keeps setuid for containerd's bind mounts, so only root may walk into it
        (fuse_dir,) = (p for p in (root / "mnt").iterdir() if p.is_mount())
        layer = next(iter(os.listdir(fuse_dir)))
        peek = subprocess.run([*NOBODY, "ls", str(fuse_dir / layer)], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert peek.returncode != 0 and "Permission denied" in peek.stderr
        mounts = Path("/proc/self/mountinfo").read_text()
        line = next(ln for ln in mounts.splitlines() if ln.split()[4] == str(mp))
        assert ("nosuid" in line.split()[5]) is not allow
    finally:
        assert m.unmount() == 0, m.log_tail()


def test_trusted_xattrs_from_the_image_never_reach_overlayfs(world: Path) -> None:
    lower = LayerSpec((d("bin"), d("d"), f("d/lower", b"lower\n"), d("r"), f("r/file", b"r\n")))
    upper = LayerSpec(
        (
            d("d", xattrs={"trusted.overlay.opaque": "y"}),  # would hide d/lower
            f("d/upper", b"upper\n", xattrs={"user.keep": "yes", "trusted.overlay.metacopy": ""}),
            d("x", xattrs={"trusted.overlay.redirect": "/r"}),  # would show r/ as x/
        )
    )
    ref = _layout(world / "layout", [lower, upper])
    m = start_mount(world / "root", ref, world / "mp")
    try:
        mp = m.mountpoint
        assert sorted(os.listdir(mp / "d")) == ["lower", "upper"]
        assert os.listdir(mp / "x") == []
        assert os.getxattr(mp / "d/upper", "user.keep") == b"yes"
        assert (mp / "d/upper").read_bytes() == b"upper\n"
        for path in (mp / "d", mp / "d/upper", mp / "x"):
            assert not [x for x in os.listxattr(path) if x.startswith("trusted.")]
        (fuse_dir,) = (p for p in (world / "root/mnt").iterdir() if p.is_mount())
        for layer in os.listdir(fuse_dir):  # not even in the layer directories
            for sub in ("d", "x"):
                if (fuse_dir / layer / sub).exists():
                    with pytest.raises(OSError) as info:
                        os.getxattr(fuse_dir / layer / sub, "trusted.overlay.opaque")
                    assert info.value.errno == errno.ENODATA
    finally:
        assert m.unmount() == 0, m.log_tail()


@pytest.mark.parametrize("where", ["root/mnt", "root", "."], ids=["inside", "the-root", "above"])
def test_mountpoints_inside_or_above_the_root_are_refused(where: str, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    mp = tmp_path / where
    cmd = zsnap_command(root, "mount", "--daemon", "oci:/nonexistent:x", str(mp))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "zsnap root" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not os.path.ismount(mp)
