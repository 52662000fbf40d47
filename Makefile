# storecast: `make demo` runs the local stack on synthetic data; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STORES ?= 50
DEMO_DIR ?= build/demo
export DEMO_STORES DEMO_DIR

.PHONY: install install-test system-deps test lint demo bench loadtest clean

install: $(VENV)/.installed  # the demo's runtime only; the test tools: install-test (mk/install.mk)

install-test: $(VENV)/.compiled-test

system-deps:
	bash scripts/system_deps.sh

lint: install-test
	$(BIN)/ruff check .

test: install-test system-deps lint
	$(BIN)/python -m pytest -q

demo: install
	BIN=$(BIN) bash scripts/demo.sh

bench: install-test
	$(BIN)/storecast bench

loadtest: install-loadtest
	mkdir -p build/loadtest
	$(BIN)/storecast data synth --stores 200 --seed 7 --out build/loadtest/sales.csv.gz
	@echo "== training 200 stores for the load test (a few minutes on 2 cores; the bar shows the stores done)"
	$(BIN)/storecast train --data build/loadtest/sales.csv.gz --tracking-uri sqlite:///$(CURDIR)/build/loadtest/mlflow.db \
	  --alias champion
	$(BIN)/storecast loadtest --tracking-uri sqlite:///$(CURDIR)/build/loadtest/mlflow.db --stores 1-200 \
	  --users $(or $(USERS),40) --duration $(or $(DURATION),60s) $(if $(SHAPE),--shape $(SHAPE),)

clean:
	rm -rf $(VENV) build mlruns mlflow.db .pytest_cache .ruff_cache

include mk/install.mk
include mk/image.mk
