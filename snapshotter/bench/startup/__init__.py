"""``zsnap bench startup``: startup latency of large images, lazy (``zsnap serve``) against containerd's
full pull, HelloBench-style (Slacker, FAST'16; stargz-snapshotter's benchmark).

For each image (``--sizes``, GB; a Debian root with a real workload plus bulk data it never reads) and each
mode (``--modes``: full, lazy, lazy-prefetch, stargz), ``--repeat`` cold samples time the CRI pull, the
container create and the run to first output separately, then the read-everything workload (``readall_s``)
and, with ``--cpu-hog``, read-everything on a fresh pull while a process keeps one core busy
(``readall_hog_s``); reading everything costs a whole download per mode, so it is measured in the first
``--readall-repeat`` repetitions only (default 1). Between samples containerd's content and snapshots,
zsnap's store and the page cache are dropped.

The registry (behind a delay proxy adding ``--rtt-ms``), containerd and ``zsnap serve`` run in a network
namespace of the benchmark's own whose loopback is shaped to ``--bandwidth-mbit``; ``--network loopback``
runs them on the host's loopback unshaped. Images, their conversions and the Debian base are cached in
``--cache-dir``. Prints a table, writes ``--json`` and ``--chart``, then one JSON line
``{"bench": "startup", …}`` with ratios against full from the same run.

Modules: :mod:`.netns`, :mod:`.delayproxy` and :mod:`.network` (the network), :mod:`.debian` and
:mod:`.images` (generation), :mod:`.prepare` (registry copies, prefetch list), :mod:`.modes` (one sample),
:mod:`.report`, :mod:`.chart`, :mod:`.run`.
"""

from snapshotter.bench.startup.run import add_arguments, run

__all__ = ["add_arguments", "run"]
