# The two commands for a fresh machine: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: install demo test lint typecheck layers unit sample clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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
