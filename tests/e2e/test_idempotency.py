"""`Idempotency-Key` end to end on the embedded stack: signed HTTP requests through the gateway, ingest, the
queues and the deliver flow to the ExpertSender sandbox, as `make run` wires them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from forwarder_local.stack import EmbeddedStack, StackOptions
from tests.e2e.test_embedded_stack import wait_for

pytestmark = pytest.mark.e2e
EXPERTSENDER_ONLY = Path(__file__).resolve().parents[2] / "config" / "examples" / "expertsender-only.yaml"


def options(state: Path) -> StackOptions:
    return StackOptions(
        state_dir=state,
        config_path=EXPERTSENDER_ONLY,
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        poll_window_seconds=0.05,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(options(tmp_path / "state")) as running:
        yield running


def send(stack: EmbeddedStack, data: dict[str, Any], key: str) -> requests.Response:
    first = stack.first_client()
    assert first is not None and stack.gateway is not None
    _, group_key, access_key, secret_key = first
    return requests.post(
        stack.gateway.url + "/v1/contacts",
        json={"data": data, "group_key": group_key},
        headers={"Idempotency-Key": key},
        auth=AWS4Auth(access_key, secret_key, "us-east-1", "execute-api"),
        timeout=10,
    )


def drained(stack: EmbeddedStack) -> bool:
    return all(sum(stack.store.counts(queue).values()) == 0 for queue in ("ingest", "delivery"))


def deliveries_of(stack: EmbeddedStack, email: str) -> int:
    """POST /customers requests the ExpertSender sandbox answered that carried this customer."""
    assert stack.sandbox is not None
    return sum(
        1
        for request in stack.sandbox.requests
        if request.method == "POST"
        and request.path.endswith("/customers")
        and any(customer.get("email") == email for customer in (request.body or {}).get("data", []))
    )


def test_the_same_key_twice_over_http_is_delivered_once(stack: EmbeddedStack) -> None:
    # given a contact sent with an Idempotency-Key and delivered
    first = send(stack, {"email": "once@example.com", "first_name": "Ola"}, "signup-42")
    assert first.status_code == 202, first.text
    request_id = first.json()["request_id"]
    assert stack.sandbox is not None
    wait_for(lambda: stack.sandbox.find(email="once@example.com"), what="the customer in the sandbox")

    # when the client sends it again with the same key (it never saw the first answer)
    again = send(stack, {"first_name": "Ola", "email": "once@example.com"}, "signup-42")

    # then it gets the first answer and the vendor sees the customer once
    assert again.status_code == 202, again.text
    assert again.json() == {"request_id": request_id, "status": "accepted"}
    assert again.headers["X-Request-Id"] == request_id
    wait_for(lambda: drained(stack), what="the queues to drain")
    wait_for(lambda: deliveries_of(stack, "once@example.com") >= 1, what="the delivery in the request log")
    assert deliveries_of(stack, "once@example.com") == 1

    # and the same key with other data is refused, saying what to do, and not delivered
    other = send(stack, {"email": "once@example.com", "first_name": "Kari"}, "signup-42")
    assert other.status_code == 422
    assert other.json()["code"] == "IDEMPOTENCY_KEY_REUSED"
    wait_for(lambda: drained(stack), what="the queues to drain")
    assert stack.sandbox.find(email="once@example.com")["firstName"] == "Ola"


def test_a_key_outlives_a_restart_of_the_stack(tmp_path: Path) -> None:
    # given a request accepted by a stack that is then stopped
    with EmbeddedStack(options(tmp_path / "state")) as first_run:
        accepted = send(first_run, {"email": "restart@example.com"}, "restart-1")
        assert accepted.status_code == 202, accepted.text
        wait_for(lambda: drained(first_run), what="the queues to drain")
    assert (tmp_path / "state" / "idempotency.db").exists()

    # when the client retries against the next run on the same state folder
    with EmbeddedStack(options(tmp_path / "state")) as second_run:
        again = send(second_run, {"email": "restart@example.com"}, "restart-1")

        # then the key answers the first answer and nothing is queued again
        assert again.status_code == 202, again.text
        assert again.json()["request_id"] == accepted.json()["request_id"]
        assert sum(second_run.store.counts("ingest").values()) == 0
