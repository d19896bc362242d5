"""The sources handler in-process on the canonical producer events (events/sqs_producer.json,
events/eventbridge_producer.json): producer messages become ingest messages with ingest's checks; what a check
refuses lands on the rejects trail with its reason; what fails for a moment is retried."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forwarder import runtime
from forwarder.ports.queues import OutgoingMessage, QueueError, QueuePort
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.poller import LambdaContext
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalSecretStore
from tests.conftest import REPO_ROOT, load_event

SHIPPED = REPO_ROOT / "config" / "forwarder.yaml"
PRODUCER_EVENT = load_event("sqs_producer.json")
BUS_EVENT = load_event("eventbridge_producer.json")
EVENTS_QUEUE_ARN = BUS_EVENT["Records"][0]["eventSourceARN"]


class FailingQueues(QueuePort):
    """The embedded queues, with one queue down."""

    def __init__(self, inner: QueuePort, down: str) -> None:
        self.inner, self.down = inner, down

    def send(self, queue: str, messages: list[OutgoingMessage]) -> list[str]:
        if queue == self.down:
            raise QueueError(f"queue '{queue}' is down")
        return self.inner.send(queue, messages)

    def change_visibility(self, queue: str, receipt_handle: str, seconds: int) -> None:
        self.inner.change_visibility(queue, receipt_handle, seconds)


class World:
    def __init__(self, tmp_path: Path, config: dict[str, Any] | None = None, **settings: Any) -> None:
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        config_path = SHIPPED
        if config is not None:
            config_path = tmp_path / "forwarder.yaml"
            config_path.write_text(yaml.safe_dump(config))
        self.queues: QueuePort = EmbeddedQueues(self.store)
        self.services = Services(
            settings=RuntimeSettings(
                runtime="embedded",
                config_path=str(config_path),
                producer_events_queue_arn=EVENTS_QUEUE_ARN,
                **settings,
            ),
            queues=self.queues,
            secrets=LocalSecretStore(tmp_path / "secrets.json"),
        )
        runtime.install(self.services)

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek(queue)]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = World(tmp_path)
    yield built
    built.store.close()


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = load_handler("sources")(event, LambdaContext(function_name="SourcesFunction"))
    return response


def shipped_config() -> dict[str, Any]:
    loaded = yaml.safe_load(SHIPPED.read_text())
    assert isinstance(loaded, dict)
    return loaded


def producer_message(body: Any, **attributes: str) -> dict[str, Any]:
    """The canonical SQS producer event with one record: this body and these message attributes."""
    event = copy.deepcopy(PRODUCER_EVENT)
    record = event["Records"][0]
    event["Records"] = [record]
    record["body"] = body if isinstance(body, str) else json.dumps(body)
    record["messageAttributes"] = {
        name: {"stringValue": value, "stringListValues": [], "binaryListValues": [], "dataType": "String"}
        for name, value in attributes.items()
    }
    return event


def bus_event(**changes: Any) -> dict[str, Any]:
    """The canonical EventBridge producer event with one record whose event has these fields changed."""
    event = copy.deepcopy(BUS_EVENT)
    record = event["Records"][0]
    event["Records"] = [record]
    body = {**json.loads(record["body"]), **changes}
    record["body"] = json.dumps(body)
    return event


# --- accepted ------------------------------------------------------------------------------------------------


def test_sqs_producer_messages_reach_the_ingest_queue_as_api_requests_would(world: World) -> None:
    # given the canonical batch: an upsert and a delete from the demo-queue producer
    # when the sources function handles it
    response = invoke(PRODUCER_EVENT)
    # then nothing is retried, and both records are queued for validate with their actions and data
    assert response == {"batchItemFailures": []}
    queued = world.bodies("ingest")
    assert [(body["action"], body["data"]["email"]) for body in queued] == [
        ("upsert_contact", "jane@example.com"),
        ("delete_contact", "old@example.com"),
    ]
    assert {body["client"] for body in queued} == {"source:demo-queue"}
    assert {body["group_key"] for body in queued} == {"demo"}
    assert world.bodies("rejects") == []
    # in the customer's FIFO group, as ingest puts an API request
    groups = {message["group_id"] for message in world.store.peek("ingest")}
    assert len(groups) == 2 and None not in groups


def test_eventbridge_events_reach_the_ingest_queue_by_their_detail_type(world: World) -> None:
    response = invoke(BUS_EVENT)
    assert response == {"batchItemFailures": []}
    queued = world.bodies("ingest")
    assert [body["action"] for body in queued] == ["upsert_contact", "event"]
    assert queued[0]["data"] == {"email": "eva@example.com", "first_name": "Eva", "tags": ["vip"]}
    assert {body["client"] for body in queued} == {"source:demo-events"}


def test_a_redelivered_message_is_queued_once(world: World) -> None:
    # given a producer message handled, then delivered again by SQS (at least once)
    invoke(producer_message({"group_key": "demo", "data": {"email": "a@example.com"}}, **_UPSERT))
    invoke(producer_message({"group_key": "demo", "data": {"email": "a@example.com"}}, **_UPSERT))
    # then it is queued once: its request id comes from the message, and the FIFO queue drops the repeat
    assert len(world.bodies("ingest")) == 1
    # and an EventBridge event delivered twice (a new SQS message each time) keeps its event id's request id
    invoke(bus_event())
    again = bus_event()
    again["Records"][0]["messageId"] = "another-sqs-message-id"
    invoke(again)
    assert len(world.bodies("ingest")) == 2


# --- refused for good: the rejects trail ------------------------------------------------------------------------

_UPSERT = {"source": "demo-queue", "action": "upsert_contact"}
_RECORD = {"group_key": "demo", "data": {"email": "jane@example.com"}}


@pytest.mark.parametrize(
    ("case", "event", "code"),
    [
        ("not JSON", producer_message("{oops", **_UPSERT), "INVALID_JSON"),
        ("not an envelope", producer_message(["a"], **_UPSERT), "INVALID_ENVELOPE"),
        (
            "nested data",
            producer_message({"group_key": "demo", "data": {"address": {"city": "Oslo"}}}, **_UPSERT),
            "NESTED_ATTRIBUTE",
        ),
        (
            "unknown group key",
            producer_message({**_RECORD, "group_key": "nope"}, **_UPSERT),
            "UNKNOWN_GROUP_KEY",
        ),
        ("no action", producer_message(_RECORD, source="demo-queue"), "MISSING_ACTION"),
        ("unknown action", producer_message(_RECORD, source="demo-queue", action="upsert"), "INVALID_ACTION"),
        ("no source", producer_message(_RECORD, action="upsert_contact"), "MISSING_SOURCE"),
        (
            "unknown source",
            producer_message(_RECORD, source="someone", action="upsert_contact"),
            "UNKNOWN_SOURCE",
        ),
        (
            "an eventbridge source named on sqs",
            producer_message(_RECORD, source="demo-events", action="upsert_contact"),
            "UNKNOWN_SOURCE",
        ),
        ("unknown detail-type", bus_event(**{"detail-type": "Contact Upsert"}), "UNKNOWN_DETAIL_TYPE"),
        ("unknown event source", bus_event(source="forwarder.other"), "UNKNOWN_SOURCE"),
        (
            "not an event",
            producer_message(_RECORD)
            | {"Records": [{**producer_message(_RECORD)["Records"][0], "eventSourceARN": EVENTS_QUEUE_ARN}]},
            "INVALID_EVENT",
        ),
        (
            "nested detail",
            bus_event(detail={"group_key": "demo", "data": {"a": {"b": 1}}}),
            "NESTED_ATTRIBUTE",
        ),
        (
            "a lone surrogate",
            bus_event(detail={"group_key": "demo", "data": {"name": "\ud800"}}),
            "INVALID_TEXT",
        ),
        (
            "NaN in the detail",
            bus_event(detail={"group_key": "demo", "data": {"n": float("nan")}}),
            "INVALID_JSON",
        ),
    ],
)
def test_a_malformed_message_is_refused_for_good_with_its_reason(
    world: World, case: str, event: dict[str, Any], code: str
) -> None:
    # when a message that fails a check is handled
    response = invoke(event)
    # then it is not retried (SQS deletes it), nothing is queued for validate...
    assert response == {"batchItemFailures": []}, case
    assert world.bodies("ingest") == []
    # ...and the rejects trail holds it with the reason, stage "source"
    [rejection] = world.bodies("rejects")
    assert rejection["kind"] == "rejection" and rejection["stage"] == "source"
    assert rejection["reason"].startswith(f"{code}: "), rejection["reason"]
    assert rejection["request_id"]


def test_a_producer_writing_to_a_group_key_it_may_not_use_is_refused(tmp_path: Path) -> None:
    # given two group keys, and the demo-queue producer allowed only one of them
    config = shipped_config()
    config["group_keys"]["other"] = copy.deepcopy(config["group_keys"]["demo"])
    world = World(tmp_path, config)
    # when it writes to the other one
    response = invoke(producer_message({**_RECORD, "group_key": "other"}, **_UPSERT))
    # then the record is refused, never queued, with the reason and the record (to fix and send again)
    assert response == {"batchItemFailures": []}
    assert world.bodies("ingest") == []
    [rejection] = world.bodies("rejects")
    assert rejection["reason"] == "GROUP_KEY_FORBIDDEN: source 'demo-queue' may not use group key 'other'"
    assert rejection["source"] == "demo-queue" and rejection["group_key"] == "other"
    assert rejection["record"] == {"email": "jane@example.com"}
    world.store.close()


def test_a_source_pinned_to_a_queue_or_an_account_is_refused_elsewhere(tmp_path: Path) -> None:
    config = shipped_config()
    config["sources"][0]["queue_arn"] = "arn:aws:sqs:eu-west-1:123456789012:brand-queue"
    config["sources"][1]["account"] = "999999999999"
    world = World(tmp_path, config)
    assert invoke(PRODUCER_EVENT) == {"batchItemFailures": []}
    assert invoke(BUS_EVENT) == {"batchItemFailures": []}
    assert world.bodies("ingest") == []
    reasons = [rejection["reason"].split(":")[0] for rejection in world.bodies("rejects")]
    assert reasons == ["SOURCE_QUEUE_FORBIDDEN"] * 2 + ["SOURCE_ACCOUNT_FORBIDDEN"] * 2
    world.store.close()


def test_a_record_too_big_once_queued_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path, max_body_bytes=4096, max_message_bytes=1024)
    response = invoke(
        producer_message({"group_key": "demo", "data": {"email": "a@b.co", "note": "x" * 1500}}, **_UPSERT)
    )
    assert response == {"batchItemFailures": []}
    [rejection] = world.bodies("rejects")
    assert rejection["reason"].startswith("BODY_TOO_LARGE: ")
    world.store.close()


# --- failing for a moment: retried ----------------------------------------------------------------------------


@pytest.mark.parametrize("down", ["ingest", "rejects"])
def test_a_message_that_cannot_be_queued_is_retried_and_its_neighbours_are_not(
    world: World, down: str
) -> None:
    # given the queue a message goes to is down
    world.services.queues = FailingQueues(world.queues, down)
    event = copy.deepcopy(PRODUCER_EVENT)
    event["Records"][1] = producer_message("{oops", **_UPSERT)["Records"][0] | {"messageId": "malformed"}
    # when a batch of a good message and a malformed one is handled
    response = invoke(event)
    # then only the message whose queue is down is reported failed (SQS retries it; redrive ends it)
    failed = "malformed" if down == "rejects" else event["Records"][0]["messageId"]
    assert response == {"batchItemFailures": [{"itemIdentifier": failed}]}
    other = "ingest" if down == "rejects" else "rejects"
    assert len(world.bodies(other)) == 1
