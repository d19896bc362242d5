# One command per habit: make run | make test | make lint | make bench | make chaos | make check-config
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell (pyenv which python3.13 2>/dev/null) || command -v python3.13 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench chaos check-config clean install browser checkov

$(STAMP): pyproject.toml layers/forwarder/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# checkov pins dependencies below the ones the forwarder runs and is tested with (boto3, networkx, packaging), so
# it lives in a virtualenv of its own; its version is pyproject.toml's `scan` extra. Every check on template.yaml
# passes or is skipped in the resource's Metadata with its reason (README, "Security"). cfn-lint runs first: a
# template checkov cannot parse would otherwise pass unscanned.
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV := $(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --compact --quiet --skip-download

$(CHECKOV_STAMP): pyproject.toml
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet \
	  $$($(CHECKOV_VENV)/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["scan"])')
	touch $@

checkov: $(CHECKOV_STAMP)  ## the infrastructure scanner on template.yaml
	$(CHECKOV)

# The browser e2e test (a plain HTML form in headless Chromium) drives Debian's chromium through its driver.
# As root (CI, a fresh machine) they are installed when missing; elsewhere that test is skipped, saying why.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "chromium/chromedriver missing and not root: the browser e2e test will be skipped"; \
	  fi; \
	fi

run: $(STAMP)  ## start the embedded stack (gateway, queues, pollers, secrets, sandboxes); flags: make run ARGS="--port 9090"
	$(VENV)/bin/forwarder run $(ARGS)

test: $(STAMP) $(CHECKOV_STAMP) browser  ## lint, type-check, config check, checkov, then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/forwarder config check config/forwarder.yaml
	$(VENV)/bin/forwarder config check config/examples/expertsender-only.yaml
	$(VENV)/bin/forwarder config check chaos/forwarder.yaml
	$(VENV)/bin/cfn-lint template.yaml
	$(CHECKOV)
	$(VENV)/bin/pytest -n 2 tests

lint: $(STAMP) $(CHECKOV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml
	$(CHECKOV)

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check-config: $(STAMP)
	$(VENV)/bin/forwarder config check config/forwarder.yaml

bench: $(STAMP)  ## print throughput figures of the hot paths and of the embedded pipeline
	$(PY) bench/run.py

chaos: $(STAMP)  ## 10,000 records to every vendor through faults, an outage and kill -9; fails on lost/duplicate/out of order
	$(PY) chaos/run.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .forwarder .aws-sam .pytest_cache .mypy_cache .ruff_cache
