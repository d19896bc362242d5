"""Rejections and dead letters always fit a queue message (SQS: 256 KiB), without losing why they failed."""

from __future__ import annotations

import json

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from forwarder.config import load_config_text
from forwarder.contract import Action
from forwarder.flows.validate import outgoing
from forwarder.messages import DeadLetter, DeliveryMessage, IngestMessage, Rejection
from forwarder.ports.queues import MAX_MESSAGE_BYTES

CONFIG = """
version: 1
clients: [{name: brand, principals: [AKIDEXAMPLEBRAND], group_keys: [brand]}]
group_keys:
  brand:
    integrations:
      - name: dmhub
        type: dmhub
        secret: forwarder/brand/dmhub
        contacts:
          mapping:
            - {kind: string, from: email, to: email, required: true}
            - {kind: list, from: phones, to: lists, transforms: [phone]}
"""


def test_a_rejection_with_more_errors_than_a_queue_message_holds_still_fits_and_keeps_its_reason() -> None:
    # given a 120 KB record whose every list item fails its transform: 20,000 error lines (over 1 MB)
    config = load_config_text(CONFIG)
    message = IngestMessage(
        request_id="r-1",
        action=Action.UPSERT_CONTACT,
        group_key="brand",
        data={"email": "jane@example.com", "phones": ["bad"] * 20_000},
        received_at="2026-11-28T10:00:00.000Z",
        client="brand",
    )
    record = SQSRecord({"messageId": "m-1", "body": message.model_dump_json(), "attributes": {}})
    assert len(record.body) < MAX_MESSAGE_BYTES
    # when validate rejects it
    deliveries, rejections = outgoing(config, record)
    # then its rejection fits one queue message, says why, and says the record was cut
    assert deliveries == []
    (sent,) = rejections
    assert sent.size <= MAX_MESSAGE_BYTES
    document = json.loads(sent.body)
    assert document["reason"] == "the record does not map to Convertlab DM Hub (upsert_customer)"
    assert document["errors"][0] == "attribute 'phones[0]': 'bad' is not a phone number"
    assert document["record_truncated"] is True
    assert document["record"]["attributes"] == ["email", "phones"]
    assert document["record"]["bytes"] > 120_000


def test_a_rejection_that_fits_is_left_whole() -> None:
    rejection = Rejection(request_id="r", group_key="g", stage="validate", reason="why", record={"a": "b"})
    assert rejection.fitted(MAX_MESSAGE_BYTES) is rejection


def test_a_dead_letter_keeps_its_delivery_whole_and_cuts_an_overlong_reason() -> None:
    delivery = DeliveryMessage(
        request_id="r",
        group_key="g",
        action=Action.UPSERT_CONTACT,
        integration="es",
        integration_type="expertsender",
        operation="upsert_customer",
        payload={"customer": {"email": "a@b.co", "notes": "n" * 250_000}},
        received_at="2026-11-28T10:00:00.000Z",
    )
    dead = DeadLetter(delivery=delivery, reason="upstream said: " + "x" * 20_000, attempts=5)
    fitted = dead.fitted(MAX_MESSAGE_BYTES)
    assert len(fitted.model_dump_json().encode()) <= MAX_MESSAGE_BYTES
    assert fitted.delivery == delivery  # still replayable
    assert fitted.reason.startswith("upstream said: ")
