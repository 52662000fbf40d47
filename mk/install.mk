# The venv, in two sizes; the Makefile includes this file (`include mk/install.mk`, after its own variables).
#   make install       what `make demo` runs: storecast and its base dependencies (about 1 min, under 500 MB)
#   make install-test  every extra too (.[test]: server, parquet, loadtest, ray and the test tools): `make test`
#   make install-X     the base set and the extra X (e.g. install-loadtest for `make loadtest`)
# pip's own output is long; each install prints a counter of the packages it resolved, then the install step
# and its duration (everything pip said is kept in $(VENV)/install.log). --no-compile: Python compiles only
# what runs (pip would compile every module of every package: a third of the venv's size, and time).
PIP_INSTALL = $(BIN)/python -m pip install --disable-pip-version-check --no-compile
# the counter: "resolved N packages: NAME", one line rewritten, then pip's last lines
PIP_STEPS = awk '/^Collecting /{n++; printf "\r  resolved %3d packages: %-50s", n, $$2; fflush()} \
  /^Installing collected packages/{printf "\n  installing %d packages (unpacking: the longest step) ...\n", n; \
  fflush()} /^(ERROR|error)/{print}'

# the installs' recipes run in bash with pipefail: a failing pip fails the step although its output is filtered
$(VENV)/.installed $(VENV)/.installed-% $(VENV)/.compiled-test: SHELL := bash
$(VENV)/.installed $(VENV)/.installed-%: .SHELLFLAGS := -o pipefail -c

$(VENV)/bin/python:
	@echo "== creating the venv $(VENV) ($(PYTHON) -m venv)"
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@echo "== installing storecast and what the demo runs into $(VENV) (about a minute; log: $(VENV)/install.log)"
	@SECONDS=0; $(PIP_INSTALL) -e . 2>&1 | tee $(VENV)/install.log | $(PIP_STEPS) \
	  && echo "  installed in $${SECONDS} s: $$(du -sh $(VENV) | cut -f1) in $(VENV)"
	@touch $@

$(VENV)/.installed-%: $(VENV)/.installed pyproject.toml
	@echo "== installing the extra '$*' (pip install -e '.[$*]'; log: $(VENV)/install-$*.log)"
	@SECONDS=0; $(PIP_INSTALL) -e ".[$*]" 2>&1 | tee $(VENV)/install-$*.log | $(PIP_STEPS) \
	  && echo "  installed in $${SECONDS} s: $$(du -sh $(VENV) | cut -f1) in $(VENV)"
	@touch $@

# The tests start hundreds of processes: compile every module once, so none of them compiles its imports again
# (where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile them in every process). The demo's venv
# stays uncompiled: there Python caches what runs.
$(VENV)/.compiled-test: $(VENV)/.installed-test
	@echo "== byte-compiling the test venv (once)"
	@SECONDS=0; $(BIN)/python -m compileall -q -j 0 $(VENV)/lib > $(VENV)/compile.log 2>&1 || true; \
	  echo "  compiled in $${SECONDS} s: $$(du -sh $(VENV) | cut -f1) in $(VENV)"
	@touch $@

install-%: $(VENV)/.installed-%
	@:
