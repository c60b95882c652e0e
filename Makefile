# One command each: `make demo` (set up, then generate demo data, train, evaluate, predict) and
# `make test` (set up, then lint and run the test suite). Setup is a local virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("genrenet needs Python 3.10 or newer") if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Generate data/demo, train the built-in demo config, evaluate, predict 7 unseen songs. The
# README's images (docs/demo) are copies of runs/demo's plots from one such run.
demo: setup
	$(BIN)/genrenet demo

# Lint and format check first (seconds), then the suite on two pytest-xdist workers, a file per
# worker at a time (module fixtures are built once), longest files first (see tests/conftest.py).
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

clean:
	rm -rf runs/demo data/demo data/demo-unseen cache
