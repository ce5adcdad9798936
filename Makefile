# The two commands for a fresh machine: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
export OPENBLAS_NUM_THREADS ?= 1

LOCK := requirements.lock
SERVE_LOCK := requirements-serve.lock

.PHONY: install lock demo test lint typecheck layers unit sample clean

install: $(STAMP)

# The exact versions (and hashes) of requirements.lock, then the project itself without resolving
# again; `pip check` fails when pyproject.toml asks for something the lock lacks (run `make lock`).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# Regenerate requirements.lock from pyproject.toml (core + extras dev and postgres) for CPython
# 3.11 on Linux x86_64; versions already in the lock are kept when they still fit. The command:
#   uv pip compile pyproject.toml --extra dev --extra postgres --python-version 3.11 \
#     --python-platform x86_64-unknown-linux-gnu --generate-hashes --output-file requirements.lock
# `make lock UPGRADE=--upgrade` moves every package to the newest version the ranges allow.
# requirements-serve.lock, what a Bento installs (bentofile.yaml), is the same versions without
# the dev tools.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra postgres $(UV_TARGET) \
		--output-file $(LOCK) $(UPGRADE)
	$(BIN)/uv pip compile pyproject.toml --extra postgres --constraint $(LOCK) $(UV_TARGET) \
		--output-file $(SERVE_LOCK)

UV_TARGET := --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes \
	--custom-compile-command "make lock" --quiet

demo: install
	$(BIN)/omni validate --data data_samples/retail --out .omni/demo/quarantine
	$(BIN)/omni demo --port $(PORT)

test: install lint typecheck layers unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

layers: install
	$(BIN)/lint-imports

unit: install
	$(BIN)/pytest

# Regenerate the committed sample (deterministic: the same bytes for the same code and seed).
sample: install
	rm -rf data_samples/retail
	$(BIN)/omni generate --out data_samples/retail --customers 1000 --items 200 --stores 5 \
		--days 270 --seed 7 --format csv.gz

clean:
	rm -rf $(VENV) .omni .pytest_cache .mypy_cache .ruff_cache
