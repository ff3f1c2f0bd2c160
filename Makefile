# soscope developer commands. Everything runs in .venv (made with python3.11 when missing).
#
#   make install     .venv + torch (CPU build, pinned) + soscope with its test extras
#   make test        install, then the test suite
#   make demo        install, then `soscope demo --out out/` (real example shipped in the package)
#   make benchmarks  install, then every benchmarks/*.py script
#   make docs        install the docs extras, then build docs/_build/html (warnings are errors)
#   make tutorials   install, then re-execute tutorials/*.py into the docs' notebooks (docs/tutorials/*.ipynb)

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: an unpinned torch resolves to the multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=
DEMO_OUT ?= out/
DEMO_ARGS ?=

.PHONY: install test demo benchmarks docs tutorials clean

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
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

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

clean:
	rm -rf docs/_build .pytest_cache
