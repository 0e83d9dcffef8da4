# fedinspect developer commands. Each target sets up what it needs: `make test` on a fresh clone just works.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedinspect-installed
# Extras the test suite needs. Never put `gpu` next to `cpu`: both install the same onnxruntime module.
EXTRAS ?= cpu,dev,train,tensorflow,postgresql
PYTEST_ARGS ?=
# pytest's own exit status, for .ci/run (make itself exits 2 on any failure).
PYTEST_STATUS_FILE ?= .pytest-status

.PHONY: help venv test lint format clean

help:
	@echo "make test    create/update $(VENV) from pyproject.toml and run the test suite"
	@echo "make lint    ruff (lint + format check) and mypy (strict)"
	@echo "make format  apply ruff's formatting and safe fixes"
	@echo "make clean   remove $(VENV) and caches"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedinspect needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	@rm -f $(PYTEST_STATUS_FILE)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; echo $$status > $(PYTEST_STATUS_FILE); exit $$status

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(PYTEST_STATUS_FILE) *.egg-info
