# The two set-up commands: `make serve` and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# onnxruntime and onnxruntime-gpu share one folder and break each other: pick exactly one.
ORT_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo onnx)
EXTRAS := torch,$(ORT_EXTRA),samples,features,aws,deploy,modal,traces,dev
STAMP := $(VENV)/.installed-$(ORT_EXTRA)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser serve build test test-workers test-fast lint typecheck check bench bench-peers soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	# torch==2.13.0 is pinned in the extras; on these machines pip takes the CPU wheel from disk.
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

build: install
	$(BIN)/slserve build

# The gateway on 127.0.0.1:8080 with every function at zero instances (HOST/PORT override).
HOST ?= 127.0.0.1
PORT ?= 8080
serve: build
	$(BIN)/slserve features load customers samples/features/customers.csv
	$(BIN)/slserve serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check src samples tests benchmarks
	$(BIN)/ruff format --check src samples tests benchmarks
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The dashboard's browser test drives Debian's chromium (never a downloaded browser). Installed where this user
# may install Debian packages; elsewhere the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && \
	    apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed (apt-get install chromium): the dashboard's browser test will be skipped"

test: install lint typecheck browser
	$(BIN)/python -m pytest -q

# The same suite against gateways of two front workers and a platform process (`slserve serve --workers 2`).
test-workers: install
	SLSERVE_TEST_WORKERS=2 $(BIN)/python -m pytest -q tests/reliability tests/integration

# The inner loop: unit and reliability tests, one server, no big builds (the full gate is `make test`).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/reliability

check: test

# Each prints a markdown table (copied into benchmarks/RESULTS.md); throughput needs wrk (apt-get install wrk).
bench: build
	cd benchmarks && ../$(BIN)/python snapshot_restore.py
	cd benchmarks && ../$(BIN)/python cold_start.py
	cd benchmarks && ../$(BIN)/python warm_overhead.py
	cd benchmarks && ../$(BIN)/python throughput.py
	cd benchmarks && ../$(BIN)/python burst.py
	cd benchmarks && ../$(BIN)/python transport.py
	cd benchmarks && ../$(BIN)/python router.py
	cd benchmarks && ../$(BIN)/python metering.py

# slserve beside FastAPI and LitServe (their own venvs, made once under benchmarks/out/venvs), on MiniLM and the
# 1 GB MLP: start, concurrency 1, 16 and 32 in flight, a burst after idle, memory; plots in benchmarks/results/.
bench-peers: build
	$(BIN)/python benchmarks/peers.py

# Bounded, loopback only: 60 s at 3x capacity with hostile inputs, then recovery (benchmarks/RESULTS.md, Reliability).
soak: build
	cd benchmarks && ../$(BIN)/python soak.py

clean:
	rm -rf .slserve
