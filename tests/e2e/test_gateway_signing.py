"""SigV4 as API Gateway does it, over HTTP on the embedded stack: the stack's region, the payload's hash,
session tokens the stack issued, revoked keys, and the `forwarder clients` commands."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from click.testing import CliRunner, Result

from forwarder_local.stack import EmbeddedStack, StackOptions
from forwarder_local.stores import LocalCredentials

pytestmark = pytest.mark.e2e
EXPERTSENDER_ONLY = Path(__file__).resolve().parents[2] / "config" / "examples" / "expertsender-only.yaml"
FORGED_TOKEN = "IQoJb3JpZ2luX2VjEFORGED//////////token+never/issued="


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state", config_path=EXPERTSENDER_ONLY, port=0, with_sandboxes=False
    )
    with EmbeddedStack(options) as running:
        yield running


@pytest.fixture
def key(stack: EmbeddedStack) -> tuple[str, str]:
    first = stack.first_client()
    assert first is not None
    return first[2], first[3]


def body(email: str = "jane@example.com") -> str:
    return json.dumps({"data": {"email": email}, "group_key": "demo"})


def signed_post(
    stack: EmbeddedStack,
    credentials: Credentials,
    *,
    region: str = "us-east-1",
    signed_body: str | None = None,
    sent_body: str | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST /v1/contacts signed by botocore (signing ``signed_body``), sending ``sent_body``."""
    assert stack.gateway is not None
    url = stack.gateway.url + "/v1/contacts"
    signed_body = body() if signed_body is None else signed_body
    request = AWSRequest(
        "POST", url, data=signed_body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    SigV4Auth(credentials, "execute-api", region).add_auth(request)
    sent = signed_body if sent_body is None else sent_body
    return requests.post(url, data=sent, headers=dict(request.headers), timeout=10)


def queued(stack: EmbeddedStack) -> int:
    return sum(stack.store.counts("ingest").values())


# --- reproductions ------------------------------------------------------------------------------------------


def test_a_long_term_key_with_a_session_token_the_stack_never_issued_is_refused(
    stack: EmbeddedStack, key: tuple[str, str]
) -> None:
    # given the client's long-term key, and a session token the stack never issued
    access_key, secret_key = key
    # when a request is signed with both (botocore sends and signs X-Amz-Security-Token)
    response = signed_post(stack, Credentials(access_key, secret_key, FORGED_TOKEN))
    # then it is refused as API Gateway refuses it, and nothing is queued
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    assert response.json()["code"] == "SESSION_TOKEN_INVALID"
    assert queued(stack) == 0


def test_a_body_other_than_the_signed_one_is_refused_under_unsigned_payload(
    stack: EmbeddedStack, key: tuple[str, str]
) -> None:
    # given a request signed with x-amz-content-sha256: UNSIGNED-PAYLOAD (the body is not in the signature)
    access_key, secret_key = key
    # when it arrives with another body than the one the client signed
    response = signed_post(
        stack,
        Credentials(access_key, secret_key),
        sent_body=body("mallory@example.com"),
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    # then it is refused: execute-api signs the payload, and nothing is queued
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "UNSIGNED_PAYLOAD"
    assert queued(stack) == 0


def test_a_request_signed_for_another_region_is_refused_naming_the_stacks_region(
    stack: EmbeddedStack, key: tuple[str, str]
) -> None:
    # given the stack's region (us-east-1 by default)
    access_key, secret_key = key
    # when a request is signed for eu-west-1
    response = signed_post(stack, Credentials(access_key, secret_key), region="eu-west-1")
    # then it is refused, saying which region to sign for
    assert response.status_code == 403, response.text
    assert response.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert response.json()["code"] == "WRONG_REGION"
    assert "'us-east-1'" in response.json()["message"]
    assert queued(stack) == 0


# --- `forwarder clients`: keys issued, listed, revoked; temporary credentials ------------------------------


def cli(stack: EmbeddedStack, *args: str, env: dict[str, str] | None = None) -> Result:
    from forwarder_local.cli import main

    return CliRunner().invoke(main, [*args, "--state-dir", str(stack.options.state_dir)], env=env)


def send_contact(stack: EmbeddedStack) -> list[str]:
    assert stack.gateway is not None
    return ["send", "contacts", "-g", "demo", "--url", stack.gateway.url, "--set", "email=cli@example.com"]


def test_a_key_created_for_a_group_key_signs_at_once_is_listed_without_its_secret_and_revoked_is_refused(
    stack: EmbeddedStack, logged: list[dict[str, Any]]
) -> None:
    # given the running stack and the key it issued at start
    first = stack.first_client()
    assert first is not None
    # when `forwarder clients create --group-key demo` issues another key
    created = cli(stack, "clients", "create", "--group-key", "demo")
    assert created.exit_code == 0, created.output
    access_key = re.search(r"access key id\s+(AKIA\w+)", created.output).group(1)  # type: ignore[union-attr]
    secret = re.search(r"secret access key\s+(\S+)", created.output).group(1)  # type: ignore[union-attr]
    assert "client 'demo'" in created.output
    # then it signs for the demo client at once, no restart (and `forwarder send` finds it by its id)
    assert signed_post(stack, Credentials(access_key, secret)).status_code == 202
    sent = cli(stack, *send_contact(stack), "--access-key", access_key)
    assert sent.output.startswith("202 Accepted"), sent.output
    # and `clients list` shows it, and the stack's first key, with their client and never a secret
    listed = cli(stack, "clients", "list", "--group-key", "demo")
    assert listed.exit_code == 0, listed.output
    for key_id in (access_key, first[2]):
        (line,) = [line for line in listed.output.splitlines() if line.startswith(key_id)]
        assert " demo " in line and "long-term" in line and "active" in line
    assert secret not in listed.output and first[3] not in listed.output

    # when the key is revoked
    revoked = cli(stack, "clients", "revoke", access_key)
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked {access_key} (client 'demo')" in revoked.output
    # then the gateway refuses it at once, saying it was revoked; the other key still signs
    refused = signed_post(stack, Credentials(access_key, secret))
    assert refused.status_code == 403
    assert refused.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    assert refused.json()["code"] == "ACCESS_KEY_REVOKED"
    assert access_key in refused.json()["message"] and secret not in refused.text
    assert signed_post(stack, Credentials(first[2], first[3])).status_code == 202
    assert stack.first_client() == first, "the banner's key stays the oldest active one"
    relisted = cli(stack, "clients", "list")
    assert re.search(rf"^{access_key} .* revoked since \S+", relisted.output, re.MULTILINE), relisted.output
    # and the secret was never logged
    assert all(secret not in json.dumps(line) for line in logged)


def test_temporary_credentials_from_clients_session_sign_and_nothing_else_does(stack: EmbeddedStack) -> None:
    # given temporary credentials from `forwarder clients session` (shell exports, the note on stderr)
    issued = cli(stack, "clients", "session", "--group-key", "demo", "--duration-seconds", "900")
    assert issued.exit_code == 0, issued.output
    exports = dict(re.findall(r"^export (AWS_\w+)=(\S+)$", issued.stdout, re.MULTILINE))
    key, secret, token = (
        exports["AWS_ACCESS_KEY_ID"],
        exports["AWS_SECRET_ACCESS_KEY"],
        exports["AWS_SESSION_TOKEN"],
    )
    assert key.startswith("ASIA")
    # when they sign a request, then it is accepted
    assert signed_post(stack, Credentials(key, secret, token)).status_code == 202
    # and `forwarder send` signs with them from the environment (as after `eval "$(forwarder clients session)"`)
    sent = cli(stack, *send_contact(stack), env=exports)
    assert sent.output.startswith("202 Accepted"), sent.output
    # when the key signs without its token, or with a token the stack never issued, then it is refused
    missing = signed_post(stack, Credentials(key, secret))
    assert (missing.status_code, missing.json()["code"]) == (403, "SESSION_TOKEN_MISSING")
    forged = signed_post(stack, Credentials(key, secret, FORGED_TOKEN))
    assert (forged.status_code, forged.json()["code"]) == (403, "SESSION_TOKEN_INVALID")
    assert forged.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    for response in (missing, forged):
        assert (
            secret not in response.text and token not in response.text and FORGED_TOKEN not in response.text
        )
    # and `clients list` shows them as temporary, issued with the client's key, until when
    listed = cli(stack, "clients", "list")
    assert re.search(rf"^{key} .*temporary \(from AKIA\w+\).*active until \S+", listed.output, re.MULTILINE)
    assert token not in listed.output and secret not in listed.output


def test_expired_temporary_credentials_are_refused_over_http(stack: EmbeddedStack) -> None:
    # given temporary credentials that expired a minute ago (issued 16 minutes ago for 15 minutes)
    first = stack.first_client()
    assert first is not None
    earlier = LocalCredentials(stack.options.state_dir / "credentials.json", clock=lambda: time.time() - 960)
    session = earlier.create_session(first[2], duration_seconds=900)
    # when they sign a request, then it is refused as an expired token, saying how to get new ones
    response = signed_post(
        stack, Credentials(session.access_key_id, session.secret_access_key, session.session_token)
    )
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == "ExpiredTokenException"
    assert response.json()["code"] == "SESSION_TOKEN_EXPIRED"
    assert "forwarder clients session" in response.json()["message"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["create", "--group-key", "nope"], "group key 'nope' is not in"),
        (["create", "--group-key", "demo", "--client", "other"], "no client 'other' in"),
        (["revoke", "AKIANEVERISSUED00000"], "access key AKIANEVERISSUED00000 was not issued here"),
        (["session"], "give --access-key, or --group-key"),
    ],
)
def test_clients_commands_say_what_to_fix(stack: EmbeddedStack, args: list[str], says: str) -> None:
    result = cli(stack, "clients", *args)
    assert result.exit_code != 0
    assert says in result.output


def test_a_group_key_no_client_may_use_is_refused_with_the_config_entry_to_add(tmp_path: Path) -> None:
    # given a config whose only client may use one of two group keys
    config = tmp_path / "forwarder.yaml"
    text = EXPERTSENDER_ONLY.read_text()
    assert "group_keys:\n  demo:" in text
    demo = text.split("group_keys:\n  demo:", 1)[1]
    config.write_text(text + "\n  other:" + demo.split("\n\n", 1)[0].rstrip() + "\n")
    from forwarder_local.cli import main

    # when a key is asked for the other group key, then the answer shows the client entry to add
    result = CliRunner().invoke(
        main,
        ["clients", "create", "-g", "other", "--config", str(config), "--state-dir", str(tmp_path / "s")],
    )
    assert result.exit_code != 0
    assert "no client in" in result.output and "group_keys: [other]" in result.output
