"""``zsnap convert`` and ``zsnap check``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from converter.convert import ConvertRequest

_FORMATS = {"zstd-chunked": "CSTORAGE", "stargz-zstd-chunked": "STARGZ_ZSTD"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    convert = subparsers.add_parser(
        "convert",
        help="convert images to zstd:chunked",
        description="Convert SRC to zstd:chunked and push it to DST (skopeo syntax: docker://HOST/REPO:TAG, "
        "oci:DIR[:TAG]). Layers shared between the images of one run are converted once.",
    )
    convert.add_argument("source", nargs="?", metavar="SRC")
    convert.add_argument("destination", nargs="?", metavar="DST")
    convert.add_argument(
        "--from-file", type=Path, metavar="LIST", help="batch: a file of 'SRC DST' lines (# comments allowed)"
    )
    convert.add_argument(
        "--jobs", "-j", type=_positive, default=None, help="layers converted at once (default: cores)"
    )
    convert.add_argument(
        "--level",
        type=int,
        choices=range(1, 23),
        metavar="1-22",
        default=3,
        help="zstd level (default %(default)s)",
    )
    convert.add_argument(
        "--format",
        choices=sorted(_FORMATS),
        default="zstd-chunked",
        help="zstd-chunked: containers/storage format (default); stargz-zstd-chunked: "
        "what ctr-remote/nerdctl --zstdchunked write",
    )
    group = convert.add_mutually_exclusive_group()
    group.add_argument("--platform", help="os/arch[/variant] to convert from an index (default: this host)")
    group.add_argument("--all-platforms", action="store_true", help="convert every platform of an index")
    convert.add_argument(
        "--prefetch-list",
        type=Path,
        metavar="FILE",
        help="paths (one per line) a workload reads at start: fetched first by lazy mounts",
    )
    convert.add_argument(
        "--plain-http", action="store_true", help="use plain HTTP for non-loopback registries"
    )
    convert.add_argument("--json", action="store_true", help="print one JSON result line per image")
    convert.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    convert.set_defaults(func=_convert)

    check = subparsers.add_parser(
        "check",
        help="verify a zstd:chunked image",
        description="Verify TOC digests, every chunk digest, and with --full the diff_ids.",
    )
    check.add_argument("reference", metavar="REF")
    check.add_argument(
        "--full", action="store_true", help="also check that each blob decompresses to its diff_id"
    )
    check.add_argument("--plain-http", action="store_true")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _read_lines(path: Path) -> list[str]:
    """Non-empty lines of a list file, without comments; a clear exit if it cannot be read."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"zsnap: error: cannot read {path}: {exc.strerror or exc}") from None
    return [line.split("#", 1)[0].strip() for line in text.splitlines()]


def _requests(args: argparse.Namespace) -> list[ConvertRequest]:
    from converter.convert import ConvertRequest

    requests = []
    if args.from_file:
        for n, line in enumerate(_read_lines(args.from_file), 1):
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2:
                raise SystemExit(f"zsnap: {args.from_file}:{n}: expected 'SRC DST', got {line!r}")
            requests.append(ConvertRequest(*parts))
    if args.source or args.destination:
        if not (args.source and args.destination):
            raise SystemExit("zsnap: convert needs both SRC and DST")
        requests.append(ConvertRequest(args.source, args.destination))
    if not requests:
        raise SystemExit("zsnap: convert needs SRC DST or --from-file LIST")
    return requests


def _convert(args: argparse.Namespace) -> int:
    import trio

    from converter.convert import convert_images
    from converter.layers import ConvertOptions
    from converter.progress import Reporter
    from fs.format import Dialect
    from fs.store import Store

    requests = _requests(args)
    prefetch: tuple[str, ...] = ()
    if args.prefetch_list:
        prefetch = tuple(p for p in _read_lines(args.prefetch_list) if p)
    options = ConvertOptions(dialect=Dialect[_FORMATS[args.format]], level=args.level, prefetch=prefetch)
    reporter = Reporter(quiet=args.quiet)
    started = time.monotonic()
    try:
        with Store.open(args.root) as store:
            results = trio.run(
                lambda: convert_images(
                    requests,
                    store=store,
                    options=options,
                    jobs=args.jobs,
                    platform=args.platform,
                    all_platforms=args.all_platforms,
                    plain_http=True if args.plain_http else None,
                    reporter=reporter,
                )
            )
    finally:
        reporter.close()
    elapsed = time.monotonic() - started
    for result in results:
        line = {
            "source": result.request.source,
            "destination": result.request.destination,
            "digest": result.digest,
            "converted": result.layers_converted,
            "reused": result.layers_reused,
            "copied": result.layers_copied,
            "seconds": round(elapsed, 3),
        }
        if args.json:
            print(json.dumps(line))
        else:
            print(
                f"{result.request.destination}: {result.digest} "
                f"({result.layers_converted} converted, {result.layers_reused} reused, "
                f"{result.layers_copied} copied) in {elapsed:.1f}s"
            )
    return 0


def _check(args: argparse.Namespace) -> int:
    import trio

    from converter.check import check_image
    from converter.progress import Reporter
    from fs.store import Store

    reporter = Reporter(quiet=args.json)
    try:
        with Store.open(args.root) as store:
            layers = trio.run(
                lambda: check_image(
                    args.reference,
                    store=store,
                    full=args.full,
                    plain_http=True if args.plain_http else None,
                    reporter=reporter,
                )
            )
    finally:
        reporter.close()
    if args.json:
        print(json.dumps({"reference": args.reference, "ok": True, "layers": [vars(x) for x in layers]}))
    else:
        files = sum(x.files for x in layers)
        chunks = sum(x.chunks for x in layers)
        full = " and diff_ids" if args.full else ""
        print(
            f"{args.reference}: OK: {len(layers)} layers, {files} files, {chunks} chunks verified{full}",
            file=sys.stdout,
        )
    return 0
