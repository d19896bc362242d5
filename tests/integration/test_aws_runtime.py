"""The AWS run mode: the handlers build their services from the environment (as deployed by template.yaml)
and move a record through SQS, Secrets Manager and DynamoDB (moto) to the three vendor sandboxes, fetching
the vendors' tokens once and storing them as new secret versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from forwarder import runtime
from forwarder_local.poller import LambdaContext
from forwarder_local.sandboxes.carecloud import BASE_PATH as CARECLOUD_BASE_PATH
from forwarder_local.sandboxes.carecloud import CareCloudSandbox
from forwarder_local.sandboxes.dmhub import DmHubSandbox
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
            # as template.yaml: the delivery queue and its DLQ are FIFO
            fifo = logical.startswith("delivery")
            urls[logical] = sqs.create_queue(
                QueueName=f"forwarder-{logical}" + (".fifo" if fifo else ""),
                Attributes={"FifoQueue": "true", "DeduplicationScope": "messageGroup"} if fifo else {},
            )["QueueUrl"]
            monkeypatch.setenv(f"FORWARDER_QUEUE_URL_{suffix}", urls[logical])
        boto3.client("dynamodb").create_table(
            TableName="forwarder-ledger",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FORWARDER_LEDGER_TABLE", "forwarder-ledger")
        boto3.client("dynamodb").create_table(
            TableName="forwarder-locks",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FORWARDER_LOCKS_TABLE", "forwarder-locks")
        boto3.client("dynamodb").create_table(
            TableName="forwarder-idempotency",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FORWARDER_IDEMPOTENCY_TABLE", "forwarder-idempotency")
        boto3.client("dynamodb").create_table(
            TableName="forwarder-deliveries",
            KeySchema=[
                {"AttributeName": "request_id", "KeyType": "HASH"},
                {"AttributeName": "delivery", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "request_id", "AttributeType": "S"},
                {"AttributeName": "delivery", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FORWARDER_DELIVERY_LOG_TABLE", "forwarder-deliveries")
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


def run(flow: str, queue_url: str) -> dict[str, Any]:
    """One invocation as the SQS event source makes it: receive, invoke, delete what did not fail."""
    event = receive_event(queue_url)
    response: dict[str, Any] = load_handler(flow)(event, LambdaContext(f"{flow}-function"))
    failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
    for record in event["Records"]:
        if record["messageId"] not in failed:
            boto3.client("sqs").delete_message(QueueUrl=queue_url, ReceiptHandle=record["receiptHandle"])
    return response


def test_a_record_travels_through_sqs_and_secrets_manager_to_three_vendors(aws: dict[str, str]) -> None:
    with (
        ExpertSenderSandbox("aws-mode-key") as expertsender,
        DmHubSandbox("cl-aws", "dmhub-secret") as dmhub,
        CareCloudSandbox(external_application_id="aws-app") as carecloud,
    ):
        # given each integration's secret in Secrets Manager (the vendors' credentials, no token yet)
        secrets = boto3.client("secretsmanager")
        for name, value in {
            "forwarder/demo/expertsender": {"api_key": "aws-mode-key", "base_url": expertsender.url},
            "forwarder/demo/dmhub": {"app_id": "cl-aws", "secret": "dmhub-secret", "base_url": dmhub.url},
            "forwarder/demo/carecloud": {
                "external_application_id": "aws-app",
                "base_url": carecloud.url + CARECLOUD_BASE_PATH,
            },
        }.items():
            secrets.create_secret(Name=name, SecretString=json.dumps(value))
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
        assert sorted(json.loads(record["body"])["integration"] for record in delivery_event["Records"]) == [
            "carecloud",
            "dmhub",
            "expertsender",
        ]
        assert load_handler("deliver")(delivery_event, LambdaContext("DeliverFunction")) == {
            "batchItemFailures": []
        }
        for record in delivery_event["Records"]:  # what the event source does with a batch that succeeded
            boto3.client("sqs").delete_message(
                QueueUrl=aws["delivery"], ReceiptHandle=record["receiptHandle"]
            )
        # then the customer is at every vendor
        customer = expertsender.find(email="jane@example.com")
        assert customer is not None and customer["firstName"] == "Jane"
        assert dmhub.find_customer("email", "jane@example.com") is not None
        assert carecloud.find(email="jane@example.com") is not None
        # and each token vendor's token was fetched once and kept as a new version of its secret
        assert dmhub.token_requests() == 1 and carecloud.token_requests() == 1
        stored = json.loads(secrets.get_secret_value(SecretId="forwarder/demo/dmhub")["SecretString"])
        assert stored["app_id"] == "cl-aws" and stored["access_token"]
        versions = secrets.list_secret_version_ids(SecretId="forwarder/demo/dmhub")["Versions"]
        assert len(versions) == 2
        # and no token lease is left behind
        assert boto3.client("dynamodb").scan(TableName="forwarder-locks")["Items"] == []
        # and a delete goes the same way and is recorded in the DynamoDB deletion ledger
        response = load_handler("ingest")(
            load_event("api_delete_contacts.json"), LambdaContext("IngestFunction")
        )
        assert response["statusCode"] == 202
        assert run("validate", aws["ingest"]) == {"batchItemFailures": []}
        assert run("deliver", aws["delivery"]) == {"batchItemFailures": []}
        assert expertsender.find(email="jane@example.com") is None
        assert dmhub.find_customer("email", "jane@example.com") is None
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
        boto3.client("sqs").send_message(
            QueueUrl=aws["delivery"],
            MessageBody=body,
            MessageGroupId="customer-jane",
            MessageDeduplicationId="d1",
        )
        event = receive_event(aws["delivery"])
        response = load_handler("deliver")(event, LambdaContext("DeliverFunction"))
        assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
        # the message's visibility was changed to the backoff: it is not receivable right away
        assert receive_event(aws["delivery"])["Records"] == []


def _status(request_id: str, user: str = "forwarder-demo") -> tuple[int, dict[str, Any]]:
    """GET /v1/requests/{request_id} as API Gateway invokes ingest for an IAM user's signed call."""
    event = load_event("api_get_request_status.json")
    event["path"] = f"/v1/requests/{request_id}"
    event["pathParameters"] = {"request_id": request_id}
    event["requestContext"]["identity"]["userArn"] = f"arn:aws:iam::000000000000:user/{user}"
    response = load_handler("ingest")(event, LambdaContext("IngestFunction"))
    return response["statusCode"], json.loads(response["body"])


def _post(data: dict[str, Any]) -> str:
    event = load_event("api_post_contacts.json")
    event["body"] = json.dumps({"data": data, "group_key": "demo"})
    del event["headers"]["Idempotency-Key"], event["multiValueHeaders"]["Idempotency-Key"]
    response = load_handler("ingest")(event, LambdaContext("IngestFunction"))
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["request_id"])


def test_a_request_is_followed_from_pending_to_delivered_on_dynamodb(
    aws: dict[str, str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given ExpertSender as the demo group key's integration, and a second client of the same group key
    config = yaml.safe_load((REPO_ROOT / "config" / "examples" / "expertsender-only.yaml").read_text())
    config["clients"].append(
        {
            "name": "other",
            "principals": ["arn:aws:iam::000000000000:user/forwarder-other"],
            "group_keys": ["demo"],
        }
    )
    (tmp_path / "forwarder.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("FORWARDER_CONFIG_PATH", str(tmp_path / "forwarder.yaml"))
    with ExpertSenderSandbox("aws-mode-key") as sandbox:
        boto3.client("secretsmanager").create_secret(
            Name="forwarder/demo/expertsender",
            SecretString=json.dumps({"api_key": "aws-mode-key", "base_url": sandbox.url}),
        )
        # when a contact and a contact without an e-mail are accepted
        good = _post({"email": "jane@example.com", "first_name": "Jane"})
        bad = _post({"first_name": "No e-mail"})
        # then before validate has seen them, they are unknown (as any other id)
        unknown = _status("5b0d2f7e-0000-4c3e-9d1a-000000000000")
        assert unknown[0] == 404 and unknown[1]["code"] == "REQUEST_NOT_FOUND"
        assert _status(good) == unknown
        # when validate has run, the good one is pending at ExpertSender, the bad one rejected with the reason
        assert run("validate", aws["ingest"]) == {"batchItemFailures": []}
        code, pending = _status(good)
        assert code == 200 and pending["status"] == "pending"
        [entry] = pending["integrations"]
        assert entry["integration"] == "expertsender" and entry["status"] == "pending"
        assert entry["attempts"] == 0
        code, rejected = _status(bad)
        assert code == 200
        [entry] = rejected["integrations"]
        assert entry["status"] == "rejected" and entry["stage"] == "validate"
        assert "does not map to ExpertSender" in entry["reason"]
        assert entry["errors"] == ["attribute 'email' is required (it maps to 'email')"]
        # and the other client of the same group key gets exactly the answer of an unknown id
        assert _status(good, user="forwarder-other") == unknown
        # when deliver has run, it is delivered after one attempt, with the times
        assert run("deliver", aws["delivery"]) == {"batchItemFailures": []}
        code, delivered = _status(good)
        assert code == 200 and delivered["status"] == "done"
        [entry] = delivered["integrations"]
        assert entry["status"] == "delivered" and entry["attempts"] == 1
        assert entry["first_attempt_at"] and entry["updated_at"] >= entry["first_attempt_at"]
        assert sandbox.find(email="jane@example.com") is not None
