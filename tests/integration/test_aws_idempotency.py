"""`Idempotency-Key` on AWS: ingest as deployed (services from the environment), SQS and Powertools'
DynamoDB persistence layer on moto. The table is created from template.yaml's own properties and found
through the FORWARDER_IDEMPOTENCY_TABLE variable the template sets, so tests and template cannot drift."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from forwarder import runtime
from forwarder.flows.ingest import IDEMPOTENCY_TTL_SECONDS
from forwarder.runtime import IDEMPOTENCY_TABLE_ENV_VAR
from forwarder_local.poller import LambdaContext
from forwarder_local.stack import load_handler
from tests.conftest import REPO_ROOT, load_event
from tests.integration.test_aws_ledger import _create_table, _template

JANE = {"email": "jane@example.com", "first_name": "Jane"}
TABLE = "IdempotencyTable"


@dataclass
class Deployed:
    sqs: Any
    dynamodb: Any
    ingest_queue: str

    def send(self, data: dict[str, Any], key: str | None = "order-1001") -> dict[str, Any]:
        """API Gateway invoking the ingest function with a signed request of the client 'demo'."""
        event = copy.deepcopy(load_event("api_post_contacts.json"))
        event["body"] = json.dumps({"data": data, "group_key": "demo"})
        for headers in (event["headers"], event["multiValueHeaders"]):
            headers.pop("Idempotency-Key")
        if key is not None:
            event["headers"]["Idempotency-Key"] = key
            event["multiValueHeaders"]["Idempotency-Key"] = [key]
        response: dict[str, Any] = load_handler("ingest")(
            event, LambdaContext("IngestFunction", timeout_seconds=10)
        )
        return response

    def queued(self) -> list[dict[str, Any]]:
        """Every message on the ingest queue (received and left to reappear, so the next call sees them too)."""
        messages = self.sqs.receive_message(
            QueueUrl=self.ingest_queue, MaxNumberOfMessages=10, VisibilityTimeout=0
        ).get("Messages", [])
        return [json.loads(message["Body"]) for message in messages]

    def items(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.dynamodb.scan(TableName=TABLE)["Items"]
        return items


@pytest.fixture
def deployed(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployed]:
    """Every table and queue the template's Globals point the functions at, created in moto, and the variables
    set as deployed (so runtime.services() finds everything it requires)."""
    template = _template()
    resources = template["Resources"]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[IDEMPOTENCY_TABLE_ENV_VAR] == {"Ref": TABLE}
    dynamodb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
    for variable, value in variables.items():
        logical_id = value.get("Ref") if isinstance(value, dict) else None
        kind = resources.get(logical_id, {}).get("Type")
        if kind == "AWS::DynamoDB::Table":
            _create_table(dynamodb, logical_id, resources[logical_id]["Properties"])
            monkeypatch.setenv(variable, logical_id)
        elif kind == "AWS::SQS::Queue":
            monkeypatch.setenv(variable, sqs.create_queue(QueueName=logical_id)["QueueUrl"])
    monkeypatch.setenv("FORWARDER_RUNTIME", "aws")
    monkeypatch.setenv(
        "FORWARDER_CONFIG_PATH", str(REPO_ROOT / "config" / "examples" / "expertsender-only.yaml")
    )
    runtime.install(None)
    yield Deployed(
        sqs=sqs, dynamodb=dynamodb, ingest_queue=sqs.get_queue_url(QueueName="IngestQueue")["QueueUrl"]
    )
    runtime.install(None)


def request_id(response: dict[str, Any]) -> str:
    assert response["statusCode"] == 202, response["body"]
    return str(json.loads(response["body"])["request_id"])


def test_the_same_key_twice_is_queued_once_with_one_request_id(deployed: Deployed) -> None:
    first = request_id(deployed.send(JANE))

    again = deployed.send({"first_name": "Jane", "email": "jane@example.com"})  # attribute order differs

    assert request_id(again) == first
    assert [message["request_id"] for message in deployed.queued()] == [first]
    # the record is Powertools' shape, completed with the answer, expiring after 24 hours
    [item] = deployed.items()
    assert item["status"] == {"S": "COMPLETED"}
    assert json.loads(item["data"]["S"]) == {"group_key": "demo", "request_id": first}
    assert abs(int(item["expiration"]["N"]) - (time.time() + IDEMPOTENCY_TTL_SECONDS)) < 60
    # and it holds no personal data: the key, the client and the record are hashed
    assert "jane" not in json.dumps(item).lower() and "order-1001" not in json.dumps(item)


def test_a_different_request_under_the_key_is_refused(deployed: Deployed) -> None:
    first = request_id(deployed.send(JANE))

    refused = deployed.send({**JANE, "first_name": "Janet"})

    assert refused["statusCode"] == 422
    assert json.loads(refused["body"])["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert [message["request_id"] for message in deployed.queued()] == [first]


def test_an_expired_record_lets_the_key_be_used_anew(deployed: Deployed) -> None:
    first = request_id(deployed.send(JANE))
    # given the record's 24 hours are over (DynamoDB's TTL removes items lazily: it is still there)
    [item] = deployed.items()
    deployed.dynamodb.update_item(
        TableName=TABLE,
        Key={"id": item["id"]},
        UpdateExpression="SET expiration = :past",
        ExpressionAttributeValues={":past": {"N": str(int(time.time()) - 1)}},
    )

    later = request_id(deployed.send({**JANE, "first_name": "Janet"}))

    assert later != first
    assert sorted(message["request_id"] for message in deployed.queued()) == sorted([first, later])


def test_a_queue_failure_leaves_no_record_and_the_retry_is_queued(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given SQS refusing the first send (the queue URL points nowhere)
    monkeypatch.setenv("FORWARDER_QUEUE_URL_INGEST", deployed.ingest_queue + "-gone")
    runtime.install(None)
    assert deployed.send(JANE)["statusCode"] == 503
    assert deployed.items() == []

    # when SQS is back, the retry with the same key is queued
    monkeypatch.setenv("FORWARDER_QUEUE_URL_INGEST", deployed.ingest_queue)
    runtime.install(None)
    accepted = request_id(deployed.send(JANE))
    assert [message["request_id"] for message in deployed.queued()] == [accepted]


def test_an_unreachable_table_accepts_nothing_keyed(deployed: Deployed) -> None:
    # given DynamoDB refusing every call of the idempotency layer
    services = runtime.services()
    store = services.idempotency_store()
    assert store is not None
    with Stubber(store.client) as stubber:
        stubber.add_client_error("put_item", service_error_code="ProvisionedThroughputExceededException")

        # then a keyed request answers 503 (retry), and nothing is queued
        assert deployed.send(JANE)["statusCode"] == 503
    assert deployed.queued() == []


def test_functions_that_never_see_a_key_create_no_dynamodb_client(deployed: Deployed) -> None:
    # services() is shared by every function: the DynamoDB layer is built by the first keyed request only
    services = runtime.services()
    assert callable(services.idempotency)
    request_id(deployed.send(JANE, key=None))
    assert callable(services.idempotency)
    request_id(deployed.send(JANE))
    assert services.idempotency is not None and not callable(services.idempotency)


def test_a_missing_table_variable_is_named(deployed: Deployed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDEMPOTENCY_TABLE_ENV_VAR)
    runtime.install(None)
    with pytest.raises(RuntimeError, match=IDEMPOTENCY_TABLE_ENV_VAR):
        runtime.services()
