# Tokenbunker: `make up` runs the main job, `make test` runs the tests. Both set everything up first.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.installed
# A Python >= 3.12 (mitmproxy 12 needs it): $PYTHON if given, else the first one found, pyenv's included.
PYTHON ?= $(shell for c in python3.14 python3.13 python3.12 python3 \
	"$$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do \
	  p=$$(command -v $$c 2>/dev/null) || continue; \
	  $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; \
	done)
PYTEST_ARGS ?=
TEST_DB ?= sqlite,postgresql

.PHONY: up test venv bench lint clean

$(STAMP): pyproject.toml rules/_ipanchors.c
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: Tokenbunker needs Python 3.12 or newer (mitmproxy 12 does); none was found." >&2; \
	  echo "       Install one (e.g. 'pyenv install 3.12') or run: make PYTHON=/path/to/python3.12 ..." >&2; \
	  exit 1; fi
	@echo "using $(PYTHON) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/tokenbunker up --config config.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest --db=$(TEST_DB) $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/python bench/vault_bench.py

lint: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet ruff mypy types-PyYAML
	$(VENV)/bin/python -m ruff check vault rules proxy_addons portal tests bench tokenbunker_cli.py
	$(VENV)/bin/python -m mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
