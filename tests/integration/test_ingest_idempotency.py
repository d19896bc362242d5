"""`Idempotency-Key` on ingest, through the ingest handler, on the embedded parts: the durable queue store and
the SQLite idempotency layer (Powertools Idempotency's persistence layer of the embedded stack).

Within 24 hours the same key from the same client with the same request answers the first answer and queues
nothing; a different request under the key is refused; a key never answers 202 for a request never queued."""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from forwarder import runtime
from forwarder.contract import Action
from forwarder.flows.ingest import (
    IDEMPOTENCY_TTL_SECONDS,
    Accepted,
    Caller,
    IdempotencyKeyInProgress,
    ServiceUnavailable,
    accept,
)
from forwarder.ports.queues import OutgoingMessage, QueueError
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.idempotency import SqliteIdempotencyLayer
from forwarder_local.poller import LambdaContext
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalSecretStore
from tests.conftest import REPO_ROOT, load_event

EXPERTSENDER_ONLY = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"
DEMO = "arn:aws:iam::000000000000:user/forwarder-demo"
SHOP = "arn:aws:iam::000000000000:user/forwarder-shop"
JANE = {"email": "jane@example.com", "first_name": "Jane", "city": "Oslo"}


class Clock:
    """The idempotency layer's clock (epoch seconds): decides whether a stored record has expired."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class World:
    """The ingest handler on a durable queue store and the SQLite idempotency layer, with two clients
    ('demo' and 'shop') allowed for the group key 'demo'."""

    def __init__(self, tmp_path: Path) -> None:
        config = yaml.safe_load(EXPERTSENDER_ONLY.read_text())
        config["clients"].append({"name": "shop", "principals": [SHOP], "group_keys": ["demo"]})
        config_path = tmp_path / "forwarder.yaml"
        config_path.write_text(yaml.safe_dump(config))
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        self.clock = Clock()
        self.db_path = tmp_path / "idempotency.db"
        self.idempotency = SqliteIdempotencyLayer(self.db_path, clock=self.clock)
        self.queues = EmbeddedQueues(self.store)
        self.services = Services(
            settings=RuntimeSettings(runtime="embedded", config_path=str(config_path)),
            queues=self.queues,
            secrets=LocalSecretStore(tmp_path / "secrets.json"),
            http=requests.Session(),
            idempotency=self.idempotency,
        )
        runtime.install(self.services)
        self.handler = load_handler("ingest")

    def send(
        self,
        data: dict[str, Any],
        key: str | None = "order-1001",
        *,
        user_arn: str = DEMO,
        method: str = "POST",
        path: str = "/v1/contacts",
        group_key: str = "demo",
        timeout_seconds: float = 10,
    ) -> dict[str, Any]:
        """What API Gateway hands the ingest function for this signed request."""
        event = copy.deepcopy(load_event("api_post_contacts.json"))
        event["httpMethod"] = event["requestContext"]["httpMethod"] = method
        event["path"] = event["resource"] = event["requestContext"]["resourcePath"] = path
        event["body"] = json.dumps({"data": data, "group_key": group_key})
        event["requestContext"]["identity"]["userArn"] = user_arn
        event["requestContext"]["identity"]["accessKey"] = "AKIA" + user_arn.rsplit("/", 1)[-1].upper()
        for headers in (event["headers"], event["multiValueHeaders"]):
            headers.pop("Idempotency-Key")
        if key is not None:
            event["headers"]["Idempotency-Key"] = key
            event["multiValueHeaders"]["Idempotency-Key"] = [key]
        response: dict[str, Any] = self.handler(
            event, LambdaContext("IngestFunction", timeout_seconds=timeout_seconds)
        )
        return response

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek("ingest")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = World(tmp_path)
    yield built
    built.idempotency.close()
    built.store.close()


def body(response: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(response["body"])
    return parsed


def header(response: dict[str, Any], name: str) -> str | None:
    """A response header (API Gateway REST events answer in multiValueHeaders)."""
    values = (response.get("multiValueHeaders") or {}).get(name) or []
    return str(values[0]) if values else (response.get("headers") or {}).get(name)


def request_id(response: dict[str, Any]) -> str:
    assert response["statusCode"] == 202, response["body"]
    found = body(response)["request_id"]
    assert header(response, "X-Request-Id") == found
    return str(found)


# --------------------------------------------------------------------------------------------------
# the same request again
# --------------------------------------------------------------------------------------------------


def test_the_same_key_and_request_twice_answers_the_first_answer_and_queues_once(world: World) -> None:
    # given a contact accepted with an Idempotency-Key
    first = request_id(world.send(JANE))

    # when the client sends it again (its first answer timed out on the way back)
    second = world.send(JANE)

    # then it gets the first answer, in the body and in X-Request-Id, and nothing more is queued
    assert request_id(second) == first
    assert body(second) == {"request_id": first, "status": "accepted"}
    assert [message["request_id"] for message in world.queued()] == [first]
    assert world.queued()[0]["idempotency_key"] == "order-1001"


def test_attribute_order_does_not_make_a_request_different(world: World) -> None:
    first = request_id(world.send({"email": "jane@example.com", "first_name": "Jane", "city": "Oslo"}))

    again = world.send({"city": "Oslo", "first_name": "Jane", "email": "jane@example.com"})

    assert request_id(again) == first
    assert len(world.queued()) == 1


def test_requests_without_a_key_are_each_accepted_as_before(world: World) -> None:
    first = request_id(world.send(JANE, key=None))
    second = request_id(world.send(JANE, key=None))

    assert first != second
    assert [message["request_id"] for message in world.queued()] == [first, second]
    assert all(message["idempotency_key"] is None for message in world.queued())


# --------------------------------------------------------------------------------------------------
# a different request under the same key
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "other"),
    [
        ("other data", {"data": {**JANE, "city": "Bergen"}}),
        ("one attribute more", {"data": {**JANE, "last_name": "Doe"}}),
        ("another route", {"data": JANE, "method": "DELETE"}),
    ],
)
def test_a_different_request_under_the_same_key_is_refused_and_not_queued(
    world: World, change: str, other: dict[str, Any]
) -> None:
    # given a contact accepted with a key
    first = request_id(world.send(JANE))

    # when the same client sends something else under the same key
    response = world.send(other["data"], method=other.get("method", "POST"))

    # then it is refused, saying what to do, and only the first request is queued
    assert response["statusCode"] == 422, change
    refused = body(response)
    assert refused["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "new key" in refused["message"] and "24 hours" in refused["message"]
    assert [message["request_id"] for message in world.queued()] == [first]
    # and the key still answers the first request
    assert request_id(world.send(JANE)) == first


def test_keys_are_per_client(world: World) -> None:
    # given the client 'demo' used key order-1001
    demo = request_id(world.send(JANE))

    # when another client uses the same key, even for another request
    shop = request_id(world.send({"email": "max@example.com"}, user_arn=SHOP))

    # then both are accepted on their own, and each client's retry answers its own first answer
    assert demo != shop
    assert request_id(world.send({"email": "max@example.com"}, user_arn=SHOP)) == shop
    assert request_id(world.send(JANE)) == demo
    assert sorted((message["client"], message["request_id"]) for message in world.queued()) == sorted(
        [("demo", demo), ("shop", shop)]
    )


# --------------------------------------------------------------------------------------------------
# 24 hours
# --------------------------------------------------------------------------------------------------


def test_a_key_is_remembered_for_24_hours_then_accepted_anew(world: World) -> None:
    first = request_id(world.send(JANE))

    # a minute before the 24 hours are over, the key still answers the first answer
    world.clock.offset = IDEMPOTENCY_TTL_SECONDS - 60
    assert request_id(world.send(JANE)) == first
    assert world.send({**JANE, "city": "Bergen"})["statusCode"] == 422

    # after them, the same key is a new request, queued again
    world.clock.offset = IDEMPOTENCY_TTL_SECONDS + 60
    later = request_id(world.send({**JANE, "city": "Bergen"}))
    assert later != first
    assert [message["request_id"] for message in world.queued()] == [first, later]


def test_records_past_their_24_hours_are_removed_when_the_store_opens(world: World) -> None:
    # given two keys used, then the stack restarted more than 24 hours later
    request_id(world.send(JANE))
    request_id(world.send(JANE, key="order-1002"))
    world.idempotency.close()
    with sqlite3.connect(world.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM idempotency").fetchone() == (2,)
    later = Clock()
    later.offset = IDEMPOTENCY_TTL_SECONDS + 60
    reopened = SqliteIdempotencyLayer(world.db_path, clock=later)
    reopened.close()

    # then idempotency.db keeps none of them (as DynamoDB's TTL would remove them)
    with sqlite3.connect(world.db_path) as db:
        assert db.execute("SELECT COUNT(*) FROM idempotency").fetchone() == (0,)


# --------------------------------------------------------------------------------------------------
# nothing accepted is lost
# --------------------------------------------------------------------------------------------------


def test_a_queue_failure_does_not_leave_the_key_answering_202(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the queue refusing the first request
    send = world.queues.send
    failures = [QueueError("queue 'ingest': OperationalError")]

    def flaky_send(queue: str, messages: list[OutgoingMessage]) -> list[str]:
        if failures:
            raise failures.pop()
        return send(queue, messages)

    monkeypatch.setattr(world.queues, "send", flaky_send)

    # when the client sends with a key: 503, nothing accepted
    refused = world.send(JANE)
    assert refused["statusCode"] == 503
    assert world.queued() == []

    # then its retry with the same key is queued, not answered from a record of the failed attempt
    accepted = request_id(world.send(JANE))
    assert [message["request_id"] for message in world.queued()] == [accepted]
    assert request_id(world.send(JANE)) == accepted


class Killed(BaseException):
    """The process dying between recording the key and queueing (nothing below Lambda catches it)."""


def test_a_crash_before_queueing_blocks_the_key_only_until_the_invocation_deadline(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an invocation with 0.3 s left that dies after recording the key, before queueing
    send = world.queues.send
    crashes = [Killed()]

    def dying_send(queue: str, messages: list[OutgoingMessage]) -> list[str]:
        if crashes:
            raise crashes.pop()
        return send(queue, messages)

    monkeypatch.setattr(world.queues, "send", dying_send)
    with pytest.raises(Killed):
        world.send(JANE, timeout_seconds=0.3)
    assert world.queued() == []

    # when the client retries at once, the first attempt might still be running: 409, retry shortly
    busy = world.send(JANE)
    assert busy["statusCode"] == 409
    assert body(busy)["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert "retry" in body(busy)["message"]
    assert header(busy, "Retry-After") == "1"

    # then once that invocation's deadline has passed, the retry is accepted and queued
    time.sleep(0.4)
    accepted = request_id(world.send(JANE))
    assert [message["request_id"] for message in world.queued()] == [accepted]


def test_a_crash_after_queueing_does_not_queue_the_retry_a_second_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an invocation with 0.3 s left that queues the request and dies before recording its answer
    send = world.queues.send
    crashes = [Killed()]

    def send_then_die(queue: str, messages: list[OutgoingMessage]) -> list[str]:
        sent = send(queue, messages)
        if crashes:
            raise crashes.pop()
        return sent

    monkeypatch.setattr(world.queues, "send", send_then_die)
    with pytest.raises(Killed):
        world.send(JANE, timeout_seconds=0.3)
    [first] = world.queued()

    # when the client retries after that invocation's deadline
    time.sleep(0.4)
    retried = request_id(world.send(JANE))

    # then it is answered with the request already queued, and the queue still holds it once
    assert retried == first["request_id"]
    assert [message["request_id"] for message in world.queued()] == [first["request_id"]]
    assert request_id(world.send(JANE)) == retried


def test_the_same_key_while_the_first_request_is_being_accepted_answers_409(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a retry that arrives while the first request is being queued
    send = world.queues.send
    during: list[dict[str, Any]] = []

    def slow_send(queue: str, messages: list[OutgoingMessage]) -> list[str]:
        if not during:
            during.append(world.send(JANE))
        return send(queue, messages)

    monkeypatch.setattr(world.queues, "send", slow_send)

    first = world.send(JANE)

    # then the retry is told to come back, the first is accepted, and one message is queued
    assert during[0]["statusCode"] == 409
    assert body(during[0])["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert [message["request_id"] for message in world.queued()] == [request_id(first)]


def test_an_unavailable_idempotency_store_accepts_nothing(world: World) -> None:
    # given the idempotency store cannot be used
    world.idempotency.close()

    # then a request with a key answers 503 (retry), and nothing is queued
    assert world.send(JANE)["statusCode"] == 503
    assert world.queued() == []
    # while a request without a key is accepted as ever
    assert world.send(JANE, key=None)["statusCode"] == 202


def test_racing_callers_queue_the_request_once(world: World) -> None:
    # given 8 callers sending the same request with the same key at the same moment: 4 "processes", each with
    # its own connection to idempotency.db and 2 threads sharing it (a fresh, not yet configured layer)
    layers = [SqliteIdempotencyLayer(world.db_path) for _ in range(4)]
    callers = [layers[index % len(layers)] for index in range(8)]
    start = threading.Barrier(len(callers))
    outcomes: list[Accepted | Exception] = []

    def call(layer: SqliteIdempotencyLayer) -> None:
        services = Services(
            settings=world.services.settings,
            queues=world.queues,
            secrets=world.services.secrets,
            idempotency=layer,
        )
        start.wait()
        try:
            outcomes.append(
                accept(
                    services,
                    action=Action.UPSERT_CONTACT,
                    body=json.dumps({"data": JANE, "group_key": "demo"}),
                    content_type="application/json",
                    caller=Caller(access_key=None, user_arn=DEMO),
                    idempotency_key="race-1",
                )
            )
        except (IdempotencyKeyInProgress, ServiceUnavailable) as error:
            outcomes.append(error)

    threads = [threading.Thread(target=call, args=(layer,)) for layer in callers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for layer in layers:
        layer.close()

    # then exactly one message is queued; every caller got its request id or was told to retry shortly
    [queued] = world.queued()
    assert len(outcomes) == len(callers)
    for outcome in outcomes:
        assert isinstance(outcome, IdempotencyKeyInProgress) or (
            isinstance(outcome, Accepted) and outcome.request_id == queued["request_id"]
        ), outcome
