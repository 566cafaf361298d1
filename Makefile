# The two front doors: `make demo` (setup + the built-in demo) and `make test` (setup + the suite).
.PHONY: setup demo test lint

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m snapshotter.demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -p no:cacheprovider -q

lint: setup
	.venv/bin/ruff check .
