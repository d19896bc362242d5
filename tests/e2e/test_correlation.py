"""One correlation id end to end: in the embedded stack, where many invocations run at once in one process,
every log line about a record carries that record's own request id (the one its client got in the 202),
at ingest, validate and deliver."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from forwarder.observability import logger as forwarder_logger
from forwarder_local.stack import EmbeddedStack, StackOptions

pytestmark = pytest.mark.e2e


class Lines(logging.Handler):
    """The forwarder's log lines as JSON objects, formatted as Powertools formats them (in the logging thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(forwarder_logger.registered_formatter)
        self.lines: list[dict[str, Any]] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self.format(record))
        with self._guard:
            self.lines.append(line)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state", port=0, sandbox_port=0, poll_window_seconds=0.05, retry_base_seconds=0.2
    )
    with EmbeddedStack(options) as running:
        yield running


def test_concurrent_requests_log_under_their_own_request_id(stack: EmbeddedStack) -> None:
    # given the forwarder logging at INFO, captured
    lines = Lines()
    underlying = logging.getLogger(forwarder_logger.name)
    underlying.addHandler(lines)
    level = underlying.level
    underlying.setLevel(logging.INFO)
    try:
        first = stack.first_client()
        assert first is not None and stack.gateway is not None
        _, group_key, access_key, secret_key = first
        auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
        url = stack.gateway.url + "/v1/contacts"

        def send(index: int) -> str:
            body = {"group_key": group_key, "data": {"email": f"c{index}@example.com", "first_name": "C"}}
            answer = requests.post(url, json=body, auth=auth, timeout=30)
            assert answer.status_code == 202, answer.text
            return str(answer.json()["request_id"])

        # when 100 requests arrive at once and are delivered
        with ThreadPoolExecutor(max_workers=25) as pool:
            accepted = set(pool.map(send, range(100)))
        assert len(accepted) == 100
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lines._guard:
                delivered = {line.get("request_id") for line in lines.lines if line["message"] == "delivered"}
            if accepted <= delivered:
                break
            time.sleep(0.1)
    finally:
        underlying.removeHandler(lines)
        underlying.setLevel(level)

    # then every line naming a record carries that record's id as its correlation id, at every flow
    about_records = [line for line in lines.lines if line.get("request_id")]
    crossed = [line for line in about_records if line.get("correlation_id") != line["request_id"]]
    assert crossed == [], crossed[:3]
    for message in ("request accepted", "delivered"):
        seen = {line["correlation_id"] for line in about_records if line["message"] == message}
        assert seen == accepted, message
    validated = {
        line.get("correlation_id") for line in lines.lines if line.get("function_name") == "ValidateFunction"
    }
    assert validated - {None} <= accepted
