# One command each: `make demo` (set up, then generate demo data, train, evaluate, predict) and
# `make test` (set up, then run the test suite). Setup is a local virtual environment in .venv.
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

demo: setup
	$(BIN)/python -m genrenet.demo_data data/demo
	$(BIN)/python train.py --config configs/demo.yaml --overwrite
	$(BIN)/python evaluate.py --checkpoint runs/demo/best.pt
	$(BIN)/python -m genrenet.demo_data data/demo-unseen --tracks-per-genre 1 --seed 2026
	$(BIN)/python predict.py --checkpoint runs/demo/best.pt data/demo-unseen

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs/demo data/demo data/demo-unseen cache
