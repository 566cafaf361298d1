#!/usr/bin/env bash
# Set up this machine (idempotent) and run zsnap's built-in demo: build an image, push it to a private
# registry, convert it to zstd:chunked, verify it, then start it through containerd + zsnap serve (lazy)
# and with containerd's full pull, on a shaped network, and compare. Leaves no process or mount behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m snapshotter.demo "$@"
