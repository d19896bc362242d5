"""Shared fixtures. Powertools is told it runs outside Lambda: no metrics flush, no X-Ray, quiet logs."""

from __future__ import annotations

import os

os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_event(name: str) -> dict[str, Any]:
    """A canonical event from events/ (the same files `sam local invoke -e` uses)."""
    return json.loads((REPO_ROOT / "events" / name).read_text())


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(autouse=True)
def _no_installed_services() -> Iterator[None]:
    """Each test starts with no services installed and leaves none behind."""
    from forwarder import runtime

    runtime.install(None)
    yield
    runtime.install(None)
    # The forwarder's logger keeps a thread's keys (Lambda context, correlation id) per thread; pytest runs
    # every test in one thread, so a test's handler invocations must not leave keys on the next test's lines.
    from aws_lambda_powertools.logging.formatter import clear_context_keys

    clear_context_keys()


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every line the forwarder logs during the test (at the configured level), as the JSON Powertools writes."""
    from forwarder.observability import logger

    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.setFormatter(logger.registered_formatter)
    stdlib_logger = logging.getLogger(logger.name)
    stdlib_logger.addHandler(handler)
    yield lines
    stdlib_logger.removeHandler(handler)
