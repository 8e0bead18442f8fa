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

# A Flight SQL client beyond Python's, for the tests: arrow-rs's npm client, run with Node
# (Debian's nodejs and npm), installed under build/ (ignored by git).
CLIENTS := build/clients
NODE_CLIENT := $(CLIENTS)/node_modules/@lakehouse-rs/flight-sql-client
$(NODE_CLIENT):
	mkdir -p $(CLIENTS)
	npm install --silent --no-audit --no-fund --prefix $(CLIENTS) @lakehouse-rs/flight-sql-client@0.0.10

demo: venv
	$(BIN)/python examples/demo.py --workdir demo-out

test: venv $(NODE_CLIENT)
	$(BIN)/python -m pytest -q

.PHONY: venv demo test

bench: venv
	$(BIN)/python bench/run.py --out bench/results
.PHONY: bench

# The contention row alone: the same enrichment idle and beside a process holding one core.
bench-contention: venv
	$(BIN)/python bench/contention.py
.PHONY: bench-contention

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

# The shipped anomaly detector (anomaly-lstm), trained on ../shared/data in one run (its card
# records the time), then its report split beside the baselines in one table.
train-anomaly: venv
	OMP_NUM_THREADS=1 $(BIN)/flight-lstm train anomaly --data $(DATA) --out flight_lstm/models/weights

evaluate-anomaly: venv
	$(BIN)/flight-lstm evaluate anomaly --data $(DATA)
.PHONY: train-anomaly evaluate-anomaly

# The shipped sentiment model (sentiment-bilstm), in four steps: the MiniLM teacher (an offline
# training aid, kept in ~/.cache/flight-lstm), its soft labels, the review teachers (it, taken
# further on all reviews and on each fold's complement), then the BiLSTM distilled from them with
# its 5-fold customer-review cross-validation; then every sentiment set in one table.
train-sentiment: venv
	$(BIN)/pip install --quiet -e '.[teacher]'
	HF_HUB_OFFLINE=1 $(BIN)/python -c "from flight_lstm.models import teacher as t; \
		t.train_teacher('$(DATA)'); t.soft_labels(t.TEACHER_DIR, '$(DATA)'); \
		[t.review_teacher(leave_out=k) for k in (None, *range(t.REVIEW_FOLDS))]"
	HF_HUB_OFFLINE=1 $(BIN)/flight-lstm train sentiment --data $(DATA) --out flight_lstm/models/weights

evaluate-sentiment: venv
	$(BIN)/flight-lstm evaluate sentiment --data $(DATA)
.PHONY: train-sentiment evaluate-sentiment


# Apache Superset pointed at flight-lstm (integration/test_superset.py), opt-in and never in `make test`:
# Superset in its own venv with this project installed without dependencies (only its `flight_lstm://`
# SQLAlchemy dialect runs there), Debian's chromium and chromium-driver for the chart's screenshot
# (integration/out/chart.png). The flight-lstm server itself runs from .venv. Superset 6.1.0 imports
# `rich` and `cachetools` without declaring them, and breaks on the newest flask-caching/cachelib: hence those pins, as
# in Superset's own requirements.
SUPERSET_VENV := .venv-superset
SUPERSET_VERSION ?= 6.1.0
$(SUPERSET_VENV)/bin/superset: pyproject.toml
	$(PYTHON) -m venv $(SUPERSET_VENV)
	$(SUPERSET_VENV)/bin/pip install --quiet --upgrade pip
	$(SUPERSET_VENV)/bin/pip install --quiet apache-superset==$(SUPERSET_VERSION) rich cachetools flask-caching==2.3.1 cachelib==0.13.0 adbc-driver-flightsql pytest pytest-timeout
	$(SUPERSET_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

integration: venv $(SUPERSET_VENV)/bin/superset
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	FLIGHT_LSTM_PYTHON=$(CURDIR)/$(BIN)/python $(SUPERSET_VENV)/bin/python -m pytest -q --tb=short -p no:cacheprovider integration
.PHONY: integration
