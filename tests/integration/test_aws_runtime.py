"""The AWS run mode: the handlers build their services from the environment (as deployed by template.yaml)
and move a record through SQS and Secrets Manager (moto) to the ExpertSender sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from forwarder import runtime
from forwarder_local.poller import LambdaContext
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.stack import load_handler
from tests.conftest import REPO_ROOT, load_event

QUEUES = {"ingest": "INGEST", "delivery": "DELIVERY", "delivery-dlq": "DELIVERY_DLQ", "rejects": "REJECTS"}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "FORWARDER_RUNTIME": "aws",
        "FORWARDER_CONFIG_PATH": str(REPO_ROOT / "config" / "forwarder.yaml"),
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        sqs = boto3.client("sqs")
        urls = {}
        for logical, suffix in QUEUES.items():
            urls[logical] = sqs.create_queue(QueueName=f"forwarder-{logical}")["QueueUrl"]
            monkeypatch.setenv(f"FORWARDER_QUEUE_URL_{suffix}", urls[logical])
        boto3.client("dynamodb").create_table(
            TableName="forwarder-ledger",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FORWARDER_LEDGER_TABLE", "forwarder-ledger")
        runtime.install(None)
        yield urls
        runtime.install(None)


def receive_event(queue_url: str) -> dict[str, Any]:
    """Receive from SQS and shape the messages as Lambda's event source mapping does."""
    sqs = boto3.client("sqs")
    messages = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    ).get("Messages", [])
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return {
        "Records": [
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": message["Attributes"],
                "messageAttributes": {},
                "md5OfBody": message["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": "eu-west-1",
            }
            for message in messages
        ]
    }


def test_a_record_travels_through_sqs_and_secrets_manager(aws: dict[str, str]) -> None:
    with ExpertSenderSandbox("aws-mode-key") as sandbox:
        # given the integration's secret in Secrets Manager
        boto3.client("secretsmanager").create_secret(
            Name="forwarder/demo/expertsender",
            SecretString=json.dumps({"api_key": "aws-mode-key", "base_url": sandbox.url}),
        )
        # when API Gateway invokes ingest, and the SQS event sources invoke validate and deliver
        response = load_handler("ingest")(
            load_event("api_post_contacts.json"), LambdaContext("IngestFunction")
        )
        assert response["statusCode"] == 202
        ingest_event = receive_event(aws["ingest"])
        assert len(ingest_event["Records"]) == 1
        assert load_handler("validate")(ingest_event, LambdaContext("ValidateFunction")) == {
            "batchItemFailures": []
        }
        delivery_event = receive_event(aws["delivery"])
        assert json.loads(delivery_event["Records"][0]["body"])["integration"] == "expertsender"
        assert load_handler("deliver")(delivery_event, LambdaContext("DeliverFunction")) == {
            "batchItemFailures": []
        }
        # then the customer is at the vendor
        customer = sandbox.find(email="jane@example.com")
        assert customer is not None and customer["firstName"] == "Jane"
        # and a delete goes the same way and is recorded in the DynamoDB deletion ledger
        response = load_handler("ingest")(
            load_event("api_delete_contacts.json"), LambdaContext("IngestFunction")
        )
        assert response["statusCode"] == 202
        load_handler("validate")(receive_event(aws["ingest"]), LambdaContext("ValidateFunction"))
        load_handler("deliver")(receive_event(aws["delivery"]), LambdaContext("DeliverFunction"))
        assert sandbox.find(email="jane@example.com") is None
        item = boto3.client("dynamodb").get_item(
            TableName="forwarder-ledger", Key={"pk": {"S": "demo/expertsender/email:jane@example.com"}}
        )
        assert "deleted_at" in item["Item"]


def test_a_retry_hides_the_sqs_message_for_the_backoff(aws: dict[str, str]) -> None:
    with ExpertSenderSandbox("aws-mode-key") as sandbox:
        boto3.client("secretsmanager").create_secret(
            Name="forwarder/demo/expertsender",
            SecretString=json.dumps({"api_key": "aws-mode-key", "base_url": sandbox.url}),
        )
        sandbox.inject(status=503, times=1)
        # a queue whose own visibility timeout would make a failed message receivable at once
        boto3.client("sqs").set_queue_attributes(
            QueueUrl=aws["delivery"], Attributes={"VisibilityTimeout": "0"}
        )
        body = load_event("sqs_delivery.json")["Records"][0]["body"]
        boto3.client("sqs").send_message(QueueUrl=aws["delivery"], MessageBody=body)
        event = receive_event(aws["delivery"])
        response = load_handler("deliver")(event, LambdaContext("DeliverFunction"))
        assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
        # the message's visibility was changed to the backoff: it is not receivable right away
        assert receive_event(aws["delivery"])["Records"] == []
