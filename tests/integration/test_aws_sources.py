"""Producers on AWS (moto): a record sent to the producer queue, and one put on the default event bus and
forwarded by the template's rule (its event pattern read from template.yaml, so the two cannot drift), are
consumed by the sources function built from the environment and reach the ingest queue; a malformed one
reaches the rejects trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from cfnlint.decode import cfn_yaml
from moto import mock_aws

from forwarder import runtime
from forwarder_local.poller import LambdaContext
from forwarder_local.stack import load_handler
from tests.conftest import REPO_ROOT, load_event

ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "FORWARDER_RUNTIME": "aws",
    "FORWARDER_CONFIG_PATH": str(REPO_ROOT / "config" / "forwarder.yaml"),
    # tables the other flows use; the sources flow never touches them
    "FORWARDER_LEDGER_TABLE": "unused-ledger",
    "FORWARDER_LOCKS_TABLE": "unused-locks",
    "FORWARDER_IDEMPOTENCY_TABLE": "unused-idempotency",
    "FORWARDER_DELIVERY_LOG_TABLE": "unused-deliveries",
}


def template_resource(name: str) -> dict[str, Any]:
    template = json.loads(json.dumps(cfn_yaml.load(str(REPO_ROOT / "template.yaml"))))
    properties: dict[str, Any] = template["Resources"][name]["Properties"]
    return properties


class Aws:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sqs = boto3.client("sqs")
        self.events = boto3.client("events")
        self.urls: dict[str, str] = {}
        for name, fifo in (
            ("ingest", True),
            ("rejects", False),
            ("producer", False),
            ("producer-events", False),
        ):
            attributes = {"FifoQueue": "true", "DeduplicationScope": "messageGroup"} if fifo else {}
            self.urls[name] = self.sqs.create_queue(
                QueueName=f"forwarder-{name}" + (".fifo" if fifo else ""), Attributes=attributes
            )["QueueUrl"]
        monkeypatch.setenv("FORWARDER_QUEUE_URL_INGEST", self.urls["ingest"])
        monkeypatch.setenv("FORWARDER_QUEUE_URL_REJECTS", self.urls["rejects"])
        monkeypatch.setenv("FORWARDER_PRODUCER_EVENTS_QUEUE_ARN", self.arn("producer-events"))
        # the template's rule, on the default bus, targeting the events queue
        rule = template_resource("ProducerEventsRule")
        self.events.put_rule(
            Name="producer-events", EventPattern=json.dumps(rule["EventPattern"]), State="ENABLED"
        )
        self.events.put_targets(
            Rule="producer-events",
            Targets=[{"Id": "ProducerEventsQueue", "Arn": self.arn("producer-events")}],
        )

    def arn(self, queue: str) -> str:
        attributes = self.sqs.get_queue_attributes(QueueUrl=self.urls[queue], AttributeNames=["QueueArn"])
        return str(attributes["Attributes"]["QueueArn"])

    def receive(self, queue: str) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.urls[queue],
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        return messages

    def run_sources(self, queue: str) -> dict[str, Any]:
        """One invocation as the SQS event source makes it: receive, invoke, delete what did not fail."""
        messages = self.receive(queue)
        assert messages, f"nothing on {queue}"
        event = {
            "Records": [
                {
                    "messageId": message["MessageId"],
                    "receiptHandle": message["ReceiptHandle"],
                    "body": message["Body"],
                    "attributes": message["Attributes"],
                    "messageAttributes": {
                        name: {
                            "stringValue": value.get("StringValue"),
                            "stringListValues": [],
                            "binaryListValues": [],
                            "dataType": value["DataType"],
                        }
                        for name, value in message.get("MessageAttributes", {}).items()
                    },
                    "md5OfBody": message["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.arn(queue),
                    "awsRegion": "eu-west-1",
                }
                for message in messages
            ]
        }
        response: dict[str, Any] = load_handler("sources")(event, LambdaContext("SourcesFunction"))
        failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
        for record in event["Records"]:
            if record["messageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.urls[queue], ReceiptHandle=record["receiptHandle"])
        return response

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(message["Body"]) for message in self.receive(queue)]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        runtime.install(None)
        yield Aws(monkeypatch)
        runtime.install(None)


def test_a_record_sent_to_the_producer_queue_reaches_the_ingest_queue(aws: Aws) -> None:
    # given a producer sending the envelope with its source and the action as message attributes
    aws.sqs.send_message(
        QueueUrl=aws.urls["producer"],
        MessageBody=json.dumps(
            {"group_key": "demo", "data": {"email": "jane@example.com", "first_name": "Jane"}}
        ),
        MessageAttributes={
            "source": {"DataType": "String", "StringValue": "demo-queue"},
            "action": {"DataType": "String", "StringValue": "upsert_contact"},
        },
    )
    # when the sources function consumes the queue
    assert aws.run_sources("producer") == {"batchItemFailures": []}
    # then the record is on the ingest queue, for validate, and gone from the producer queue
    [queued] = aws.bodies("ingest")
    assert queued["kind"] == "ingest" and queued["action"] == "upsert_contact"
    assert queued["data"] == {"email": "jane@example.com", "first_name": "Jane"}
    assert queued["client"] == "source:demo-queue"
    assert aws.receive("producer") == []


def test_an_event_put_on_the_bus_reaches_the_ingest_queue_through_the_rule(aws: Aws) -> None:
    # given the README's `aws events put-events --entries file://events/eventbridge_put_events.json`
    entries = load_event("eventbridge_put_events.json")
    # and an event of the same detail-type from a source that is not a producer's
    stranger = {**entries[0], "Source": "com.example.shop"}
    result = aws.events.put_events(Entries=[*entries, stranger])
    assert result["FailedEntryCount"] == 0
    # when the sources function consumes the queue the rule targets
    assert aws.run_sources("producer-events") == {"batchItemFailures": []}
    # then the producer's event is on the ingest queue as an upsert; the stranger's was never forwarded
    [queued] = aws.bodies("ingest")
    assert queued["action"] == "upsert_contact"
    assert queued["data"] == {"email": "eva@example.com", "first_name": "Eva", "tags": ["vip"]}
    assert queued["client"] == "source:demo-events"
    assert aws.bodies("rejects") == []


def test_a_malformed_producer_message_reaches_the_rejects_trail(aws: Aws) -> None:
    aws.sqs.send_message(
        QueueUrl=aws.urls["producer"],
        MessageBody=json.dumps(
            {"group_key": "demo", "data": {"email": "a@b.co", "address": {"city": "Oslo"}}}
        ),
        MessageAttributes={
            "source": {"DataType": "String", "StringValue": "demo-queue"},
            "action": {"DataType": "String", "StringValue": "upsert_contact"},
        },
    )
    assert aws.run_sources("producer") == {"batchItemFailures": []}
    [rejection] = aws.bodies("rejects")
    assert rejection["stage"] == "source" and rejection["source"] == "demo-queue"
    assert rejection["reason"].startswith("NESTED_ATTRIBUTE: attribute 'data.address' is an object")
    assert aws.bodies("ingest") == []
    assert aws.receive("producer") == []
