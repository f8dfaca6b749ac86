# Two commands do everything on a fresh machine (see README):
#   make demo   install, fetch the starter weights, run the main job on the embedded default
#   make test   install, fetch the starter weights, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install fetch demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# pip byte-compiles what it installs; keep it: these machines set PYTHONDONTWRITEBYTECODE=1, so a
	# module left uncompiled is recompiled by every process (tried with --no-compile: a clean-clone
	# `make test` was 85% through after 20 min, against 12-16 min for all of it).
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

fetch: install
	$(BIN)/hfld zoo fetch starter

demo: fetch
	$(BIN)/hfld run --preset starter --profile demo

test: fetch
	$(BIN)/python -m pytest -q --durations=30

clean:
	rm -rf $(VENV) .pytest_cache
