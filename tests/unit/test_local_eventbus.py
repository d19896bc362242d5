"""The embedded event bus plays the stack's rule: PutEvents entries become EventBridge events on the producer
events queue when they match it, and go nowhere when they do not, as on AWS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.contract import Action
from forwarder_local.eventbus import EVENTS_QUEUE, LocalEventBus, put_entry
from forwarder_local.queue import DurableQueueStore
from forwarder_local.stack import QUEUES
from tests.conftest import load_event


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DurableQueueStore]:
    built = DurableQueueStore(tmp_path / "queues.db")
    for spec in QUEUES:
        built.create_queue(spec)
    yield built
    built.close()


def test_a_producer_event_is_forwarded_as_eventbridge_delivers_it_to_sqs(store: DurableQueueStore) -> None:
    # given the README's put-events entries
    entries = load_event("eventbridge_put_events.json")
    # when they are put on the bus
    (result,) = LocalEventBus(store).put_events(entries)
    # then the event, with EventBridge's envelope around the producer's detail, is on the events queue
    assert result.matched and result.as_entry() == {"EventId": result.event_id}
    [message] = store.peek(EVENTS_QUEUE)
    event = json.loads(message["body"])
    assert set(event) == {
        "version",
        "id",
        "detail-type",
        "source",
        "account",
        "time",
        "region",
        "resources",
        "detail",
    }
    assert event["id"] == result.event_id
    assert (event["source"], event["detail-type"]) == ("forwarder.demo", "Contact Upserted")
    assert event["detail"] == json.loads(entries[0]["Detail"])


@pytest.mark.parametrize(
    "entry",
    [
        put_entry("demo", {"email": "a@b.co"}, Action.UPSERT_CONTACT, "com.example.shop"),
        {
            **put_entry("demo", {"email": "a@b.co"}, Action.UPSERT_CONTACT, "forwarder.demo"),
            "DetailType": "Order Placed",
        },
    ],
)
def test_an_event_the_rule_does_not_match_is_accepted_and_goes_nowhere(
    store: DurableQueueStore, entry: dict[str, str]
) -> None:
    (result,) = LocalEventBus(store).put_events([entry])
    assert result.event_id is not None and not result.matched
    assert store.peek(EVENTS_QUEUE) == []


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        (
            {"Source": "forwarder.demo", "DetailType": "Contact Upserted", "Detail": "{oops"},
            "MalformedDetail",
        ),
        ({"Source": "forwarder.demo", "DetailType": "Contact Upserted", "Detail": "[1]"}, "MalformedDetail"),
        ({"DetailType": "Contact Upserted", "Detail": "{}"}, "InvalidArgument"),
    ],
)
def test_an_entry_eventbridge_would_refuse_is_refused(
    store: DurableQueueStore, entry: dict[str, str], code: str
) -> None:
    (result,) = LocalEventBus(store).put_events([entry])
    assert result.event_id is None and result.as_entry()["ErrorCode"] == code
    assert store.peek(EVENTS_QUEUE) == []


def test_each_action_has_its_detail_type() -> None:
    detail_types = [put_entry("demo", {}, action, "forwarder.demo")["DetailType"] for action in Action]
    assert detail_types == ["Contact Upserted", "Contact Deleted", "Custom Event"]
