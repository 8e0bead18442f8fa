# Two entry points: `make demo` (the main job) and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/flight-lstm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/flight-lstm

demo: venv
	$(BIN)/python examples/demo.py --workdir demo-out

test: venv
	$(BIN)/python -m pytest -q

.PHONY: venv demo test

bench: venv
	$(BIN)/python bench/run.py --out bench/results
.PHONY: bench
