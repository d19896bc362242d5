"""A request's status end to end on the embedded stack: `forwarder send`, then `forwarder status` through the
gateway's signed GET /v1/requests/{request_id}, while the pipeline moves the record to the three sandboxes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from click.testing import CliRunner, Result

from forwarder_local.cli import main
from forwarder_local.stack import DEFAULT_CONFIG, EmbeddedStack, StackOptions
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e
OTHER_USER = "arn:aws:iam::000000000000:user/forwarder-other"
DEMO_USER = "arn:aws:iam::000000000000:user/forwarder-demo"


def config_with_another_client(folder: Path) -> Path:
    """The shipped config (three vendors), plus a second client allowed the same group key."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["clients"].append({"name": "other", "principals": [OTHER_USER], "group_keys": ["demo"]})
    path = folder / "forwarder.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state",
        config_path=config_with_another_client(tmp_path),
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        circuit_probe_seconds=0.5,
        poll_window_seconds=0.05,
    )
    with EmbeddedStack(options) as running:
        yield running


def key_of(stack: EmbeddedStack, user: str) -> str:
    keys = stack.credentials.for_user(user)
    assert keys is not None
    return keys[0]


def cli(stack: EmbeddedStack, *args: str) -> Result:
    assert stack.gateway is not None
    return CliRunner().invoke(
        main,
        [
            *args,
            "--url",
            stack.gateway.url,
            "--state-dir",
            str(stack.options.state_dir),
            "--config",
            str(stack.options.config_path),
        ],
    )


def send(stack: EmbeddedStack, *pairs: str) -> str:
    sets = [part for pair in pairs for part in ("--set", pair)]
    result = cli(stack, "send", "contacts", "-g", "demo", "--access-key", key_of(stack, DEMO_USER), *sets)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("202")
    return str(json.loads(result.output.splitlines()[1])["request_id"])


def status(stack: EmbeddedStack, request_id: str, user: str = DEMO_USER) -> dict[str, Any] | None:
    """The status document, or None while the route answers 404."""
    result = cli(stack, "status", request_id, "--json", "--access-key", key_of(stack, user))
    document: dict[str, Any] = json.loads(result.output)
    if result.exit_code != 0:
        assert document["code"] == "REQUEST_NOT_FOUND", result.output
        return None
    return document


def by_integration(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["integration"]: entry for entry in document["integrations"]}


def test_a_contact_is_followed_from_pending_to_delivered(stack: EmbeddedStack) -> None:
    # given ExpertSender answering 503 for now
    assert stack.sandbox is not None
    stack.sandbox.inject(status=503, times=100_000)
    # when a contact is sent with `forwarder send`
    request_id = send(stack, "email=jane@example.com", "first_name=Jane")

    # then `forwarder status` shows it pending at ExpertSender, retried with the vendor's answer, while it
    # is delivered at DM Hub and CareCloud
    def retrying() -> dict[str, Any] | None:
        document = status(stack, request_id)
        if document is None:
            return None
        entries = by_integration(document)
        expertsender = entries["expertsender"]
        others_done = all(entries[name]["status"] == "delivered" for name in ("dmhub", "carecloud"))
        return document if expertsender["attempts"] >= 1 and others_done else None

    document = wait_for(retrying, what="the contact retrying at ExpertSender, delivered elsewhere")
    assert document["status"] == "pending" and document["group_key"] == "demo"
    expertsender = by_integration(document)["expertsender"]
    assert expertsender["status"] == "pending"
    assert "503" in expertsender.get("last_error", "") or expertsender["sending"]
    assert expertsender["first_attempt_at"] is not None
    # and the person reading it sees the same
    shown = cli(stack, "status", request_id, "--access-key", key_of(stack, DEMO_USER))
    assert shown.exit_code == 0 and "pending" in shown.output and "dmhub" in shown.output

    # when ExpertSender is back, then it ends delivered at every integration
    stack.sandbox.clear_faults()
    done = wait_for(
        lambda: (found := status(stack, request_id)) and found["status"] == "done" and found,
        what="the contact delivered everywhere",
    )
    assert {entry["status"] for entry in done["integrations"]} == {"delivered"}
    assert by_integration(done)["expertsender"]["attempts"] >= 2
    shown = cli(stack, "status", request_id, "--access-key", key_of(stack, DEMO_USER))
    assert shown.exit_code == 0 and "delivered" in shown.output and "pending" not in shown.output


def test_a_contact_without_an_email_is_rejected_with_its_reason(stack: EmbeddedStack) -> None:
    # when a contact no integration can match is sent
    request_id = send(stack, "first_name=Nobody")
    # then `forwarder status` shows it rejected at validate, for each integration, with the reason
    document = wait_for(lambda: status(stack, request_id), what="the request validated")
    entries = by_integration(document)
    assert entries.keys() == {"expertsender", "dmhub", "carecloud"}
    for entry in entries.values():
        assert entry["status"] == "rejected" and entry["stage"] == "validate"
        assert "does not map" in entry["reason"]
    assert "attribute 'email' is required (it maps to 'email')" in entries["expertsender"]["errors"]
    assert document["status"] == "done"
    shown = cli(stack, "status", request_id, "--access-key", key_of(stack, DEMO_USER))
    assert "rejected" in shown.output and "attribute 'email' is required" in shown.output


def test_another_clients_request_answers_as_an_unknown_one(stack: EmbeddedStack) -> None:
    # given demo's request, delivered
    request_id = send(stack, "email=private@example.com")
    wait_for(lambda: status(stack, request_id), what="the request validated")
    # when another client of the same group key asks for it, and for an id never issued
    theirs = cli(stack, "status", request_id, "--access-key", key_of(stack, OTHER_USER))
    unknown = cli(
        stack, "status", "00000000-0000-4000-8000-000000000000", "--access-key", key_of(stack, OTHER_USER)
    )
    # then both answers are the same refusal, word for word
    assert theirs.exit_code == unknown.exit_code == 1
    assert theirs.output == unknown.output
    assert "404" in theirs.output and "REQUEST_NOT_FOUND" in theirs.output
    assert "private@example.com" not in theirs.output
    # and the operator is told which key signed, and how to sign as the sender
    assert f"signed with access key {key_of(stack, OTHER_USER)}" in theirs.output
    assert "-g GROUP_KEY or --access-key" in theirs.output


def test_the_status_route_is_signed_like_the_others(stack: EmbeddedStack) -> None:
    assert stack.gateway is not None
    # an unsigned call is refused at the gateway, as API Gateway refuses it for an AWS_IAM route
    unsigned = requests.get(
        f"{stack.gateway.url}/v1/requests/00000000-0000-4000-8000-000000000000", timeout=10
    )
    assert unsigned.status_code == 403
    assert unsigned.json()["code"] == "MISSING_AUTHENTICATION_TOKEN"


def test_follow_waits_for_a_new_request_and_prints_each_change_until_delivered(stack: EmbeddedStack) -> None:
    # given ExpertSender refusing the first two attempts
    assert stack.sandbox is not None
    stack.sandbox.inject(status=503, times=2)
    # when a contact is sent and followed at once (before validate has seen it: the route answers 404 then)
    request_id = send(stack, "email=follow@example.com")
    result = cli(
        stack, "status", request_id, "--follow", "--every", "0.2", "--access-key", key_of(stack, DEMO_USER)
    )
    # then it ends when every integration is delivered, exit 0, having shown the pending state on the way
    assert result.exit_code == 0, result.output
    blocks = result.output.split(f"request {request_id}")[1:]
    assert len(blocks) >= 2, result.output
    assert "pending" in blocks[0]
    assert "pending" not in blocks[-1] and blocks[-1].count("delivered") == 3


def test_follow_of_a_rejected_contact_exits_non_zero_with_the_reason(stack: EmbeddedStack) -> None:
    request_id = send(stack, "first_name=Nobody")
    result = cli(stack, "status", request_id, "--follow", "--access-key", key_of(stack, DEMO_USER))
    assert result.exit_code == 1, result.output
    assert "rejected" in result.output and "attribute 'email' is required" in result.output


def test_follow_of_an_unknown_id_gives_up_after_its_timeout(stack: EmbeddedStack) -> None:
    result = cli(
        stack,
        "status",
        "00000000-0000-4000-8000-000000000000",
        "--follow",
        "--every",
        "0.2",
        "--timeout",
        "1",
        "--access-key",
        key_of(stack, DEMO_USER),
    )
    assert result.exit_code == 1
    assert "REQUEST_NOT_FOUND" in result.output
