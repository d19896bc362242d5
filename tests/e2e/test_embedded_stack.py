"""End to end on the embedded stack: signed HTTP request -> gateway -> ingest -> queue -> validate ->
queue -> deliver -> the ExpertSender sandbox, exactly as `make run` wires it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from requests_aws4auth import AWS4Auth

from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.stack import EmbeddedStack, StackOptions
from forwarder_local.stores import LocalSecretStore
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state",
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        poll_window_seconds=0.05,
    )
    with EmbeddedStack(options) as running:
        yield running


@pytest.fixture
def client(stack: EmbeddedStack) -> tuple[str, str, str]:
    first = stack.first_client()
    assert first is not None, "the stack issues a key to the example config's client"
    _, group_key, access_key, secret_key = first
    return group_key, access_key, secret_key


def post(
    stack: EmbeddedStack, auth: AWS4Auth, body: Any, method: str = "POST", path: str = "/v1/contacts"
) -> requests.Response:
    assert stack.gateway is not None
    return requests.request(method, stack.gateway.url + path, json=body, auth=auth, timeout=10)


def test_a_signed_contact_is_delivered_to_the_sandbox(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    # given the example config and the client's issued key
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    # when a contact is sent
    response = post(
        stack,
        auth,
        {
            "data": {
                "email": " Jane@Example.com",
                "first_name": "Jane",
                "city": "Oslo",
                "tags": ["vip", "beta"],
            },
            "group_key": group_key,
        },
    )
    # then it is accepted with a request id, and the customer becomes readable in the vendor sandbox, mapped
    assert response.status_code == 202, response.text
    assert response.json()["request_id"] == response.headers["X-Request-Id"]
    assert stack.sandbox is not None
    customer = wait_for(
        lambda: stack.sandbox.find(email="jane@example.com"), what="the customer in the sandbox"
    )
    assert customer["firstName"] == "Jane"
    assert {"name": "City", "value": "Oslo"} in customer["customAttributes"]
    assert {"name": "Tags", "value": "vip,beta"} in customer["customAttributes"]
    # and a delete removes it again
    deleted = post(
        stack, auth, {"data": {"email": "jane@example.com"}, "group_key": group_key}, method="DELETE"
    )
    assert deleted.status_code == 202
    wait_for(lambda: stack.sandbox.find(email="jane@example.com") is None, what="the customer deleted")


def test_botocore_signed_request_is_accepted(stack: EmbeddedStack, client: tuple[str, str, str]) -> None:
    group_key, access_key, secret_key = client
    assert stack.gateway is not None
    body = json.dumps({"data": {"email": "boto@example.com"}, "group_key": group_key})
    request = AWSRequest(
        "POST", stack.gateway.url + "/v1/contacts", data=body, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(access_key, secret_key), "execute-api", stack.options.region).add_auth(request)
    response = requests.post(request.url, data=body, headers=dict(request.headers), timeout=10)
    assert response.status_code == 202, response.text


def test_nested_data_is_refused_naming_the_attribute(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    response = post(
        stack, auth, {"data": {"email": "a@b.co", "address": {"city": "Oslo"}}, "group_key": group_key}
    )
    assert response.status_code == 400
    assert response.json()["attribute"] == "data.address"
    assert "data.address" in response.json()["message"]
    assert stack.store.counts("ingest")["visible"] + stack.store.counts("ingest")["in_flight"] == 0


@pytest.mark.parametrize(
    ("case", "expected_type"),
    [
        ("wrong secret", "InvalidSignatureException"),
        ("tampered body", "InvalidSignatureException"),
        ("unknown key", "UnrecognizedClientException"),
        ("six minutes old", "InvalidSignatureException"),
        ("unsigned", "MissingAuthenticationTokenException"),
    ],
)
def test_bad_signatures_are_refused_with_403(
    stack: EmbeddedStack, client: tuple[str, str, str], case: str, expected_type: str
) -> None:
    group_key, access_key, secret_key = client
    assert stack.gateway is not None
    url = stack.gateway.url + "/v1/contacts"
    body = json.dumps({"data": {"email": "x@example.com"}, "group_key": group_key})
    key, secret = access_key, secret_key
    if case == "wrong secret":
        secret = secret_key[:-1] + ("A" if secret_key[-1] != "A" else "B")
    if case == "unknown key":
        key = "AKIAUNKNOWNKEY000000"
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    signer = SigV4Auth(Credentials(key, secret), "execute-api", "us-east-1")
    if case == "six minutes old":
        stale = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=6)
        with mock.patch("botocore.auth.get_current_datetime", return_value=stale):
            signer.add_auth(request)
    elif case != "unsigned":
        signer.add_auth(request)
    sent_body = body.replace("x@example.com", "y@example.com") if case == "tampered body" else body
    response = requests.post(url, data=sent_body, headers=dict(request.headers), timeout=10)
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == expected_type
    message = response.json()["message"]
    if case == "six minutes old":
        assert message.startswith("Signature expired")
    if case in ("wrong secret", "tampered body"):
        assert "signature we calculated does not match" in message
    assert stack.store.counts("ingest")["visible"] == 0


def test_group_key_rules(stack: EmbeddedStack, client: tuple[str, str, str]) -> None:
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    unknown = post(stack, auth, {"data": {"email": "a@b.co"}, "group_key": "nope"})
    # a key that does not exist answers like one the client may not use: existence is not revealed
    assert unknown.status_code == 403 and unknown.json()["code"] == "GROUP_KEY_FORBIDDEN"
    missing = post(stack, auth, {"data": {"email": "a@b.co"}})
    assert missing.status_code == 400 and missing.json()["attribute"] == "group_key"
    not_json = requests.post(
        stack.gateway.url + "/v1/contacts",
        data=b"{oops",
        auth=auth,
        timeout=10,  # type: ignore[union-attr]
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 400 and not_json.json()["code"] == "INVALID_JSON"
    wrong_type = requests.post(
        stack.gateway.url + "/v1/contacts",
        data=b"a=b",
        auth=auth,
        timeout=10,  # type: ignore[union-attr]
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert wrong_type.status_code == 415
    events = post(
        stack,
        auth,
        {"data": {"email": "a@b.co", "event": "signup"}, "group_key": group_key},
        path="/v1/events",
    )
    assert events.status_code == 202, "DM Hub takes the demo group key's events"


def test_vendor_400_is_rejected_with_the_vendors_reason(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    assert stack.sandbox is not None
    stack.sandbox.inject(
        status=400,
        times=1,
        method="POST",
        path_prefix="/customers",
        body={
            "type": "about:blank",
            "title": "One or more validation errors occurred.",
            "status": 400,
            "detail": "Customer is blocked",
            "errors": ["data[0].email: customer is blocked"],
        },
    )
    response = post(stack, auth, {"data": {"email": "blocked@example.com"}, "group_key": group_key})
    assert response.status_code == 202
    rejection = wait_for(lambda: stack.store.peek("rejects"), what="a rejection")[0]
    document = json.loads(rejection["body"])
    assert document["stage"] == "deliver"
    assert document["request_id"] == response.json()["request_id"]
    assert "Customer is blocked" in document["reason"]
    assert document["errors"] == ["data[0].email: customer is blocked"]
    assert stack.sandbox.find(email="blocked@example.com") is None
    posts = [r for r in stack.sandbox.requests if r.method == "POST"]
    assert len(posts) == 1, "a record rejected for good is never retried"


def test_record_that_cannot_be_mapped_is_rejected_at_validate(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    response = post(stack, auth, {"data": {"first_name": "No e-mail"}, "group_key": group_key})
    assert response.status_code == 202
    rejection = json.loads(wait_for(lambda: stack.store.peek("rejects"), what="a rejection")[0]["body"])
    assert rejection["stage"] == "validate"
    assert rejection["integration"] == "expertsender"
    assert any("'email' is required" in error for error in rejection["errors"])
    assert stack.sandbox is not None and not stack.sandbox.requests


def test_vendor_503_then_success_is_delivered_once(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    assert stack.sandbox is not None
    stack.sandbox.inject(status=503, times=1, method="POST")
    response = post(stack, auth, {"data": {"email": "retry@example.com"}, "group_key": group_key})
    assert response.status_code == 202
    wait_for(lambda: stack.sandbox.find(email="retry@example.com"), what="the customer after a retry")

    def posts() -> list[int]:
        return [r.status for r in stack.sandbox.requests if r.method == "POST"]

    # (the sandbox logs a request once it has answered it: a moment after its effect is visible)
    wait_for(lambda: posts() == [503, 201], what="the 503 and the retry's 201 in the request log")
    wait_for(lambda: sum(stack.store.counts("delivery").values()) == 0, what="the delivery queue to drain")
    assert posts() == [503, 201]
    assert len([c for c in stack.sandbox.customers() if c.get("email") == "retry@example.com"]) == 1
    assert sum(stack.store.counts("delivery-dlq").values()) == 0


def test_a_vendor_down_for_good_ends_in_the_dlq_with_the_reason(tmp_path: Path) -> None:
    options = StackOptions(
        state_dir=tmp_path / "state",
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.05,
        retry_max_seconds=0.1,
        retry_horizon_seconds=1.0,
        poll_window_seconds=0.02,
    )
    with EmbeddedStack(options) as stack:
        first = stack.first_client()
        assert first is not None and stack.sandbox is not None
        _, group_key, access_key, secret_key = first
        stack.sandbox.inject(status=503, times=1000, method="POST")
        response = post(
            stack,
            AWS4Auth(access_key, secret_key, "us-east-1", "execute-api"),
            {"data": {"email": "down@example.com"}, "group_key": group_key},
        )
        assert response.status_code == 202
        dead = json.loads(
            wait_for(lambda: stack.store.peek("delivery-dlq"), timeout=30, what="a dead letter")[0]["body"]
        )
        # after its retry horizon (1 s here; 4 h by default), with the last reason and how long it tried
        posts = [r for r in stack.sandbox.requests if r.method == "POST"]
        assert dead["attempts"] == len(posts) >= 2
        assert "unavailable" in dead["reason"] and "503" in dead["reason"]
        assert f"gave up after {dead['attempts']} attempts over" in dead["reason"]
        assert dead["delivery"]["payload"]["customer"]["email"] == "down@example.com"
        # and once the vendor is back, `forwarder replay dead-letters` delivers it
        from click.testing import CliRunner

        from forwarder_local.cli import main

        stack.sandbox.reset()
        replayed = CliRunner().invoke(main, ["replay", "dead-letters", "--state-dir", str(options.state_dir)])
        assert replayed.exit_code == 0, replayed.output
        assert "replayed 1 message(s)" in replayed.output
        wait_for(lambda: stack.sandbox.find(email="down@example.com"), what="the replayed delivery")
        assert sum(stack.store.counts("delivery-dlq").values()) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_cli_stack(state: Path, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forwarder_local.cli",
            "run",
            "--no-sandboxes",
            "--state-dir",
            str(state),
            "--port",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "gateway" in line:
            return process
    raise AssertionError("the stack did not start")


def test_an_accepted_record_survives_kill_9(tmp_path: Path) -> None:
    # given a vendor that is down, and the stack (a separate process, as `make run` starts it)
    state = tmp_path / "state"
    sandbox = ExpertSenderSandbox("sandbox-key").start()
    try:
        LocalSecretStore(state / "secrets.json").put(
            "forwarder/demo/expertsender", {"api_key": "sandbox-key", "base_url": sandbox.url}
        )
        sandbox.inject(status=503, times=10_000)
        port = _free_port()
        process = _start_cli_stack(state, port)
        try:
            credentials = json.loads((state / "credentials.json").read_text())
            access_key = sorted(credentials)[0]
            auth = AWS4Auth(
                access_key, credentials[access_key]["secret_access_key"], "us-east-1", "execute-api"
            )
            # when a record is accepted and the stack is killed before it could deliver
            response = requests.post(
                f"http://127.0.0.1:{port}/v1/contacts",
                auth=auth,
                timeout=10,
                json={"data": {"email": "survivor@example.com"}, "group_key": "demo"},
            )
            assert response.status_code == 202
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        assert sandbox.find(email="survivor@example.com") is None
        # then, once the vendor is back and the stack restarts, the record is delivered
        sandbox.reset()
        process = _start_cli_stack(state, port)
        try:
            wait_for(
                lambda: sandbox.find(email="survivor@example.com"), timeout=60, what="delivery after restart"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    finally:
        sandbox.stop()


def test_the_cli_sends_a_signed_record_and_lists_the_rejects_trail(stack: EmbeddedStack) -> None:
    from click.testing import CliRunner

    from forwarder_local.cli import main

    assert stack.gateway is not None and stack.sandbox is not None
    state = str(stack.options.state_dir)
    runner = CliRunner()
    send = ["send", "contacts", "-g", "demo", "--url", stack.gateway.url, "--state-dir", state]
    # given the stack's issued key in its state folder, when `forwarder send` posts a contact
    sent = runner.invoke(main, [*send, "--set", "email=cli@example.com", "--set", 'tags=["a","b"]'])
    # then it is accepted and delivered
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("202 Accepted")
    wait_for(lambda: stack.sandbox.find(email="cli@example.com"), what="the CLI's record in the sandbox")
    # and a record without the required e-mail shows up in `forwarder trail rejects` with its reason
    runner.invoke(main, [*send, "--set", "first_name=Nobody"])
    wait_for(lambda: stack.store.peek("rejects"), what="the rejection")
    listed = runner.invoke(main, ["trail", "rejects", "--state-dir", state])
    assert listed.exit_code == 0
    assert "the record does not map to ExpertSender CDP" in listed.output
    assert "attribute 'email' is required" in listed.output, "the reasons are always shown"
    assert "Nobody" not in listed.output, "the record only on request"
    detailed = runner.invoke(main, ["trail", "rejects", "--state-dir", state, "--show-data"])
    assert "Nobody" in detailed.output


def test_a_delete_waits_for_the_customers_earlier_upsert_and_the_customer_ends_erased(
    stack: EmbeddedStack, client: tuple[str, str, str]
) -> None:
    # given an upsert the vendor throttles (it waits out a Retry-After of 1 s)
    group_key, access_key, secret_key = client
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    assert stack.sandbox is not None
    stack.sandbox.inject(status=429, times=1, retry_after=1, method="POST")
    assert (
        post(stack, auth, {"data": {"email": "gdpr@example.com"}, "group_key": group_key}).status_code == 202
    )
    wait_for(lambda: [r for r in stack.sandbox.requests if r.status == 429], what="the throttled upsert")
    # when the customer asks to be deleted meanwhile
    deleted = post(
        stack, auth, {"data": {"email": "gdpr@example.com"}, "group_key": group_key}, method="DELETE"
    )
    assert deleted.status_code == 202
    wait_for(lambda: [r for r in stack.sandbox.requests if r.method == "DELETE"], what="the delete")
    wait_for(lambda: sum(stack.store.counts("delivery").values()) == 0, what="the delivery queue to drain")
    # then the requests took effect in the order they were received: the upsert, then the delete
    seen = [(r.method, r.status) for r in stack.sandbox.requests if r.path.startswith("/customers")]
    assert seen == [("POST", 429), ("POST", 201), ("DELETE", 200)]
    assert stack.sandbox.find(email="gdpr@example.com") is None
    # and a new upsert after the delete is delivered as usual
    assert (
        post(stack, auth, {"data": {"email": "gdpr@example.com"}, "group_key": group_key}).status_code == 202
    )
    wait_for(lambda: stack.sandbox.find(email="gdpr@example.com"), what="the re-subscribed customer")


def test_a_second_stack_on_the_same_state_folder_is_refused(stack: EmbeddedStack) -> None:
    from forwarder_local.stack import StateInUse

    with pytest.raises(StateInUse, match="another embedded stack is running"):
        EmbeddedStack(StackOptions(state_dir=stack.options.state_dir, port=0, sandbox_port=0))
