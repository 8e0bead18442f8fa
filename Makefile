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

# The shipped forecasters, one per frequency group, trained in turn on ../shared/data (each card
# records its training time), then every validation set in one table beside the baselines.
DATA ?= ../shared/data
FREQS ?= hourly daily business_daily weekly monthly quarterly yearly
train-forecast: venv
	for f in $(FREQS); do $(BIN)/flight-lstm train forecast --freq $$f --data $(DATA) --out flight_lstm/models/weights || exit 1; done

evaluate-forecast: venv
	$(BIN)/pip install --quiet -e '.[baselines]'
	$(BIN)/flight-lstm evaluate forecast --data $(DATA)
.PHONY: train-forecast evaluate-forecast
