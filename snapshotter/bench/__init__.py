"""Benchmarks behind ``zsnap bench NAME`` (one module per benchmark; see ``snapshotter/cli/bench.py``)."""
