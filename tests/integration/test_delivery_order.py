"""Delivery you can trust, against the ExpertSender sandbox: a customer's requests take effect in the order
they were received (a delete never erases a newer upsert; an upsert never revives an erased customer), and a
delivery the vendor confirmed is never sent again.

The flows run on real local parts: the validate and deliver handlers, the FIFO delivery queue (one message
group per customer), the delivery log, the deletion ledger. ``World.validate`` and ``World.deliver`` play the
SQS event sources: they receive a batch, invoke the handler, and delete what it did not report failed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder import runtime
from forwarder.contract import Action
from forwarder.messages import IngestMessage, utcnow_iso
from forwarder.ports.deliveries import DeliveryKey, DeliveryState
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.poller import LambdaContext, sqs_event
from forwarder_local.queue import DurableQueueStore
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalDeletionLedger, LocalDeliveryLog, LocalSecretStore

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "examples" / "expertsender-only.yaml"
SECRET = "forwarder/demo/expertsender"


class World:
    def __init__(self, tmp_path: Path, sandbox: ExpertSenderSandbox) -> None:
        self.sandbox = sandbox
        # the example config, with a 1 s read timeout (10 s by default) so a "too slow" answer is quick to make
        config = tmp_path / "forwarder.yaml"
        config.write_text(
            CONFIG.read_text().replace(
                "          batch_size: 100\n", "          batch_size: 100\n          timeout_seconds: 1\n"
            )
        )
        assert "timeout_seconds: 1" in config.read_text()
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        secrets = LocalSecretStore(tmp_path / "secrets.json")
        secrets.put(SECRET, {"api_key": "test-key", "base_url": sandbox.url})
        self.deliveries = LocalDeliveryLog(tmp_path / "deliveries.db")
        self.settings = RuntimeSettings(
            runtime="embedded", config_path=str(config), retry_base_seconds=0.2, retry_max_seconds=0.4
        )
        runtime.install(
            Services(
                settings=self.settings,
                queues=EmbeddedQueues(self.store),
                secrets=secrets,
                ledger=LocalDeletionLedger(tmp_path / "ledger.db"),
                http=requests.Session(),
                deliveries=self.deliveries,
            )
        )
        self.sent = 0

    def accept(self, action: Action, data: dict[str, Any]) -> str:
        """A request as ingest queues it (validate then maps it to a delivery per integration)."""
        self.sent += 1
        message = IngestMessage(
            request_id=f"request-{self.sent}",
            action=action,
            group_key="demo",
            data=data,
            received_at=utcnow_iso(),
            client="demo",
        )
        self.store.send("ingest", message.model_dump_json(), group_id=f"ingest-{data['email']}")
        return message.request_id

    def _run(self, queue: str, flow: str, batch: int) -> dict[str, Any]:
        messages = self.store.receive(queue, max_messages=batch)
        if not messages:
            return {"batchItemFailures": []}
        response: dict[str, Any] = load_handler(flow)(
            sqs_event(self.store.queue_arn(queue), messages), LambdaContext(function_name=flow)
        )
        failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
        for message in messages:
            if message.message_id not in failed:
                self.store.delete(queue, message.receipt_handle)
        return response

    def validate(self) -> None:
        self._run("ingest", "validate", 10)

    def deliver(self) -> dict[str, Any]:
        return self._run("delivery", "deliver", 10)

    def drain(self, timeout: float = 10.0) -> None:
        """Deliver until nothing is left on the delivery queue (waiting out backoffs)."""
        deadline = time.monotonic() + timeout
        while sum(self.store.counts("delivery").values()) and time.monotonic() < deadline:
            self.deliver()
            time.sleep(0.05)
        assert sum(self.store.counts("delivery").values()) == 0, "the delivery queue did not drain"

    def calls(self) -> list[tuple[str, int]]:
        return [
            (seen.method, seen.status) for seen in self.sandbox.requests if seen.path.startswith("/customers")
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with ExpertSenderSandbox("test-key") as sandbox:
        built = World(tmp_path, sandbox)
        yield built
        built.store.close()


# --- the two reproductions of the issue ---------------------------------------------------------------------


def test_a_delete_and_a_newer_upsert_in_one_batch_end_with_the_customer_present(world: World) -> None:
    # given x exists, then the client sends DELETE x and then POST x (new data), and both reach one batch
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Old"})
    world.validate()
    world.drain()
    world.accept(Action.DELETE_CONTACT, {"email": "x@example.com"})
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "New"})
    world.validate()
    # when one deliver invocation takes them
    assert len(world.store.peek("delivery")) == 2
    world.deliver()
    world.drain()
    # then the delete was applied first, then the upsert: x is present, with the new data only
    assert world.calls()[-2:] == [("DELETE", 200), ("POST", 201)]
    customer = world.sandbox.find(email="x@example.com")
    assert customer is not None and customer["firstName"] == "New"


def test_a_retrying_delete_never_erases_a_newer_upsert(world: World) -> None:
    # given x exists, and the client's DELETE x meets a 503
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Old"})
    world.validate()
    world.drain()
    world.sandbox.inject(status=503, times=1, method="DELETE")
    world.accept(Action.DELETE_CONTACT, {"email": "x@example.com"})
    world.validate()
    world.deliver()
    assert world.calls()[-1] == ("DELETE", 503)
    # when the client then sends POST x (v2), while the delete waits out its backoff
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "V2"})
    world.validate()
    world.drain()
    # then the upsert waited for the delete: x ends present with v2 (3 of 3 erased before this change)
    assert world.calls()[-3:] == [("DELETE", 503), ("DELETE", 200), ("POST", 201)]
    customer = world.sandbox.find(email="x@example.com")
    assert customer is not None and customer["firstName"] == "V2"


def replay_dead_letters(world: World) -> None:
    """What ``forwarder replay dead-letters`` (an SQS DLQ redrive on AWS) does: back into their group."""
    for message in world.store.receive("delivery-dlq", max_messages=10):
        world.store.send(
            "delivery", message.body, group_id=message.group_id, dedup_id=f"replay-{message.message_id}"
        )
        world.store.delete("delivery-dlq", message.receipt_handle)


def test_a_replayed_dead_delete_never_erases_a_newer_upsert(world: World) -> None:
    # given x exists, and the client's DELETE x failed until its retries were over (dead-lettered)
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Old"})
    world.validate()
    world.drain()
    world.settings.retry_horizon_seconds = 0.3
    world.sandbox.inject(status=503, times=1000, method="DELETE")
    world.accept(Action.DELETE_CONTACT, {"email": "x@example.com"})
    world.validate()
    world.drain()
    world.sandbox.clear_faults()
    assert len(world.store.peek("delivery-dlq")) == 1
    # and then the client's POST x (v2) was delivered
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "V2"})
    world.validate()
    world.drain()
    # when an operator replays the dead-lettered delete
    replay_dead_letters(world)
    world.drain()
    # then it is not sent: the customer's newer upsert stands, as the client's order says
    assert world.calls()[-1] == ("POST", 201)
    customer = world.sandbox.find(email="x@example.com")
    assert customer is not None and customer["firstName"] == "V2"
    assert world.store.peek("delivery-dlq") == []


def test_a_replayed_dead_delete_with_no_newer_upsert_erases_the_customer(world: World) -> None:
    # given x's DELETE dead-lettered, and nothing newer for x
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Old"})
    world.validate()
    world.drain()
    world.settings.retry_horizon_seconds = 0.3
    world.sandbox.inject(status=503, times=1000, method="DELETE")
    world.accept(Action.DELETE_CONTACT, {"email": "x@example.com"})
    world.validate()
    world.drain()
    world.sandbox.clear_faults()
    # when it is replayed, then it is sent and x is erased
    replay_dead_letters(world)
    world.drain()
    assert world.calls()[-1] == ("DELETE", 200)
    assert world.sandbox.find(email="x@example.com") is None


def test_an_upsert_then_a_delete_end_with_the_customer_erased(world: World) -> None:
    world.sandbox.inject(status=503, times=2, method="POST")
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane"})
    world.accept(Action.DELETE_CONTACT, {"email": "x@example.com"})
    world.validate()
    world.drain()
    assert world.calls() == [("POST", 503), ("POST", 503), ("POST", 201), ("DELETE", 200)]
    assert world.sandbox.find(email="x@example.com") is None


def test_one_customers_backoff_does_not_delay_another(world: World) -> None:
    # given jane's upsert throttled for 30 s, and john's upsert behind it in the queue
    world.sandbox.inject(status=429, times=1, retry_after=30, method="POST")
    world.accept(Action.UPSERT_CONTACT, {"email": "jane@example.com"})
    world.validate()
    world.deliver()
    world.accept(Action.UPSERT_CONTACT, {"email": "john@example.com"})
    world.validate()
    # when deliver runs again at once
    world.deliver()
    # then john is delivered while jane waits
    assert world.sandbox.find(email="john@example.com") is not None
    assert world.sandbox.find(email="jane@example.com") is None


# --- exactly-once effects -----------------------------------------------------------------------------------


def test_a_redelivered_message_the_vendor_confirmed_is_not_sent_again(world: World) -> None:
    # given a delivery the vendor confirmed, whose queue acknowledgement was lost (a crash before the delete)
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane"})
    world.validate()
    [message] = world.store.receive("delivery")
    event = sqs_event(world.store.queue_arn("delivery"), [message])
    load_handler("deliver")(event, LambdaContext(function_name="deliver"))
    assert world.calls() == [("POST", 201)]
    world.store.change_visibility("delivery", message.receipt_handle, 0)
    # when the queue hands it over again
    response = world.deliver()
    # then it is acknowledged without a second request to the vendor
    assert response == {"batchItemFailures": []}
    assert world.calls() == [("POST", 201)]
    assert sum(world.store.counts("delivery").values()) == 0


def test_an_upsert_applied_but_unanswered_is_read_back_not_sent_again(world: World) -> None:
    # given an upsert the vendor applied, whose answer never came (a read timeout, a crash): the log says
    # it was on its way
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane", "city": "Oslo"})
    world.validate()
    [message] = world.store.peek("delivery")
    delivery = json.loads(message["body"])
    requests.post(
        world.sandbox.url + "/customers",
        json={"mode": "AddOrUpdate", "matchBy": "Email", "data": [delivery["payload"]["customer"]]},
        headers={"x-api-key": "test-key"},
        timeout=5,
    )
    key = DeliveryKey(delivery["request_id"], "expertsender", "upsert_customer")
    world.deliveries.begin([key], time.time())
    # when the delivery is tried again
    world.drain()
    # then the vendor is asked whether it holds the upsert (it does), and the upsert is not sent twice
    assert world.calls() == [("POST", 201), ("GET", 200)]
    assert world.deliveries.get([key])[key].state is DeliveryState.DELIVERED


def test_an_unanswered_upsert_whose_read_back_fails_waits_and_is_not_sent_blind(world: World) -> None:
    # given an upsert the vendor applied though no answer came, and the vendor then fails the read back once
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane"})
    world.validate()
    [message] = world.store.peek("delivery")
    delivery = json.loads(message["body"])
    requests.post(
        world.sandbox.url + "/customers",
        json={"mode": "AddOrUpdate", "matchBy": "Email", "data": [delivery["payload"]["customer"]]},
        headers={"x-api-key": "test-key"},
        timeout=5,
    )
    key = DeliveryKey(delivery["request_id"], "expertsender", "upsert_customer")
    world.deliveries.begin([key], time.time())
    world.sandbox.inject(status=503, method="GET", path_prefix="/customers")
    # when it is tried: the read fails, so it waits (still "sending"), the upsert not sent again blind
    response = world.deliver()
    assert len(response["batchItemFailures"]) == 1
    assert world.calls() == [("POST", 201), ("GET", 503)]
    assert world.deliveries.get([key])[key].state is DeliveryState.SENDING
    # then the next attempt reads it back again, finds it applied, and never posts it twice
    world.drain()
    assert world.calls() == [("POST", 201), ("GET", 503), ("GET", 200)]
    assert world.deliveries.get([key])[key].state is DeliveryState.DELIVERED


def test_an_upsert_unanswered_and_not_applied_is_sent_again(world: World) -> None:
    # given an upsert whose request never reached the vendor, though the log says it was on its way
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane"})
    world.validate()
    [message] = world.store.peek("delivery")
    delivery = json.loads(message["body"])
    key = DeliveryKey(delivery["request_id"], "expertsender", "upsert_customer")
    world.deliveries.begin([key], time.time())
    # when it is tried again, then the read back finds nothing and it is sent
    world.drain()
    assert world.calls() == [("GET", 404), ("POST", 201)]
    assert world.sandbox.find(email="x@example.com") is not None


def test_an_upsert_whose_answer_timed_out_is_read_back_not_sent_twice(world: World) -> None:
    # given the vendor applies an upsert but answers after the client's read timeout (1 s here)
    world.accept(Action.UPSERT_CONTACT, {"email": "x@example.com", "first_name": "Jane"})
    world.validate()
    world.sandbox.set_latency(1.5)
    response = world.deliver()
    world.sandbox.set_latency(0.0)
    assert len(response["batchItemFailures"]) == 1
    deadline = time.monotonic() + 5
    while world.sandbox.find(email="x@example.com") is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the vendor finishes applying it after the client gave up
    # when it is tried again
    world.drain()
    # then the second attempt read the customer back (it was applied) and did not post it again
    assert [method for method, _ in world.calls()] == ["POST", "GET"]
    assert world.sandbox.find(email="x@example.com") is not None
