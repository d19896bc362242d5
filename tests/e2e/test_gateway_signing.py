"""SigV4 as API Gateway does it, over HTTP on the embedded stack: the stack's region, the payload's hash,
session tokens the stack issued, revoked keys, and the `forwarder clients` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from forwarder_local.stack import EmbeddedStack, StackOptions

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
