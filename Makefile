# One command per habit: make run | make test | make lint | make bench | make chaos | make check-config
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell (pyenv which python3.13 2>/dev/null) || command -v python3.13 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench chaos check-config clean install browser

$(STAMP): pyproject.toml layers/forwarder/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

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

test: $(STAMP) browser  ## lint, type-check, config check, then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/forwarder config check config/forwarder.yaml
	$(VENV)/bin/forwarder config check config/examples/expertsender-only.yaml
	$(VENV)/bin/forwarder config check chaos/forwarder.yaml
	$(VENV)/bin/cfn-lint template.yaml
	$(VENV)/bin/pytest -n 2 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/cfn-lint template.yaml

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
