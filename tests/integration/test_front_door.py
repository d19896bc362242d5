"""The front door: whatever a client sends, ingest answers a 4xx that says what to fix (never a 5xx), accepts
only flat records within the limits, and does not reveal which group keys exist to callers not allowed them.

The ingest handler runs in-process on the canonical event (events/api_post_contacts.json), as API Gateway
invokes it, with the durable queue store behind it."""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forwarder import runtime
from forwarder.contract import MAX_ATTRIBUTE_NAME, MAX_ATTRIBUTES, MAX_LIST_ITEMS, MAX_VALUE_CHARS
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.authorizer import IamAuthorizer
from forwarder_local.gateway import LocalGateway
from forwarder_local.poller import LambdaContext
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalCredentials, LocalSecretStore
from tests.conftest import REPO_ROOT, load_event

EXPERTSENDER_ONLY = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"


class Door:
    """The ingest handler on a durable queue store; ``config`` defaults to the ExpertSender-only example."""

    def __init__(self, tmp_path: Path, config: Path = EXPERTSENDER_ONLY) -> None:
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        runtime.install(
            Services(
                settings=RuntimeSettings(runtime="embedded", config_path=str(config)),
                queues=EmbeddedQueues(self.store),
                secrets=LocalSecretStore(tmp_path / "secrets.json"),
                http=requests.Session(),
            )
        )
        self.handler = load_handler("ingest")

    def send(
        self,
        body: str | bytes | None,
        *,
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST /v1/contacts with ``body``: text as API Gateway passes it, bytes base64-encoded (binary)."""
        event = copy.deepcopy(load_event("api_post_contacts.json"))
        event["headers"] = {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", **(headers or {})}
        if content_type is not None:
            event["headers"]["Content-Type"] = content_type
        event["multiValueHeaders"] = {name: [value] for name, value in event["headers"].items()}
        if isinstance(body, bytes):
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode("ascii"), True
        else:
            event["body"], event["isBase64Encoded"] = body, False
        response: dict[str, Any] = self.handler(event, LambdaContext(function_name="IngestFunction"))
        return response

    def send_data(self, data: Any, group_key: str = "demo") -> dict[str, Any]:
        return self.send(json.dumps({"data": data, "group_key": group_key}))

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek("ingest")]


@pytest.fixture
def door(tmp_path: Path) -> Iterator[Door]:
    built = Door(tmp_path)
    yield built
    built.store.close()


def refusal(response: dict[str, Any]) -> dict[str, Any]:
    assert 400 <= response["statusCode"] < 500, response
    body: dict[str, Any] = json.loads(response["body"])
    assert body["code"] and body["message"]
    return body


# --- bodies that are not UTF-8 ----------------------------------------------------------------------------


ENVELOPE = '{"data": {"email": "jane@example.com", "city": "%s"}, "group_key": "demo"}'


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("a stray byte", (ENVELOPE % "Oslo").encode().replace(b"Oslo", b"Os\xfflo")),
        ("an overlong sequence", (ENVELOPE % "Oslo").encode().replace(b"Oslo", b"Os\xc0\xaflo")),
        ("Latin-1", (ENVELOPE % "Tromsø").encode("latin-1")),
        ("UTF-16", (ENVELOPE % "Tromsø").encode("utf-16")),
        ("a truncated sequence", (ENVELOPE % "Oslo").encode().replace(b"Oslo", b"Oslo\xe2\x82")),
    ],
)
def test_a_body_that_is_not_utf8_is_refused_with_400_saying_so(door: Door, name: str, raw: bytes) -> None:
    body = refusal(door.send(raw))
    assert door.send(raw)["statusCode"] == 400
    assert body["code"] == "INVALID_ENCODING"
    assert "UTF-8" in body["message"]
    assert door.queued() == []


def test_a_utf8_body_sent_as_binary_is_accepted(door: Door) -> None:
    response = door.send((ENVELOPE % "Tromsø").encode("utf-8"))
    assert response["statusCode"] == 202
    assert door.queued()[0]["data"]["city"] == "Tromsø"


def test_a_utf8_byte_order_mark_is_tolerated(door: Door) -> None:
    assert door.send(b"\xef\xbb\xbf" + (ENVELOPE % "Oslo").encode())["statusCode"] == 202


def test_a_declared_charset_other_than_utf8_is_refused(door: Door) -> None:
    body = refusal(door.send(ENVELOPE % "Oslo", content_type="application/json; charset=iso-8859-1"))
    assert body["code"] == "UNSUPPORTED_CHARSET"
    assert door.send(ENVELOPE % "Oslo", content_type="application/json; charset=UTF-8")["statusCode"] == 202


def test_a_body_that_is_not_base64_when_flagged_so_is_refused(door: Door) -> None:
    event_body = "not base64 at all!"
    response = door.handler(
        {**load_event("api_post_contacts.json"), "body": event_body, "isBase64Encoded": True},
        LambdaContext(function_name="IngestFunction"),
    )
    assert refusal(response)["code"] == "INVALID_ENCODING"


# --- nesting and limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [100, 5_000, 100_000])
def test_deeply_nested_json_is_refused_with_400(door: Door, depth: int) -> None:
    body = '{"group_key": "demo", "data": {"a": ' + "[" * depth + "]" * depth + "}}"
    refused = refusal(door.send(body))
    assert door.send(body)["statusCode"] == 400
    assert refused["code"] in {"NESTED_ATTRIBUTE", "NESTED_TOO_DEEP"}
    assert door.queued() == []


def test_too_many_attributes_are_refused(door: Door) -> None:
    data = {f"attribute_{index}": "x" for index in range(MAX_ATTRIBUTES + 1)}
    body = refusal(door.send_data(data))
    assert body["code"] == "TOO_MANY_ATTRIBUTES"
    assert str(MAX_ATTRIBUTES) in body["message"]
    assert door.queued() == []


def test_the_attribute_limit_itself_is_accepted(door: Door) -> None:
    data = {"email": "jane@example.com"} | {f"a{index}": index for index in range(MAX_ATTRIBUTES - 1)}
    assert door.send_data(data)["statusCode"] == 202


@pytest.mark.parametrize(
    ("data", "attribute", "code"),
    [
        (
            {"n" * (MAX_ATTRIBUTE_NAME + 1): "x"},
            "data." + "n" * (MAX_ATTRIBUTE_NAME + 1),
            "ATTRIBUTE_NAME_TOO_LONG",
        ),
        ({"": "x"}, "data.", "INVALID_ATTRIBUTE_NAME"),
        ({"bad\nname": "x"}, "data.bad\nname", "INVALID_ATTRIBUTE_NAME"),
        ({"city": "x" * (MAX_VALUE_CHARS + 1)}, "data.city", "VALUE_TOO_LONG"),
        ({"tags": ["x"] * (MAX_LIST_ITEMS + 1)}, "data.tags", "LIST_TOO_LONG"),
        ({"tags": ["ok", "x" * (MAX_VALUE_CHARS + 1)]}, "data.tags[1]", "VALUE_TOO_LONG"),
    ],
)
def test_attribute_limits_are_refused_naming_the_attribute(
    door: Door, data: dict[str, Any], attribute: str, code: str
) -> None:
    body = refusal(door.send_data({"email": "jane@example.com", **data}))
    assert body["code"] == code
    assert body["attribute"] == attribute
    assert door.queued() == []


# --- group keys stay private -------------------------------------------------------------------------------


def test_an_unknown_group_key_and_one_not_allowed_answer_the_same(tmp_path: Path) -> None:
    # given a second brand's group key that the demo client may not use
    config = EXPERTSENDER_ONLY.read_text()
    other = config[config.index("  demo:\n") :].replace("  demo:\n", "  other-brand:\n", 1)
    path = tmp_path / "two-brands.yaml"
    path.write_text(config + other)
    door = Door(tmp_path, path)
    try:
        # when the demo client tries the other brand's key and a key that does not exist
        existing = door.send_data({"email": "jane@example.com"}, group_key="other-brand")
        missing = door.send_data({"email": "jane@example.com"}, group_key="no-such-brand")
        # then both answers are alike except for the name it sent: it cannot tell which one exists
        assert existing["statusCode"] == missing["statusCode"] == 403
        first, second = json.loads(existing["body"]), json.loads(missing["body"])
        assert first["code"] == second["code"] == "GROUP_KEY_FORBIDDEN"
        assert first["message"].replace("other-brand", "X") == second["message"].replace("no-such-brand", "X")
        assert door.queued() == []
    finally:
        door.store.close()


# --- the unexpected ----------------------------------------------------------------------------------------


def test_an_unexpected_failure_answers_500_with_a_request_id_and_is_logged(
    door: Door, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("forwarder.api.accept", broken)
    with caplog.at_level(logging.ERROR):
        response = door.send(ENVELOPE % "Oslo")
    assert response["statusCode"] == 500
    body = json.loads(response["body"])
    assert body["code"] == "INTERNAL_ERROR"
    assert body["request_id"] in body["message"]
    assert any("a bug" in (record.exc_text or "") or record.exc_info for record in caplog.records)


# --- anything at all ---------------------------------------------------------------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _is_flat(data: Any) -> bool:
    return isinstance(data, dict) and all(
        not isinstance(value, dict)
        and (not isinstance(value, list) or all(not isinstance(item, dict | list) for item in value))
        for value in data.values()
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=st.one_of(
        _json,
        st.fixed_dictionaries(
            {"group_key": st.sampled_from(["demo", "", "nope"]) | st.text(), "data": _json}
        ),
        st.fixed_dictionaries(
            {"group_key": st.just("demo"), "data": st.dictionaries(st.text(), _json, max_size=6)}
        ),
    ),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "text"]),
)
def test_no_document_in_any_encoding_gets_a_5xx_or_queues_data_that_is_not_flat(
    door: Door, document: Any, encoding: str
) -> None:
    text = json.dumps(document)
    if encoding == "text":
        response = door.send(text)
    else:
        try:
            raw = text.encode(encoding)
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")
        response = door.send(raw)
    assert response["statusCode"] < 500, response
    if response["statusCode"] == 202:
        assert _is_flat(door.queued()[-1]["data"])
    else:
        refusal(response)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=300),
    content_type=st.none()
    | st.sampled_from(["application/json", "text/plain", "application/json; charset=x"])
    | st.text(max_size=40),
    idempotency_key=st.none() | st.text(max_size=200),
)
def test_no_bytes_and_headers_get_a_5xx(
    door: Door, raw: bytes, content_type: str | None, idempotency_key: str | None
) -> None:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    response = door.send(raw, content_type=content_type, headers=headers)
    assert response["statusCode"] < 500, response
    if response["statusCode"] != 202:
        refusal(response)


# --- through the embedded gateway, signed, with random headers ---------------------------------------------

DEMO_ARN = "arn:aws:iam::000000000000:user/forwarder-demo"
_header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20).filter(
    lambda name: (
        name.lower() not in {"host", "content-length", "authorization", "transfer-encoding", "expect"}
        and not name.lower().startswith("x-amz")
    )
)
# printable ASCII; HTTP clients refuse leading or trailing whitespace in a value
_header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60).map(
    str.strip
)


@pytest.fixture
def gateway(door: Door, tmp_path: Path) -> Iterator[tuple[LocalGateway, str, str]]:
    credentials = LocalCredentials(tmp_path / "credentials.json")
    access_key, secret_key = credentials.create_key(DEMO_ARN)
    running = LocalGateway(door.handler, IamAuthorizer(credentials, "us-east-1")).start()
    yield running, access_key, secret_key
    running.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    raw=st.binary(max_size=200)
    | st.builds(lambda data: json.dumps({"group_key": "demo", "data": data}).encode(), _json),
    headers=st.dictionaries(_header_names, _header_values, max_size=5),
    content_type=st.sampled_from(
        ["application/json", "text/plain; charset=utf-16", "multipart/form-data", ""]
    ),
)
def test_signed_requests_with_random_headers_and_bodies_never_get_a_5xx(
    door: Door, gateway: tuple[LocalGateway, str, str], raw: bytes, headers: dict[str, str], content_type: str
) -> None:
    running, access_key, secret_key = gateway
    signed = AWSRequest(
        method="POST",
        url=running.url + "/v1/contacts",
        data=raw,
        headers={**headers, "Content-Type": content_type},
    )
    SigV4Auth(Credentials(access_key, secret_key), "execute-api", "us-east-1").add_auth(signed)
    response = requests.post(
        running.url + "/v1/contacts", data=raw, headers=dict(signed.headers.items()), timeout=10
    )
    assert response.status_code < 500, response.text
    if response.status_code == 202:
        assert _is_flat(door.queued()[-1]["data"])


def test_concurrent_requests_each_queue_their_own_record(
    door: Door, gateway: tuple[LocalGateway, str, str]
) -> None:
    import sys
    import threading

    from requests_aws4auth import AWS4Auth

    # given 8 clients sending different contacts at the same time through the gateway
    running, access_key, secret_key = gateway
    auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
    answers: dict[str, str] = {}  # request id -> the e-mail its client sent
    lock = threading.Lock()

    def client(first: int) -> None:
        with requests.Session() as session:
            for index in range(first, first + 25):
                email = f"client{index}@example.com"
                response = session.post(
                    running.url + "/v1/contacts",
                    json={"group_key": "demo", "data": {"email": email, "first_name": f"N{index}"}},
                    auth=auth,
                    timeout=30,
                )
                assert response.status_code == 202, response.text
                with lock:
                    answers[response.json()["request_id"]] = email

    threads = [threading.Thread(target=client, args=(first,)) for first in range(0, 200, 25)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often, as under load: requests overlap inside the handler
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        sys.setswitchinterval(switch_interval)

    # then each accepted request queued exactly the record its client sent, under its own request id
    messages = [json.loads(message["body"]) for message in door.store.peek("ingest", limit=1000)]
    queued = {message["request_id"]: message["data"]["email"] for message in messages}
    assert len(answers) == 200
    assert queued == answers
