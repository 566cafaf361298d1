"""``zsnap mount`` and ``zsnap umount``.

``zsnap mount REF MOUNTPOINT`` serves the image's merged root file system read-only at MOUNTPOINT and stays
in the foreground until unmounted or sent SIGINT/SIGTERM; it prints ONE line on stdout when the tree is
ready. With ``--daemon`` it forks: the parent exits 0 only once the child's tree is ready (printing the
same line), or 1 with the child's error. The daemon logs to ``<root>/mounts/<mount-id>.log``.

``zsnap umount MOUNTPOINT`` finds the serving process through its record in ``<root>/mounts/``, sends it
SIGTERM and waits until it has cleaned up (or, when the process is gone, unmounts what it left behind).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fs.errors import ZsnapError, error_context
from snapshotter.cli import exception_leaves

if TYPE_CHECKING:
    from fs.lazy.mount import MountConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mount = subparsers.add_parser(
        "mount",
        help="mount an image lazily (read-only)",
        description="Mount the merged root file system of REF (docker://HOST/REPO:TAG|@DIGEST or "
        "oci:DIR[:TAG]) read-only at MOUNTPOINT; file contents are fetched on first read.",
    )
    mount.add_argument("reference", metavar="REF")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    mount.add_argument("--no-prefetch", action="store_true", help="do not prefetch the files marked first")
    mount.add_argument("--no-background-fetch", action="store_true", help="fetch only what is read")
    mount.add_argument("--stats-file", type=Path, metavar="FILE", help="write stats JSON here every second")
    mount.add_argument("--daemon", action="store_true", help="run in the background once ready")
    mount.add_argument("--plain-http", action="store_true", help="plain HTTP for non-loopback registries")
    mount.add_argument(
        "--allow-suid-dev", action="store_true",
        help="let the image's setuid/setgid bits, file capabilities and device nodes take effect at "
        "MOUNTPOINT (default: the mount is nosuid,nodev)",
    )  # fmt: skip
    mount.add_argument(
        "--fetch-timeout", type=float, default=30.0, metavar="SECONDS",
        help="a read of uncached data fails with EIO after this long (default %(default)s)",
    )  # fmt: skip
    mount.set_defaults(func=_mount)

    umount = subparsers.add_parser("umount", help="unmount what `zsnap mount` mounted")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    umount.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default %(default)s)")
    umount.set_defaults(func=_umount)


def _config(args: argparse.Namespace, mount_id: str) -> MountConfig:
    from fs.lazy.mount import MountConfig
    from fs.lazy.system import check_mountpoint

    if args.fetch_timeout <= 0:
        raise ZsnapError("--fetch-timeout must be positive")
    check_mountpoint(args.mountpoint, args.root)
    return MountConfig(
        root=args.root.resolve(),
        image=args.reference,
        mountpoint=args.mountpoint,
        prefetch=not args.no_prefetch,
        background_fetch=not args.no_background_fetch,
        stats_file=args.stats_file.resolve() if args.stats_file else None,
        plain_http=True if args.plain_http else None,
        fetch_timeout=args.fetch_timeout,
        mount_id=mount_id,
        allow_suid_dev=args.allow_suid_dev,
    )


def _mount(args: argparse.Namespace) -> int:
    from fs.lazy.system import new_mount_id

    mount_id = new_mount_id()
    cfg = _config(args, mount_id)
    if not args.daemon:
        from fs.lazy.mount import run_mount

        def ready(line: str) -> None:
            print(line, flush=True)

        with error_context(image=cfg.image):  # every error names the image (layer and entry inside)
            run_mount(cfg, ready)
        return 0
    return _daemonize(cfg)


def _daemonize(cfg) -> int:  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:  # parent: wait for "ready" or an error from the child
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        kind, _, text = message.partition(" ")
        if kind == "ready":
            print(text.rstrip("\n"), flush=True)
            return 0
        print(
            f"zsnap: error: {text.strip() or 'the mount process exited before it was ready'}", file=sys.stderr
        )
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return 1
    # child
    os.close(read_fd)
    code = 1
    try:
        os.setsid()
        log_path = cfg.root / "mounts" / f"{cfg.mount_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(sys.stderr)
        from fs.lazy.mount import run_mount

        parent_pipe = [write_fd]  # emptied once closed: the number may be reused by another file after

        def ready(line: str) -> None:
            os.write(write_fd, f"ready {line}\n".encode())
            os.close(parent_pipe.pop())

        try:
            with error_context(image=cfg.image):
                run_mount(cfg, ready)
            code = 0
        except BaseException as exc:  # the daemon must report, never hang its parent
            leaves = list(exception_leaves(exc))
            if all(isinstance(leaf, ZsnapError) for leaf in leaves):
                message = "; ".join(dict.fromkeys(str(leaf) for leaf in leaves))
            else:
                message = repr(exc)
                logging.getLogger(__name__).error("mount daemon failed", exc_info=exc)
            if parent_pipe:
                with contextlib.suppress(OSError):
                    os.write(parent_pipe[0], f"error {message}\n".encode())
            print(f"zsnap: error: {message}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _umount(args: argparse.Namespace) -> int:
    from fs.lazy import system

    root = args.root.resolve()
    record = system.find_record(root, args.mountpoint)
    if record is None:
        raise ZsnapError(f"no zsnap mount is recorded for {args.mountpoint} under {root / 'mounts'}")
    if record.alive:
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while record.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if record.alive:
            raise ZsnapError(f"mount process {record.pid} did not exit within {args.timeout:g}s")
    # normally the server cleaned up; if it died (kill -9, crash), clean up what it left behind
    for path in (record.mountpoint, record.fuse_dir):
        if system.is_mounted(path):
            rc, _ = system.run_quiet(system.unmount_command(path))
            if rc != 0:
                system.run_quiet(system.unmount_command(path, lazy=True))
    with contextlib.suppress(OSError):
        os.rmdir(record.fuse_dir)
    record.remove(root)
    return 0
