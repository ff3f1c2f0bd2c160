# soscope developer commands. Everything runs in .venv (made with python3.11 when missing).
#
#   make install     .venv + torch (CPU build, pinned) + soscope with its test extras
#   make test        install, then the test suite
#   make lint        install, then ruff check and ruff format --check (CI runs it before the tests)
#   make demo        install, then `soscope demo --out out/` (real example shipped in the package)
#   make benchmarks  install, then every benchmarks/*.py script
#   make docs        install the docs extras, then build docs/_build/html (warnings are errors)
#   make tutorials   install, then re-execute tutorials/*.py into the docs' notebooks (docs/tutorials/*.ipynb)
#   make test-latest the test suite in .venv-latest: the newest Python found (3.13, else 3.12) with the
#                    newest torch, spatialdata, anndata, zarr, dask and pandas, nothing pinned

PYTHON ?= python3.11
# pytest-xdist workers of `make test` (files stay whole on one worker: module fixtures are built once)
TEST_WORKERS ?= 2
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch resolves to the multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=
DEMO_OUT ?= out/
DEMO_ARGS ?=

.PHONY: install test lint demo benchmarks docs tutorials clean install-latest test-latest

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamp files: a second `make test` does not reinstall unless pyproject.toml changed.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test]"
	@touch $@

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[test,docs]"
	@touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks tutorials docs
	$(BIN)/ruff format --check src tests benchmarks tutorials docs

demo: install
	$(BIN)/soscope demo --out $(DEMO_OUT) $(DEMO_ARGS)

benchmarks: install
	@set -e; found=0; \
	for script in benchmarks/*.py; do \
		[ -e "$$script" ] || continue; found=1; \
		echo "== $$script"; $(BIN)/python "$$script"; \
	done; \
	if [ $$found = 0 ]; then echo "no benchmark scripts in benchmarks/"; fi

docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

tutorials: $(VENV)/.installed-docs
	$(BIN)/python docs/render_tutorials.py

# ---- newest stack (spatialdata >= 0.8 needs Python >= 3.12) ------------------------------------------
LATEST_VENV ?= .venv-latest
LATEST_BIN := $(LATEST_VENV)/bin
# The newest CPython that actually runs: on PATH first, then pyenv's installs (a pyenv shim for a
# version that is installed but not selected exits non-zero, hence the `-c pass` probe).
LATEST_PYTHON ?= $(shell for v in 3.13 3.12; do \
	for p in python$$v $${PYENV_ROOT:-$$HOME/.pyenv}/versions/$$v*/bin/python$$v; do \
		"$$p" -c pass >/dev/null 2>&1 && { echo "$$p"; exit 0; }; \
	done; done)

$(LATEST_BIN)/python:
	@test -n "$(LATEST_PYTHON)" || { echo "no python3.13 or python3.12 found: pass LATEST_PYTHON=/path/to/python3.12"; exit 1; }
	$(LATEST_PYTHON) -m venv $(LATEST_VENV)

# No pins: eager upgrades so a reinstall (pyproject.toml changed) also moves to the newest releases.
# From PyPI torch is the CUDA build on Linux (no CPU wheel there): large, but it runs on CPU.
$(LATEST_VENV)/.installed: pyproject.toml | $(LATEST_BIN)/python
	$(LATEST_BIN)/python -m pip install --upgrade --upgrade-strategy eager torch -e ".[test]"
	@touch $@

install-latest: $(LATEST_VENV)/.installed

test-latest: install-latest
	@$(LATEST_BIN)/python -c "import sys, importlib.metadata as m; print('python', sys.version.split()[0]); \
		[print(p, m.version(p)) for p in ('torch', 'spatialdata', 'anndata', 'zarr', 'dask', 'pandas', 'numpy')]"
	$(LATEST_BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf docs/_build .pytest_cache
