"""``zsnap store stats`` and ``zsnap store gc``: inspect and collect the store under ``--root``.

Human output is a rich table; ``--json`` prints exactly one JSON object on stdout for scripts. Both commands
open the store, which also runs crash recovery; what it reclaimed is reported (``reclaimed``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from fs.errors import StoreError

if TYPE_CHECKING:
    from rich.console import Console

    from fs.store import Store


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = subparsers.add_parser(
        "store",
        help="inspect or collect the local store",
        description="Inspect (stats) or garbage-collect (gc) the chunk cache and temp objects under --root.",
    )
    sub = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)

    stats = sub.add_parser("stats", help="objects, bytes, refs and temp objects with their holders")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_stats)

    gc = sub.add_parser(
        "gc",
        help="remove unreferenced objects (LRU first under --max-size)",
        description="Remove temp objects nobody alive holds, orphan files, and unreferenced blobs: all of "
        "them, or with --max-size only the least recently used until the blob bytes fit.",
    )
    gc.add_argument("--max-size", type=_size, metavar="SIZE", help="cap on blob bytes: 10G, 512M or bytes")
    gc.add_argument("--json", action="store_true", help="print one JSON object")
    gc.set_defaults(func=_gc)


def _size(text: str) -> int:
    from fs.store.space import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _unused(args: argparse.Namespace) -> bool:
    """True if nothing has opened a store under ``--root`` yet (there is no index)."""
    return not (args.root / "index").is_dir()


def _open(args: argparse.Namespace) -> Store:
    from fs.store import Store

    if _unused(args):
        raise StoreError("no store here (nothing has used it yet)", path=str(args.root))
    return Store.open(args.root)


def _stats(args: argparse.Namespace) -> int:
    from fs.store import StoreStats

    if _unused(args):  # report an empty store without creating one
        stats, reclaimed = StoreStats.empty(str(args.root)), []
    else:
        with _open(args) as store:
            stats = store.stats()
            reclaimed = list(store.reclaimed)
    if args.json:
        print(json.dumps({**stats.to_dict(), "reclaimed": reclaimed}, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    from fs.store.space import format_size

    console = Console()
    table = Table(title="zsnap store", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("root", stats.root)
    table.add_row("blobs", f"{stats.objects:,}")
    table.add_row("blob bytes", format_size(stats.bytes))
    table.add_row("referenced blobs", f"{stats.referenced_objects:,} ({format_size(stats.referenced_bytes)})")
    table.add_row("refs", f"{stats.refs:,}")
    table.add_row("size cap", format_size(stats.max_size) if stats.max_size is not None else "none")
    table.add_row("temp objects", f"{len(stats.temp_objects)} ({format_size(stats.temp_bytes)})")
    table.add_row("bound holders", ", ".join(stats.holders) or "-")
    console.print(table)
    if stats.temp_objects:
        temps = Table(title="temp objects", title_justify="left")
        temps.add_column("name", overflow="fold")
        temps.add_column("state")
        temps.add_column("size", justify="right")
        temps.add_column("holders")
        for t in stats.temp_objects:
            temps.add_row(t.name, t.state, format_size(t.size), ", ".join(t.holders) or "-")
        console.print(temps)
    _print_reclaimed(console, reclaimed)
    return 0


def _gc(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = store.gc(max_size=args.max_size)
        reclaimed = list(store.reclaimed)
    if args.json:
        print(json.dumps({**report.to_dict(), "reclaimed_at_open": reclaimed}, sort_keys=True))
        return 0
    from rich.console import Console

    from fs.store.space import format_size

    console = Console()
    cap = f" (cap {format_size(report.max_size)})" if report.max_size is not None else ""
    console.print(
        f"removed {report.removed_objects:,} blob(s), {format_size(report.removed_bytes)}; "
        f"blob bytes {format_size(report.bytes_before)} -> {format_size(report.bytes_after)}{cap} "
        f"in {report.seconds:.2f}s"
    )
    if report.removed_temps:
        console.print(f"temp objects reclaimed: {', '.join(report.removed_temps)}")
    if report.reclaimed:
        console.print(f"dead holders dropped: {', '.join(report.reclaimed)}")
    if report.orphans_removed:
        console.print(f"orphan files removed: {len(report.orphans_removed)}")
    if report.compacted_packs:
        console.print(f"pack files rewritten without their dead blobs: {report.compacted_packs}")
    if report.over_cap:
        console.print("[yellow]referenced blobs alone exceed the cap: nothing more may be evicted[/]")
    _print_reclaimed(console, reclaimed)
    return 0


def _print_reclaimed(console: Console, reclaimed: list[str]) -> None:
    if reclaimed:
        shown = ", ".join(reclaimed[:10]) + (" …" if len(reclaimed) > 10 else "")
        console.print(f"recovery at open reclaimed {len(reclaimed)} item(s): {shown}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run as: zsnap store …")
