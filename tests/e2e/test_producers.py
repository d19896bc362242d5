"""End to end on the embedded stack: records sent as producers send them (`forwarder send --via sqs`, a message
on the producer queue; `--via eventbridge`, an event on the bus, forwarded by the rule) are delivered to the
vendor sandboxes; a malformed one lands on the rejects trail with its reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from forwarder_local.cli import main
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.stack import DEFAULT_CONFIG, EmbeddedStack, StackOptions
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    options = StackOptions(
        state_dir=tmp_path / "state", port=0, sandbox_port=0, retry_base_seconds=0.2, poll_window_seconds=0.05
    )
    with EmbeddedStack(options) as running:
        yield running


def send(stack: EmbeddedStack, *args: str) -> Any:
    state = str(stack.options.state_dir)
    result = CliRunner().invoke(
        main, ["send", *args, "-g", "demo", "--state-dir", state, "--config", str(DEFAULT_CONFIG)]
    )
    return result


def test_records_sent_through_sqs_and_eventbridge_are_delivered_and_a_malformed_one_is_refused(
    stack: EmbeddedStack,
) -> None:
    assert stack.sandbox is not None
    dmhub = stack.sandboxes["dmhub"]
    assert isinstance(dmhub, DmHubSandbox)
    # when a contact is sent as an SQS producer (the shipped config's demo-queue source)...
    by_queue = send(
        stack, "contacts", "--via", "sqs", "--set", "email=queue@example.com", "--set", "first_name=Quinn"
    )
    assert by_queue.exit_code == 0, by_queue.output
    assert "source 'demo-queue', action upsert_contact" in by_queue.output
    # ...and one as an EventBridge producer (event source forwarder.demo), plus an event for DM Hub
    by_bus = send(
        stack, "contacts", "--via", "eventbridge", "--set", "email=bus@example.com", "--set", "first_name=Bea"
    )
    assert by_bus.exit_code == 0, by_bus.output
    assert json.loads(by_bus.output)["FailedEntryCount"] == 0
    event = send(
        stack, "event", "--via", "eventbridge", "--set", "email=bus@example.com", "--set", "event=purchase"
    )
    assert event.exit_code == 0, event.output

    # then both customers reach the vendors, as a signed API call's would
    queued = wait_for(lambda: stack.sandbox.find(email="queue@example.com"), what="the SQS producer's record")
    assert queued["firstName"] == "Quinn"
    bused = wait_for(
        lambda: stack.sandbox.find(email="bus@example.com"), what="the EventBridge producer's record"
    )
    assert bused["firstName"] == "Bea"
    wait_for(lambda: dmhub.find_customer("email", "queue@example.com"), what="the SQS record at DM Hub")
    wait_for(
        lambda: [e for e in dmhub.events() if e.get("event") == "purchase"],
        what="the EventBridge event at DM Hub",
    )

    # when a malformed record (nested data: a list in a list) is sent through the producer queue
    malformed = send(
        stack,
        "contacts",
        "--via",
        "sqs",
        "--set",
        "email=bad@example.com",
        "--set",
        'tags=[["vip"]]',
    )
    assert malformed.exit_code == 0, malformed.output
    # then it is not delivered, and `forwarder trail rejects` names the producer and the reason
    wait_for(lambda: stack.store.peek("rejects"), what="the rejection")
    listed = CliRunner().invoke(main, ["trail", "rejects", "--state-dir", str(stack.options.state_dir)])
    assert "[source demo-queue]  NESTED_ATTRIBUTE: attribute 'data.tags[0]' is a list" in listed.output
    assert stack.sandbox.find(email="bad@example.com") is None
    # and nothing was left behind on the producer queues, nor dead-lettered (the poller deletes a message once
    # the handler returned, just after the rejection was written)
    for queue in ("producer", "producer-events", "producer-dlq", "producer-events-dlq"):
        wait_for(
            lambda queue=queue: sum(stack.store.counts(queue).values()) == 0, what=f"an empty {queue} queue"
        )
    assert stack.errors == []


def test_an_event_the_rule_does_not_match_goes_nowhere(stack: EmbeddedStack) -> None:
    # given an event whose source is not a producer's (the rule forwards forwarder.* only)
    result = send(
        stack,
        "contacts",
        "--via",
        "eventbridge",
        "--source",
        "com.example.shop",
        "--set",
        "email=x@example.com",
    )
    # then the bus takes it (as EventBridge would) and says no rule forwarded it; nothing is queued or rejected
    assert result.exit_code == 0, result.output
    assert "does not match source 'com.example.shop'" in result.output
    assert sum(stack.store.counts("producer-events").values()) == 0
    assert stack.store.peek("rejects") == []


def test_a_producer_writing_to_a_group_key_of_its_own_choosing_is_refused(stack: EmbeddedStack) -> None:
    # given a producer the config does not know
    result = send(stack, "contacts", "--via", "sqs", "--source", "intruder", "--set", "email=i@example.com")
    assert result.exit_code == 0, result.output
    # then its record is refused, with the reason
    wait_for(lambda: stack.store.peek("rejects"), what="the rejection")
    [rejection] = [json.loads(message["body"]) for message in stack.store.peek("rejects")]
    assert rejection["reason"] == "UNKNOWN_SOURCE: no sqs source named 'intruder' is configured"
    assert stack.sandbox is not None and stack.sandbox.find(email="i@example.com") is None


def test_producer_dead_letters_are_listed_with_their_producer(tmp_path: Path) -> None:
    from forwarder_local.queue import DurableQueueStore
    from forwarder_local.stack import QUEUES

    # given a producer message the sources handler could not queue in 5 receives (moved by the redrive)
    store = DurableQueueStore(tmp_path / "queues.db")
    for spec in QUEUES:
        store.create_queue(spec)
    body = json.dumps({"group_key": "demo", "data": {"email": "late@example.com"}})
    store.send("producer-dlq", body, {"source": "demo-queue", "action": "upsert_contact"})
    store.close()
    # when the trail is listed, then it names the producer and the action, and the data only on request
    listed = CliRunner().invoke(main, ["trail", "producer-dead-letters", "--state-dir", str(tmp_path)])
    assert listed.exit_code == 0, listed.output
    assert (
        "[producer-dlq] not queued in 5 receives (a queue was down): source demo-queue, action upsert_contact"
        in (listed.output)
    )
    assert "late@example.com" not in listed.output
    detailed = CliRunner().invoke(
        main, ["trail", "producer-dead-letters", "--state-dir", str(tmp_path), "--show-data"]
    )
    assert "late@example.com" in detailed.output
