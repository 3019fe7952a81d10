# CIAMS — the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
APT_RUN := dcmtk
APT_TEST := dcmtk postgresql redis-server tesseract-ocr dicom3tools
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-sqlite test-postgresql lint bench venv deps-test apt-run apt-test clean

# Install Debian packages that are missing (apt-get update only when something is).
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-dev >/dev/null && \
	  $(PYTHON) -m venv $(VENV); }
	@$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	@$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	@$(BIN)/pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

apt-run:
	$(call apt_install,$(APT_RUN))

apt-test:
	$(call apt_install,$(APT_TEST))

## make run: set up and run the archive on SQLite + local files under ./data
run: $(VENV)/.installed apt-run
	@$(BIN)/ciams serve --data-dir $(DATA)

## make test: set up and run the whole suite on SQLite, then on PostgreSQL
test: lint apt-test
	@echo "== test suite on SQLite =="
	@CIAMS_TEST_DB=sqlite $(BIN)/python -m pytest -q -p no:cacheprovider
	@echo "== test suite on PostgreSQL =="
	@CIAMS_TEST_DB=postgresql $(BIN)/python -m pytest -q -p no:cacheprovider

## make lint: ruff (rules and formatting) and mypy --strict on the code and the tests
lint: $(VENV)/.installed-test
	@$(BIN)/ruff check src tests bench
	@$(BIN)/ruff format --check src tests bench
	@$(BIN)/mypy src tests

bench: $(VENV)/.installed-test
	$(call apt_install,dcmtk orthanc orthanc-dicomweb)
	$(BIN)/python bench/bench_archive.py

clean:
	rm -rf $(VENV) build *.egg-info
