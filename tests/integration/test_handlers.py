"""The four Lambda handlers in-process, fed the canonical events from events/, on real local parts:
the durable queue store, the local secret store and the ExpertSender sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder import runtime
from forwarder.ports.deliveries import DeliveryKey, DeliveryState
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.poller import LambdaContext, sqs_event
from forwarder_local.queue import DurableQueueStore, QueueSpec
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.stack import QUEUES, load_handler
from forwarder_local.stores import EmbeddedQueues, LocalDeletionLedger, LocalDeliveryLog, LocalSecretStore
from tests.conftest import REPO_ROOT, load_event

SECRET = "forwarder/demo/expertsender"
# The handlers against the ExpertSender sandbox alone (the shipped config fans out to three vendors).
EXPERTSENDER_ONLY = REPO_ROOT / "config" / "examples" / "expertsender-only.yaml"


class World:
    def __init__(self, tmp_path: Path, sandbox: ExpertSenderSandbox, max_receives: int = 5) -> None:
        self.store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        self.secrets = LocalSecretStore(tmp_path / "secrets.json")
        self.sandbox = sandbox
        settings = RuntimeSettings(
            runtime="embedded",
            config_path=str(EXPERTSENDER_ONLY),
            delivery_max_receives=max_receives,
            retry_base_seconds=1,
            retry_max_seconds=2,
        )
        self.ledger = LocalDeletionLedger(tmp_path / "ledger.db")
        self.deliveries = LocalDeliveryLog(tmp_path / "deliveries.db")
        runtime.install(
            Services(
                settings=settings,
                queues=EmbeddedQueues(self.store),
                secrets=self.secrets,
                ledger=self.ledger,
                http=requests.Session(),
                deliveries=self.deliveries,
            )
        )

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek(queue)]


@pytest.fixture
def sandbox() -> Iterator[ExpertSenderSandbox]:
    with ExpertSenderSandbox("test-key") as running:
        yield running


@pytest.fixture
def world(tmp_path: Path, sandbox: ExpertSenderSandbox) -> Iterator[World]:
    built = World(tmp_path, sandbox)
    built.secrets.put(SECRET, {"api_key": "test-key", "base_url": sandbox.url})
    yield built
    built.store.close()


def invoke(flow: str, event: dict[str, Any]) -> Any:
    return load_handler(flow)(event, LambdaContext(function_name=f"{flow}-function"))


def test_ingest_accepts_the_canonical_event_and_queues_it(world: World) -> None:
    response = invoke("ingest", load_event("api_post_contacts.json"))
    assert response["statusCode"] == 202
    request_id = json.loads(response["body"])["request_id"]
    [queued] = world.bodies("ingest")
    assert queued["request_id"] == request_id
    assert queued["client"] == "demo"
    assert queued["idempotency_key"] == "order-1001"
    assert queued["data"]["tags"] == ["vip", "newsletter"]


def test_ingest_answers_422_for_events_no_integration_of_the_group_key_takes(world: World) -> None:
    # given a group key whose only integration (ExpertSender) has no events API
    event = load_event("api_post_contacts.json")
    event["path"] = event["resource"] = "/v1/events"
    event["requestContext"]["path"] = event["requestContext"]["resourcePath"] = "/v1/events"
    # when an event is sent, then it is refused at once, saying why, and nothing is queued
    response = invoke("ingest", event)
    assert response["statusCode"] == 422
    assert "events" in json.loads(response["body"])["message"]
    assert world.bodies("ingest") == []


def test_ingest_refuses_nested_data_and_queues_nothing(world: World) -> None:
    response = invoke("ingest", load_event("api_post_contacts_nested.json"))
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["attribute"] == "data.address"
    assert world.bodies("ingest") == []


def test_ingest_refuses_a_caller_not_allowed_for_the_group_key(world: World) -> None:
    event = load_event("api_post_contacts.json")
    event["requestContext"]["identity"]["userArn"] = "arn:aws:iam::000000000000:user/someone-else"
    event["requestContext"]["identity"]["accessKey"] = "AKIASOMEONEELSE00000"
    response = invoke("ingest", event)
    assert response["statusCode"] == 403
    assert json.loads(response["body"])["code"] == "ACCESS_DENIED"


def test_ingest_accepts_a_session_of_a_role_the_client_lists(world: World) -> None:
    # given a client whose principals list the role arn:aws:iam::000000000000:role/service/forwarder-producer,
    # and API Gateway's event for a producer running with that role: identity.userArn is the assumed-role
    # session (arn:aws:sts::000000000000:assumed-role/forwarder-producer/orders-service), with no path
    event = load_event("api_post_contacts_assumed_role.json")
    assert ":assumed-role/forwarder-producer/" in event["requestContext"]["identity"]["userArn"]
    # when ingest handles it, then it is accepted and queued for the role's client
    response = invoke("ingest", event)
    assert response["statusCode"] == 202, response["body"]
    [queued] = world.bodies("ingest")
    assert queued["client"] == "demo"
    assert queued["request_id"] == json.loads(response["body"])["request_id"]


@pytest.mark.parametrize(
    "user_arn",
    [
        "arn:aws:sts::123456789012:assumed-role/forwarder-producer/orders-service",  # another account
        "arn:aws:sts::000000000000:assumed-role/forwarder-consumer/orders-service",  # another role
    ],
    ids=["other-account", "other-role"],
)
def test_ingest_refuses_a_session_of_a_role_no_client_lists(world: World, user_arn: str) -> None:
    event = load_event("api_post_contacts_assumed_role.json")
    event["requestContext"]["identity"]["userArn"] = user_arn
    response = invoke("ingest", event)
    assert response["statusCode"] == 403
    assert json.loads(response["body"])["code"] == "ACCESS_DENIED"
    assert world.bodies("ingest") == []


def test_validate_emits_a_delivery_and_rejects_the_unmappable_record(world: World) -> None:
    response = invoke("validate", load_event("sqs_ingest.json"))
    assert response == {"batchItemFailures": []}
    [delivery] = world.bodies("delivery")
    assert delivery["integration"] == "expertsender"
    assert delivery["payload"]["customer"]["email"] == "jane@example.com"
    [rejection] = world.bodies("rejects")
    assert rejection["request_id"].endswith("000000000002")
    assert rejection["errors"] == ["attribute 'email' is required (it maps to 'email')"]


def _received_delivery_event(world: World) -> dict[str, Any]:
    body = load_event("sqs_delivery.json")["Records"][0]["body"]
    world.store.send("delivery", body, group_id="customer-jane")
    messages = world.store.receive("delivery", max_messages=10)
    return sqs_event(world.store.queue_arn("delivery"), messages)


def test_deliver_sends_the_canonical_delivery(world: World) -> None:
    response = invoke("deliver", _received_delivery_event(world))
    assert response == {"batchItemFailures": []}
    customer = world.sandbox.find(email="jane@example.com")
    assert customer is not None and customer["firstName"] == "Jane"


def test_deliver_reports_a_throttled_record_and_honours_retry_after(world: World) -> None:
    # given a delivery queue whose own visibility timeout would make a failed message visible at once
    world.store.create_queue(
        QueueSpec(
            "delivery", visibility_timeout=0, max_receive_count=5, dead_letter_queue="delivery-dlq", fifo=True
        )
    )
    world.sandbox.inject(status=429, times=1, retry_after=120)
    event = _received_delivery_event(world)
    # when the vendor throttles with Retry-After: 120 (capped here by retry_max_seconds=2; backoff base is 1 s)
    response = invoke("deliver", event)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    # then the message stays hidden for the capped Retry-After, longer than the backoff alone would
    time.sleep(1.3)
    assert world.store.receive("delivery") == []
    time.sleep(1.0)
    assert len(world.store.receive("delivery")) == 1


def test_deliver_stops_before_the_invocation_runs_out_of_time(world: World) -> None:
    # given 3 deletes and an invocation with little time left (the budget keeps a 2 s margin)
    body = json.loads(load_event("sqs_delivery.json")["Records"][0]["body"])
    for index in range(3):
        delete = {
            **body,
            "action": "delete_contact",
            "operation": "delete_customer",
            "request_id": f"delete-{index}",
            "payload": {"by": "email", "value": f"p{index}@example.com"},
        }
        world.store.send("delivery", json.dumps(delete), group_id=f"customer-{index}")
    event = sqs_event(world.store.queue_arn("delivery"), world.store.receive("delivery", max_messages=10))
    context = LambdaContext(function_name="DeliverFunction", timeout_seconds=3)
    # when deliver runs
    response = load_handler("deliver")(event, context)
    # then it makes no vendor call it could not finish, and every unsent record is visible again at once,
    # with no attempt spent (the delivery log counts none), so it is never dead-lettered untried
    assert world.sandbox.requests == []
    assert len(response["batchItemFailures"]) == 3
    again = world.store.receive("delivery", max_messages=10)
    assert sorted(json.loads(message.body)["request_id"] for message in again) == [
        f"delete-{i}" for i in range(3)
    ]
    assert (
        world.deliveries.get(
            [DeliveryKey(f"delete-{i}", "expertsender", "delete_customer") for i in range(3)]
        )
        == {}
    )


def test_deliver_refuses_a_secret_outside_the_deployed_prefix(
    tmp_path: Path, sandbox: ExpertSenderSandbox
) -> None:
    world = World(tmp_path, sandbox)
    world.secrets.put(SECRET, {"api_key": "test-key", "base_url": sandbox.url})
    services = runtime.services()
    settings = services.settings.model_copy(update={"secrets_prefix": "brand-x/"})
    runtime.install(Services(settings=settings, queues=services.queues, secrets=services.secrets))
    event = _received_delivery_event(world)
    event["Records"][0]["attributes"]["ApproximateReceiveCount"] = "5"
    assert invoke("deliver", event) == {"batchItemFailures": []}
    [dead] = world.bodies("delivery-dlq")
    assert "outside the prefix 'brand-x/'" in dead["reason"]
    assert sandbox.requests == []


def test_deliver_dead_letters_once_its_retry_horizon_has_passed_with_the_reason(world: World) -> None:
    # given a delivery first tried 4 hours and a minute ago (the default horizon is 4 hours)
    event = _received_delivery_event(world)
    delivery = json.loads(event["Records"][0]["body"])
    key = DeliveryKey(delivery["request_id"], delivery["integration"], delivery["operation"])
    world.deliveries.begin([key], time.time() - 4 * 3600 - 60)
    world.deliveries.finish({key: (DeliveryState.RETRYING, "HTTP 500")}, time.time() - 60)
    # when it fails once more
    world.sandbox.inject(status=500, times=1)
    response = invoke("deliver", event)
    # then it goes to the DLQ with the vendor's reason and how long it was tried
    assert response == {"batchItemFailures": []}
    [dead] = world.bodies("delivery-dlq")
    assert dead["attempts"] == 2
    assert "500" in dead["reason"] and "gave up after 2 attempts over 4.0 h" in dead["reason"]
    assert dead["delivery"]["request_id"].endswith("000000000001")
    assert world.deliveries.get([key])[key].state is DeliveryState.DEAD_LETTERED


def test_deliver_keeps_records_when_the_secret_is_missing(
    tmp_path: Path, sandbox: ExpertSenderSandbox
) -> None:
    world = World(tmp_path, sandbox)
    event = _received_delivery_event(world)
    response = invoke("deliver", event)
    assert response["batchItemFailures"] == [{"itemIdentifier": event["Records"][0]["messageId"]}]
    assert sandbox.requests == []


def test_refresh_tokens_reports_a_missing_secret(tmp_path: Path, sandbox: ExpertSenderSandbox) -> None:
    World(tmp_path, sandbox)
    report = invoke("refresh_tokens", load_event("schedule.json"))
    assert report["checked"] == 1
    assert report["problems"] and SECRET in report["problems"][0]


def test_refresh_tokens_is_clean_when_secrets_are_present(world: World) -> None:
    report = invoke("refresh_tokens", load_event("schedule.json"))
    assert report == {"checked": 1, "refreshed": [], "problems": [], "skipped": []}


class _DeliveryQueueDown(EmbeddedQueues):
    def send(self, queue: str, messages: list[Any]) -> list[str]:
        if queue == "delivery":
            from forwarder.ports.queues import QueueError

            raise QueueError("queue 'delivery': ServiceUnavailable")
        return super().send(queue, messages)


def test_validate_reports_records_whose_deliveries_could_not_be_queued(world: World) -> None:
    # given a delivery queue that refuses messages
    services = runtime.services()
    runtime.install(
        Services(settings=services.settings, queues=_DeliveryQueueDown(world.store), secrets=services.secrets)
    )
    event = load_event("sqs_ingest.json")
    # when validate runs the batch (one mappable record, one that is rejected)
    response = invoke("validate", event)
    # then only the record that needed the delivery queue is retried; the rejection is on the trail
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert len(world.bodies("rejects")) == 1


def test_validate_sends_a_batch_of_records_together(world: World) -> None:
    event = load_event("sqs_ingest.json")
    template = event["Records"][0]
    records = []
    for index in range(25):
        record = json.loads(json.dumps(template))
        body = json.loads(record["body"])
        body["request_id"] = f"request-{index}"
        body["data"]["email"] = f"person{index}@example.com"
        record["body"], record["messageId"] = json.dumps(body), f"message-{index}"
        records.append(record)
    assert invoke("validate", {"Records": records}) == {"batchItemFailures": []}
    queued = world.bodies("delivery")
    assert sorted(item["request_id"] for item in queued) == sorted(f"request-{index}" for index in range(25))


def test_ingest_refuses_a_record_that_would_not_fit_one_queue_message(world: World) -> None:
    # given a body under the request limit whose numbers grow when re-serialised (1E15 -> 1000000000000000.0),
    # within the attribute limits (199 lists of 100 numbers)
    event = load_event("api_post_contacts.json")
    scores = ", ".join(f'"s{index}": [' + ",".join(["1E15"] * 100) + "]" for index in range(199))
    event["body"] = '{"group_key": "demo", "data": {"email": "a@b.co", ' + scores + "}}"
    assert len(event["body"]) < 240 * 1024
    # when it is sent, then it is refused with 413 and nothing is queued
    response = invoke("ingest", event)
    assert response["statusCode"] == 413
    assert "once queued" in json.loads(response["body"])["message"]
    assert world.bodies("ingest") == []


def test_a_dead_letter_redriven_to_the_delivery_queue_is_delivered(world: World) -> None:
    # given a dead letter (the envelope the DLQ holds), moved back by a DLQ redrive (replay)
    delivery = json.loads(load_event("sqs_delivery.json")["Records"][0]["body"])
    dead = {
        "kind": "dead_letter",
        "version": 1,
        "delivery": delivery,
        "reason": "HTTP 503",
        "attempts": 5,
        "dead_lettered_at": "2026-11-25T10:00:00.000Z",
    }
    world.store.send("delivery", json.dumps(dead), group_id="customer-jane")
    event = sqs_event(world.store.queue_arn("delivery"), world.store.receive("delivery"))
    # when deliver runs, then the customer is delivered, not filed as a malformed message
    assert invoke("deliver", event) == {"batchItemFailures": []}
    assert world.sandbox.find(email="jane@example.com") is not None
    assert world.bodies("rejects") == []


def test_duplicate_deletes_in_one_batch_record_the_latest(world: World) -> None:
    body = json.loads(load_event("sqs_delivery.json")["Records"][0]["body"])
    for received_at in ("2026-11-25T12:00:00.000Z", "2026-11-25T08:00:00.000Z"):
        delete = {
            **body,
            "action": "delete_contact",
            "operation": "delete_customer",
            "received_at": received_at,
            "payload": {"by": "email", "value": "jane@example.com"},
        }
        world.store.send("delivery", json.dumps(delete), group_id="customer-jane")
    invoke(
        "deliver",
        sqs_event(world.store.queue_arn("delivery"), world.store.receive("delivery", max_messages=10)),
    )
    assert world.ledger.deleted_since(
        ["demo/expertsender/email:jane@example.com"], "2026-11-25T10:00:00.000Z"
    )


def test_ingest_refuses_a_client_using_a_group_key_it_is_not_allowed(world: World, tmp_path: Path) -> None:
    # given a second group key that the demo client is not allowed to use
    config = EXPERTSENDER_ONLY.read_text()
    other = config[config.index("  demo:\n") :].replace("  demo:\n", "  other-brand:\n", 1)
    path = tmp_path / "two-brands.yaml"
    path.write_text(config + other)
    services = runtime.services()
    settings = services.settings.model_copy(update={"config_path": str(path)})
    runtime.install(Services(settings=settings, queues=services.queues, secrets=services.secrets))
    event = load_event("api_post_contacts.json")
    event["body"] = json.dumps({"data": {"email": "jane@example.com"}, "group_key": "other-brand"})
    # when the demo client sends to it, then it is refused with 403 and nothing is queued
    response = invoke("ingest", event)
    assert response["statusCode"] == 403
    assert json.loads(response["body"])["code"] == "GROUP_KEY_FORBIDDEN"
    assert world.bodies("ingest") == []


def test_validate_records_each_request_for_its_status_before_queueing_its_deliveries(world: World) -> None:
    # given the canonical batch: a contact ExpertSender takes, and one it cannot (no e-mail)
    response = invoke("validate", load_event("sqs_ingest.json"))
    assert response == {"batchItemFailures": []}
    # then each request's client and plan are in the delivery log, for the status route
    good, _ = world.deliveries.request("5b0d2f7e-1111-4c3e-9d1a-000000000001")
    bad, _ = world.deliveries.request("5b0d2f7e-1111-4c3e-9d1a-000000000002")
    assert good is not None and good.client == "demo" and good.group_key == "demo"
    assert [(item.integration, item.state) for item in good.planned] == [("expertsender", "pending")]
    assert bad is not None
    [rejected] = bad.planned
    assert rejected.state == "rejected" and "does not map" in rejected.reason
    assert rejected.errors == ("attribute 'email' is required (it maps to 'email')",)


def test_validate_retries_a_batch_whose_requests_could_not_be_recorded(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder.ports.deliveries import DeliveryLogError

    # given a delivery log that cannot be written
    def unavailable(requests: Any) -> None:
        raise DeliveryLogError("local delivery log: OperationalError")

    monkeypatch.setattr(world.deliveries, "record_requests", unavailable)
    event = load_event("sqs_ingest.json")
    # when validate handles the batch, then every record is reported failed and nothing is queued (the queue
    # hands the batch over again: no delivery goes out that the status route would not know)
    response = invoke("validate", event)
    assert {failure["itemIdentifier"] for failure in response["batchItemFailures"]} == {
        record["messageId"] for record in event["Records"]
    }
    assert world.bodies("delivery") == [] and world.bodies("rejects") == []
