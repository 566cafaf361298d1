"""``zsnap bench startup``: container startup of large images, lazy vs full pull (see :mod:`.run`)."""

from snapshotter.bench.startup.run import add_arguments, run

__all__ = ["add_arguments", "run"]
