# storecast: `make demo` runs the local stack on synthetic data; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STORES ?= 50
DEMO_DIR ?= build/demo
export DEMO_STORES DEMO_DIR

.PHONY: install system-deps test lint demo bench loadtest clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

system-deps:
	bash scripts/system_deps.sh

lint: install
	$(BIN)/ruff check .

test: install system-deps lint
	$(BIN)/python -m pytest -q

demo: install
	BIN=$(BIN) bash scripts/demo.sh

bench: install
	$(BIN)/storecast bench

loadtest: install
	mkdir -p build/loadtest
	$(BIN)/storecast data synth --stores 200 --seed 7 --out build/loadtest/sales.csv.gz
	$(BIN)/storecast train --data build/loadtest/sales.csv.gz --tracking-uri sqlite:///$(CURDIR)/build/loadtest/mlflow.db \
	  --alias champion --no-progress
	$(BIN)/storecast loadtest --tracking-uri sqlite:///$(CURDIR)/build/loadtest/mlflow.db --stores 1-200 \
	  --users $(or $(USERS),40) --duration $(or $(DURATION),60s) $(if $(SHAPE),--shape $(SHAPE),)

clean:
	rm -rf $(VENV) build mlruns mlflow.db .pytest_cache .ruff_cache

include mk/image.mk
