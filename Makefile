# One command each: `make demo` (set up, then generate demo data, train, evaluate, predict) and
# `make test` (set up, then lint and run the test suite). Setup is a local virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every package the two commands install, at the version tested (a pip constraints file).
LOCK := requirements/lock.txt

.PHONY: setup demo test lock clean

# A new environment whenever pyproject.toml or the lock changes, so it holds exactly the locked
# versions and nothing left over. pip and setuptools come from the lock first; genrenet is then
# built with them (no build isolation, which would fetch an unlocked setuptools). The last step
# imports the whole stack and names a broken pair in one line.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; sys.exit("genrenet needs Python 3.10 or newer") if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) pip setuptools
	$(BIN)/python -m pip install --quiet --constraint $(LOCK) --no-build-isolation -e '.[dev]'
	$(BIN)/genrenet check
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

# Re-resolve every dependency (after changing pyproject.toml's dependencies, or to take newer
# releases on purpose), for Python 3.10 and newer on every platform at once. Then run `make test`
# and `make demo` (the environment is rebuilt from the new lock) and commit the lock with the change.
lock:
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet uv==0.13.9
	$(VENV)-lock/bin/uv pip compile pyproject.toml requirements/installer.in --all-extras --universal \
		--python-version 3.10 --custom-compile-command 'make lock' --quiet -o $(LOCK)

clean:
	rm -rf runs/demo data/demo data/demo-unseen cache
