# storecast: `make demo` runs the local stack on synthetic data; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STORES ?= 50
DEMO_DIR ?= build/demo
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/$(DEMO_DIR)/mlflow.db

.PHONY: install test lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q

demo: install
	mkdir -p $(DEMO_DIR)
	$(BIN)/storecast data synth --stores $(DEMO_STORES) --seed 7 --out $(DEMO_DIR)/sales.csv.gz
	$(BIN)/storecast train --data $(DEMO_DIR)/sales.csv.gz --alias champion

bench: install
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) build mlruns mlflow.db .pytest_cache .ruff_cache
