# One command per habit: make run | make test | make lint | make bench | make chaos | make check-config
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell (pyenv which python3.13 2>/dev/null) || command -v python3.13 || command -v python3)
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck bench chaos check-config clean install browser checkov lock layer bench-aws \
	build-ForwarderLayer build-ConfigLayer

# The repository root, wherever make runs from (sam build runs build-ForwarderLayer in a scratch directory).
ROOT := $(patsubst %/,%,$(dir $(abspath $(firstword $(MAKEFILE_LIST)))))
# The Lambda layer: one script builds it for `make layer`, for `sam build` and for the bench (arm64 ships).
LAYER_ARCH ?= arm64
LAYER_ZIP := build/layer/forwarder-layer-$(LAYER_ARCH).zip
LAYER_SOURCES := layers/forwarder/requirements.txt layers/forwarder/build_layer.py \
	$(shell find layers/forwarder/forwarder -name '*.py' 2>/dev/null)

# Tests run exactly the versions of requirements.lock (hash-checked); the package itself is installed editable.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
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

# One lock for tests and the layer: requirements.lock (everything, any platform, Python 3.11+) from pyproject.toml,
# then the layer's pins (Lambda's Python and architecture), held to the lock's versions. Pins stay as they are
# unless pyproject.toml needs otherwise; `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes \
	  --quiet $(LOCK_ARGS) -o requirements.lock
	$(VENV)/bin/uv pip compile layers/forwarder/requirements.in -c requirements.lock --python-version 3.13 \
	  --python-platform aarch64-manylinux2014 --generate-hashes --quiet -o layers/forwarder/requirements.txt

layer: $(LAYER_ZIP)  ## the Lambda layer zip that ships (build/layer/), bytecode compiled, byte-for-byte reproducible

$(LAYER_ZIP): $(STAMP) $(LAYER_SOURCES)
	$(PY) layers/forwarder/build_layer.py --arch $(LAYER_ARCH) --out build/layer/$(LAYER_ARCH) --zip $@

# sam build (ForwarderLayer's BuildMethod: makefile) runs this with ARTIFACTS_DIR set.
build-ForwarderLayer:
	$(MAKE) -C "$(ROOT)" install
	cd "$(ROOT)" && $(PY) layers/forwarder/build_layer.py --arch arm64 --out "$(ARTIFACTS_DIR)"

# ...and ConfigLayer (BuildMethod: makefile): config/forwarder.yaml, validated, as /opt/forwarder.json.
build-ConfigLayer:
	$(MAKE) -C "$(ROOT)" install
	cd "$(ROOT)" && $(PY) layers/forwarder/build_layer.py --config-layer config/forwarder.yaml --out "$(ARTIFACTS_DIR)"

bench-aws: $(STAMP)  ## the AWS-side figures alone: cold imports of the shipped layer, its size, AWS calls and cost per record
	$(PY) bench/aws_side.py

clean:
	rm -rf $(VENV) .forwarder .aws-sam build .pytest_cache .mypy_cache .ruff_cache
