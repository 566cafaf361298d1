#!/usr/bin/env bash
# Set up this machine (idempotent) and run zsnap's whole test suite against the real components.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy fs converter snapshotter
exec .venv/bin/python -m pytest -p no:cacheprovider -q -ra "$@"
