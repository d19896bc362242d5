"""The AWS adapters against moto's SQS and Secrets Manager.

The queues are created from template.yaml's own properties (visibility timeout, retention, redrive
policy with the real DLQ ARN), and the adapter finds them through the same FORWARDER_QUEUE_URL_*
variables the template sets, so these tests and the template cannot drift apart.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cfnlint.decode import cfn_yaml

from forwarder.adapters.aws import SecretsManagerSecrets, SqsQueues
from forwarder.ports.queues import MAX_MESSAGE_BYTES as SQS_BATCH_MAX_BYTES
from forwarder.ports.queues import OutgoingMessage, QueueError
from forwarder.ports.secrets import SecretNotFoundError, SecretStoreError

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REGION = "eu-west-1"

# template property -> SQS attribute, for the properties the queues in template.yaml use
QUEUE_ATTRIBUTES = {
    "VisibilityTimeout": "VisibilityTimeout",
    "MessageRetentionPeriod": "MessageRetentionPeriod",
    "SqsManagedSseEnabled": "SqsManagedSseEnabled",
    "DelaySeconds": "DelaySeconds",
    "ReceiveMessageWaitTimeSeconds": "ReceiveMessageWaitTimeSeconds",
    "MaximumMessageSize": "MaximumMessageSize",
    "FifoQueue": "FifoQueue",
    "ContentBasedDeduplication": "ContentBasedDeduplication",
    "DeduplicationScope": "DeduplicationScope",
    "FifoThroughputLimit": "FifoThroughputLimit",
}


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The template's queues, created in moto."""

    sqs: Any
    urls: dict[str, str]  # logical id -> URL
    properties: dict[str, dict[str, Any]]  # logical id -> template properties
    env: dict[str, str]  # FORWARDER_QUEUE_URL_* as the template's Globals set them

    def receive(self, logical_id: str, **kwargs: Any) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(QueueUrl=self.urls[logical_id], **kwargs)
        return list(response.get("Messages", []))


def _template() -> dict[str, Any]:
    loaded = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    assert isinstance(loaded, dict)
    return loaded


#: The template's conditions as the stack is deployed with its default parameters (no KmsKeyArn: SSE-SQS).
DEFAULT_CONDITIONS = {"UseCustomerKey": False}


def _as_deployed(value: Any) -> Any:
    """A property's value with its Fn::If decided as for the default parameters."""
    if isinstance(value, dict) and "Fn::If" in value:
        condition, when_true, when_false = value["Fn::If"]
        return _as_deployed(when_true if DEFAULT_CONDITIONS[condition] else when_false)
    return value


def _attributes(name: str, properties: dict[str, Any], arns: dict[str, str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for prop, conditional in properties.items():
        value = _as_deployed(conditional)
        if value == {"Ref": "AWS::NoValue"}:
            continue
        if prop == "RedrivePolicy":
            dlq, attribute = value["deadLetterTargetArn"]["Fn::GetAtt"]
            assert attribute == "Arn"
            policy = {"deadLetterTargetArn": arns[dlq], "maxReceiveCount": int(value["maxReceiveCount"])}
            attributes["RedrivePolicy"] = json.dumps(policy)
        elif prop in QUEUE_ATTRIBUTES:
            attributes[QUEUE_ATTRIBUTES[prop]] = str(value).lower() if isinstance(value, bool) else str(value)
        else:
            raise AssertionError(f"{name}.{prop} is new in template.yaml: teach this fixture to create it")
    return attributes


@pytest.fixture
def stack(aws: None) -> Stack:
    template = _template()
    queues = {
        name: resource.get("Properties", {})
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::SQS::Queue"
    }
    sqs = boto3.client("sqs")
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    # dead-letter queues first: their sources' redrive policies name their ARNs
    for name in sorted(queues, key=lambda queue: "RedrivePolicy" in queues[queue]):
        fifo = queues[name].get("FifoQueue") is True  # SQS names a FIFO queue with a .fifo suffix
        url = sqs.create_queue(
            QueueName=name + (".fifo" if fifo else ""), Attributes=_attributes(name, queues[name], arns)
        )["QueueUrl"]
        urls[name] = url
        arns[name] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    env = {
        var: urls[value["Ref"]]
        for var, value in variables.items()
        if var.startswith("FORWARDER_QUEUE_URL_") and isinstance(value, dict)
    }
    return Stack(sqs=sqs, urls=urls, properties=queues, env=env)


def _count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every `operation` call the client makes."""
    calls: list[dict[str, Any]] = []
    service = client.meta.service_model.service_id.hyphenize()

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    client.meta.events.register(f"provide-client-params.{service}.{operation}", record)
    return calls


# --------------------------------------------------------------------------------------------------
# SqsQueues
# --------------------------------------------------------------------------------------------------


def test_25_messages_arrive_with_their_attributes(stack: Stack) -> None:
    # Given the adapter configured exactly as a deployed function is
    queues = SqsQueues.from_environment(stack.env, client=stack.sqs)
    batches = _count_calls(stack.sqs, "SendMessageBatch")
    messages = [
        OutgoingMessage(
            body=json.dumps({"data": {"email": f"user{i}@example.com"}, "group_key": "abc123"}),
            attributes={"group_key": "abc123", "integration": "expertsender", "seq": str(i)},
            group_id=f"customer-{i}",
            dedup_id=f"delivery-{i}",
        )
        for i in range(25)
    ]

    # When they are sent to the delivery queue
    message_ids = queues.send("delivery", messages)

    # Then three SendMessageBatch calls carried them, with their FIFO group and deduplication ids, and each
    # comes back once, attributes intact
    assert [len(call["Entries"]) for call in batches] == [10, 10, 5]
    assert batches[0]["Entries"][3]["MessageGroupId"] == "customer-3"
    assert batches[0]["Entries"][3]["MessageDeduplicationId"] == "delivery-3"
    assert len(set(message_ids)) == 25
    received: dict[str, dict[str, Any]] = {}
    for _ in range(20):
        for message in stack.receive("DeliveryQueue", MaxNumberOfMessages=10, MessageAttributeNames=["All"]):
            received[message["MessageId"]] = message
        if len(received) == 25:
            break
    assert set(received) == set(message_ids)
    for message_id, sent in zip(message_ids, messages, strict=True):
        message = received[message_id]
        assert message["Body"] == sent.body
        assert {name: attr["StringValue"] for name, attr in message["MessageAttributes"].items()} == (
            sent.attributes
        )
        assert {attr["DataType"] for attr in message["MessageAttributes"].values()} == {"String"}


def test_large_messages_are_split_into_batches_under_256_kib(stack: Stack) -> None:
    queues = SqsQueues.from_environment(stack.env, client=stack.sqs)
    batches = _count_calls(stack.sqs, "SendMessageBatch")
    messages = [OutgoingMessage(body="x" * 100 * 1024, attributes={"seq": str(i)}) for i in range(5)]

    queues.send("rejects", messages)

    assert [len(call["Entries"]) for call in batches] == [2, 2, 1]
    for call in batches:
        assert sum(len(entry["MessageBody"]) for entry in call["Entries"]) <= SQS_BATCH_MAX_BYTES


def test_the_client_is_created_on_first_use(stack: Stack) -> None:
    queues = SqsQueues.from_environment(stack.env)  # no client injected: boto3 is set up lazily

    (message_id,) = queues.send("ingest", [OutgoingMessage(body='{"n": 1}', group_id="g", dedup_id="d")])

    (message,) = stack.receive("IngestQueue")
    assert message["MessageId"] == message_id


def test_a_queue_that_does_not_exist_raises_queue_error_without_the_body(stack: Stack) -> None:
    missing = stack.urls["DeliveryQueue"].rsplit("/", 1)[0] + "/no-such-queue"
    queues = SqsQueues({"delivery": missing}, client=stack.sqs)

    with pytest.raises(QueueError) as raised:
        queues.send(
            "delivery", [OutgoingMessage(body='{"email": "jane@example.com"}', group_id="g", dedup_id="d")]
        )

    code = raised.value.__cause__.response["Error"]["Code"]  # type: ignore[union-attr]
    assert "'delivery'" in str(raised.value) and code in str(raised.value)
    assert "jane@example.com" not in str(raised.value)


def test_entries_sqs_refuses_raise_queue_error_naming_the_code(aws: None) -> None:
    # Given SQS accepting one entry of a batch and refusing the other
    sqs = boto3.client("sqs")
    url = f"https://sqs.{REGION}.amazonaws.com/123456789012/delivery"
    with Stubber(sqs) as stubber:
        stubber.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": "0", "MessageId": "m-0", "MD5OfMessageBody": "x" * 32}],
                "Failed": [{"Id": "1", "SenderFault": True, "Code": "InvalidParameterValue"}],
            },
        )
        queues = SqsQueues({"delivery": url}, client=sqs)

        # Then the send fails as a whole, naming the queue and the code, never the bodies
        with pytest.raises(QueueError, match=r"1 of 2 .*'delivery': InvalidParameterValue") as raised:
            queues.send("delivery", [OutgoingMessage(body="first-body"), OutgoingMessage(body="second-body")])
    assert "body" not in str(raised.value)


def test_a_queue_without_a_url_names_its_environment_variable(stack: Stack) -> None:
    env = {var: url for var, url in stack.env.items() if var != "FORWARDER_QUEUE_URL_REJECTS"}
    queues = SqsQueues.from_environment(env, client=stack.sqs)

    with pytest.raises(QueueError, match="FORWARDER_QUEUE_URL_REJECTS"):
        queues.send("rejects", [OutgoingMessage(body="{}")])


def test_change_visibility_hides_a_received_message(stack: Stack) -> None:
    queues = SqsQueues.from_environment(stack.env, client=stack.sqs)
    queues.send("delivery", [OutgoingMessage(body='{"n": 1}', group_id="customer-1", dedup_id="d1")])
    # Given a received message that would be visible again at once
    (first,) = stack.receive("DeliveryQueue", VisibilityTimeout=0)
    (again,) = stack.receive("DeliveryQueue", VisibilityTimeout=0)
    assert again["MessageId"] == first["MessageId"]

    # When the deliver flow delays its retry by five minutes
    queues.change_visibility("delivery", again["ReceiptHandle"], 300)

    # Then nobody receives it meanwhile
    assert stack.receive("DeliveryQueue", MaxNumberOfMessages=10) == []


def test_change_visibility_with_a_bad_receipt_raises_queue_error(stack: Stack) -> None:
    queues = SqsQueues.from_environment(stack.env, client=stack.sqs)

    with pytest.raises(QueueError, match="'delivery'"):
        queues.change_visibility("delivery", "not-a-receipt-handle", 30)


def test_an_ingest_message_received_max_receive_count_times_lands_in_the_dlq(stack: Stack) -> None:
    max_receives = int(stack.properties["IngestQueue"]["RedrivePolicy"]["maxReceiveCount"])
    queues = SqsQueues.from_environment(stack.env, client=stack.sqs)
    (message_id,) = queues.send(
        "ingest", [OutgoingMessage(body='{"n": 1}', attributes={"a": "b"}, group_id="g", dedup_id="d")]
    )

    # Given a record validate fails every time (received, never deleted)
    for attempt in range(1, max_receives + 1):
        (message,) = stack.receive("IngestQueue", VisibilityTimeout=0, AttributeNames=["All"])
        assert int(message["Attributes"]["ApproximateReceiveCount"]) == attempt

    # Then the next receive finds the queue empty and the record in its dead-letter queue
    assert stack.receive("IngestQueue", VisibilityTimeout=0) == []
    (dead,) = stack.receive("IngestDeadLetterQueue", MessageAttributeNames=["All"])
    assert dead["MessageId"] == message_id
    assert dead["MessageAttributes"]["a"]["StringValue"] == "b"


# --------------------------------------------------------------------------------------------------
# SecretsManagerSecrets
# --------------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def secretsmanager(aws: None) -> Any:
    client = boto3.client("secretsmanager")
    client.create_secret(
        Name="forwarder/expertsender/brand-a",
        SecretString=json.dumps({"api_key": "es-key-0001"}),
    )
    return client


def test_get_returns_the_secret_json_object(secretsmanager: Any) -> None:
    secrets = SecretsManagerSecrets(client=secretsmanager)

    assert secrets.get("forwarder/expertsender/brand-a") == {"api_key": "es-key-0001"}


def test_a_cached_secret_is_not_fetched_again_until_it_is_too_old(secretsmanager: Any) -> None:
    clock = FakeClock()
    fetches = _count_calls(secretsmanager, "GetSecretValue")
    secrets = SecretsManagerSecrets(client=secretsmanager, clock=clock)

    secrets.get("forwarder/expertsender/brand-a", max_age_seconds=300)
    clock.now += 299
    secrets.get("forwarder/expertsender/brand-a", max_age_seconds=300)
    assert len(fetches) == 1

    clock.now += 2
    secrets.get("forwarder/expertsender/brand-a", max_age_seconds=300)
    assert len(fetches) == 2

    secrets.get("forwarder/expertsender/brand-a", max_age_seconds=0)  # "fresh, please"
    assert len(fetches) == 3


def test_callers_cannot_corrupt_the_cache(secretsmanager: Any) -> None:
    secrets = SecretsManagerSecrets(client=secretsmanager)

    secrets.get("forwarder/expertsender/brand-a")["api_key"] = "tampered"

    assert secrets.get("forwarder/expertsender/brand-a") == {"api_key": "es-key-0001"}


def test_put_then_get_returns_the_new_value(secretsmanager: Any) -> None:
    fetches = _count_calls(secretsmanager, "GetSecretValue")
    secrets = SecretsManagerSecrets(client=secretsmanager)
    secrets.get("forwarder/expertsender/brand-a")

    secrets.put("forwarder/expertsender/brand-a", {"api_key": "es-key-0002"})

    # the writer's cache is refreshed, not stale...
    assert secrets.get("forwarder/expertsender/brand-a") == {"api_key": "es-key-0002"}
    assert len(fetches) == 1
    # ...and every other reader gets the new version from Secrets Manager
    assert SecretsManagerSecrets(client=secretsmanager).get("forwarder/expertsender/brand-a") == {
        "api_key": "es-key-0002"
    }


def test_put_creates_a_secret_that_does_not_exist_yet(secretsmanager: Any) -> None:
    secrets = SecretsManagerSecrets(client=secretsmanager)

    secrets.put("forwarder/dmhub/brand-b/token", {"access_token": "tok-1", "expires_at": 1700000000})

    stored = secretsmanager.get_secret_value(SecretId="forwarder/dmhub/brand-b/token")
    assert json.loads(stored["SecretString"]) == {"access_token": "tok-1", "expires_at": 1700000000}


def test_a_secret_created_by_a_store_with_a_key_is_encrypted_under_it(secretsmanager: Any) -> None:
    key_id = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    keyed = SecretsManagerSecrets(client=secretsmanager, kms_key_id=key_id)

    keyed.put("forwarder/hooks/newsletter", {"secret": "s-1"})
    # a new version of an existing secret keeps that secret's own key
    keyed.put("forwarder/expertsender/brand-a", {"api_key": "es-key-0002"})
    SecretsManagerSecrets(client=secretsmanager).put("forwarder/hooks/signup", {"secret": "s-2"})

    assert secretsmanager.describe_secret(SecretId="forwarder/hooks/newsletter")["KmsKeyId"] == key_id
    assert "KmsKeyId" not in secretsmanager.describe_secret(SecretId="forwarder/expertsender/brand-a")
    assert "KmsKeyId" not in secretsmanager.describe_secret(SecretId="forwarder/hooks/signup")
    assert keyed.get("forwarder/hooks/newsletter", max_age_seconds=0) == {"secret": "s-1"}


def test_a_missing_secret_raises_not_found_naming_it(secretsmanager: Any) -> None:
    secrets = SecretsManagerSecrets(client=secretsmanager)
    secrets.get("forwarder/expertsender/brand-a")  # a value the process holds

    with pytest.raises(SecretNotFoundError) as raised:
        secrets.get("forwarder/carecloud/brand-z")

    assert "forwarder/carecloud/brand-z" in str(raised.value)
    assert "es-key-0001" not in "".join(traceback.format_exception(raised.value))
    assert isinstance(raised.value, SecretStoreError)  # callers handling the store error catch it too


@pytest.mark.parametrize("secret_string", ["hunter2-plain-password", '["hunter2-in-a-list"]', '"hunter2"'])
def test_a_secret_that_is_not_a_json_object_is_a_store_error_without_its_value(
    secretsmanager: Any, secret_string: str
) -> None:
    secretsmanager.create_secret(Name="forwarder/broken", SecretString=secret_string)
    secrets = SecretsManagerSecrets(client=secretsmanager)

    with pytest.raises(SecretStoreError) as raised:
        secrets.get("forwarder/broken")

    assert not isinstance(raised.value, SecretNotFoundError)
    assert "forwarder/broken" in str(raised.value)
    # not in the message, nor anywhere in the traceback a log handler would print
    assert "hunter2" not in "".join(traceback.format_exception(raised.value))


def test_access_denied_is_a_store_error_not_a_missing_secret(aws: None) -> None:
    client = boto3.client("secretsmanager")
    with Stubber(client) as stubber:
        stubber.add_client_error("get_secret_value", service_error_code="AccessDeniedException")
        secrets = SecretsManagerSecrets(client=client)

        with pytest.raises(SecretStoreError, match="AccessDeniedException") as raised:
            secrets.get("forwarder/expertsender/brand-a")

    assert not isinstance(raised.value, SecretNotFoundError)


def test_aws_clients_have_explicit_timeouts_and_bounded_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    from forwarder.adapters.aws import _create_client, aws_client_config

    # by default: 1 s to connect, 3 s to read, 2 attempts in all (8 s: inside a 10 s function)
    client = _create_client("sqs")
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (1.0, 3.0)
    assert client.meta.config.retries["total_max_attempts"] == 2
    # as a function's environment sets them
    monkeypatch.setenv("FORWARDER_AWS_READ_TIMEOUT_SECONDS", "2.5")
    assert _create_client("dynamodb").meta.config.read_timeout == 2.5
    with pytest.raises(RuntimeError, match="FORWARDER_AWS_MAX_ATTEMPTS"):
        aws_client_config({"FORWARDER_AWS_MAX_ATTEMPTS": "many"})
