"""The DynamoDB deletion ledger against moto.

The table is created from template.yaml's own properties (key schema, billing mode, encryption, TTL on
expires_at, point-in-time recovery), and the adapter finds it through the FORWARDER_LEDGER_TABLE variable
the template sets, so these tests and the template cannot drift apart.
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

from forwarder.adapters.aws import LEDGER_BATCH_GET_ATTEMPTS, LEDGER_TTL_DAYS, DynamoDbDeletionLedger
from forwarder.ports.ledger import LedgerError

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REGION = "eu-west-1"
DAY = 86400

JANE = "demo/expertsender/email:jane@example.com"
JOHN = "demo/expertsender/email:john@example.com"
T0 = "2026-11-25T10:00:00.000Z"
BEFORE_T0 = "2026-11-25T09:59:59.999Z"
AFTER_T0 = "2026-11-25T10:00:00.001Z"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ledger:
    """The template's ledger table, created in moto."""

    dynamodb: Any
    table: str
    env: dict[str, str]  # FORWARDER_LEDGER_TABLE as the template's Globals set it
    template: dict[str, Any]

    def item(self, key: str) -> dict[str, Any] | None:
        response = self.dynamodb.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return item


def _template() -> dict[str, Any]:
    loaded = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    assert isinstance(loaded, dict)
    return loaded


def _create_table(dynamodb: Any, name: str, properties: dict[str, Any]) -> None:
    """CreateTable (then UpdateTimeToLive, UpdateContinuousBackups) from the template's properties."""
    create: dict[str, Any] = {"TableName": name}
    after: list[tuple[str, dict[str, Any]]] = []
    for prop, value in properties.items():
        if prop in {"AttributeDefinitions", "KeySchema", "BillingMode"}:
            create[prop] = value
        elif prop == "SSESpecification":
            create[prop] = {"Enabled": value["SSEEnabled"]}
        elif prop == "TimeToLiveSpecification":
            after.append(("update_time_to_live", {"TimeToLiveSpecification": value}))
        elif prop == "PointInTimeRecoverySpecification":
            after.append(("update_continuous_backups", {"PointInTimeRecoverySpecification": value}))
        else:
            raise AssertionError(f"{name}.{prop} is new in template.yaml: teach this fixture to create it")
    dynamodb.create_table(**create)
    for operation, params in after:
        getattr(dynamodb, operation)(TableName=name, **params)


@pytest.fixture
def ledger(aws: None) -> Ledger:
    template = _template()
    name = "DeletionLedgerTable"
    assert template["Resources"][name]["Type"] == "AWS::DynamoDB::Table"
    dynamodb = boto3.client("dynamodb")
    _create_table(dynamodb, name, template["Resources"][name]["Properties"])
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["FORWARDER_LEDGER_TABLE"] == {"Ref": name}
    return Ledger(dynamodb=dynamodb, table=name, env={"FORWARDER_LEDGER_TABLE": name}, template=template)


def _count_calls(client: Any, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every `operation` call the client makes."""
    calls: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    client.meta.events.register(f"provide-client-params.dynamodb.{operation}", record)
    return calls


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------


def test_the_table_expires_entries_by_expires_at(ledger: Ledger) -> None:
    ttl = ledger.dynamodb.describe_time_to_live(TableName=ledger.table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at" and ttl["TimeToLiveStatus"] == "ENABLED"


# --------------------------------------------------------------------------------------------------
# record_deletes / deleted_since
# --------------------------------------------------------------------------------------------------


def test_a_recorded_delete_blocks_what_was_received_before_it_only(ledger: Ledger) -> None:
    # Given Jane's delete, received at T0, recorded by the adapter configured as a deployed function is
    deletions = DynamoDbDeletionLedger.from_environment(ledger.env, client=ledger.dynamodb)
    deletions.record_deletes({JANE: T0})

    # Then an upsert received before it is superseded...
    assert deletions.deleted_since([JANE], BEFORE_T0) == JANE
    # ...one received at the same moment or later is not (strictly later deletes only)
    assert deletions.deleted_since([JANE], T0) is None
    assert deletions.deleted_since([JANE], AFTER_T0) is None
    # ...and nobody else is affected
    assert deletions.deleted_since([JOHN], BEFORE_T0) is None


def test_deleted_since_answers_the_first_deleted_key_in_order(ledger: Ledger) -> None:
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb)
    deletions.record_deletes({JANE: T0, JOHN: T0})
    phone = "demo/expertsender/phone:+491701234567"

    assert deletions.deleted_since([phone, JOHN, JANE], BEFORE_T0) == JOHN
    assert deletions.deleted_since([JANE, JOHN, JANE], BEFORE_T0) == JANE  # duplicates are fine
    assert deletions.deleted_since([phone], BEFORE_T0) is None
    assert deletions.deleted_since([], BEFORE_T0) is None


def test_recording_an_older_delete_never_lowers_a_newer_one(ledger: Ledger) -> None:
    clock = FakeClock()
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb, clock=clock)
    deletions.record_deletes({JANE: "2026-11-25T12:00:00.000Z"})
    stored = ledger.item(JANE)

    # When an older delete of Jane (a retry delivered late) is recorded afterwards
    clock.now += 60
    deletions.record_deletes({JANE: T0, JOHN: T0})

    # Then Jane's newer time stands, expiry included, and John's is recorded
    assert ledger.item(JANE) == stored
    assert deletions.deleted_since([JANE], "2026-11-25T11:00:00.000Z") == JANE
    assert deletions.deleted_since([JOHN], BEFORE_T0) == JOHN

    # ...while a newer delete raises the time
    deletions.record_deletes({JANE: "2026-11-26T08:00:00.000Z"})
    assert deletions.deleted_since([JANE], "2026-11-25T13:00:00.000Z") == JANE


def test_250_keys_are_read_in_chunks_of_100(ledger: Ledger) -> None:
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb)
    keys = [f"demo/expertsender/email:user{i}@example.com" for i in range(250)]
    deletions.record_deletes({keys[217]: T0})
    reads = _count_calls(ledger.dynamodb, "BatchGetItem")

    assert deletions.deleted_since(keys, BEFORE_T0) == keys[217]

    assert [len(call["RequestItems"][ledger.table]["Keys"]) for call in reads] == [100, 100, 50]
    # a delete recorded a moment ago must count: strongly consistent reads
    assert all(call["RequestItems"][ledger.table]["ConsistentRead"] is True for call in reads)


def test_expired_entries_are_ignored_before_ttl_removes_them(ledger: Ledger) -> None:
    clock = FakeClock()
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb, clock=clock)
    deletions.record_deletes({JANE: T0})

    # The entry expires after the TTL, which outlasts the delivery DLQ's retention
    item = ledger.item(JANE)
    assert item is not None and int(item["expires_at"]["N"]) == int(clock.now) + LEDGER_TTL_DAYS * DAY
    dlq = ledger.template["Resources"]["DeliveryDeadLetterQueue"]["Properties"]
    assert int(item["expires_at"]["N"]) - clock.now > int(dlq["MessageRetentionPeriod"])

    clock.now += LEDGER_TTL_DAYS * DAY - 1
    assert deletions.deleted_since([JANE], BEFORE_T0) == JANE

    # When the TTL has passed, the item still in the table (DynamoDB deletes lazily) is ignored
    clock.now += 1
    assert ledger.item(JANE) is not None
    assert deletions.deleted_since([JANE], BEFORE_T0) is None

    # ...and does not stop an older delete from being recorded afresh
    deletions.record_deletes({JANE: "2026-11-01T00:00:00.000Z"})
    assert deletions.deleted_since([JANE], "2026-10-31T00:00:00.000Z") == JANE


def test_the_ttl_is_configurable(ledger: Ledger) -> None:
    clock = FakeClock()
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb, ttl_days=45, clock=clock)
    deletions.record_deletes({JANE: T0})

    item = ledger.item(JANE)
    assert item is not None and int(item["expires_at"]["N"]) == int(clock.now) + 45 * DAY
    with pytest.raises(ValueError):
        DynamoDbDeletionLedger(ledger.table, ttl_days=0)


def test_the_client_is_created_on_first_use(ledger: Ledger) -> None:
    deletions = DynamoDbDeletionLedger.from_environment(ledger.env)  # no client: boto3 is set up lazily

    deletions.record_deletes({JANE: T0})

    assert deletions.deleted_since([JANE], BEFORE_T0) == JANE


def test_a_missing_table_variable_is_named(aws: None) -> None:
    with pytest.raises(LedgerError, match="FORWARDER_LEDGER_TABLE"):
        DynamoDbDeletionLedger.from_environment({})


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_a_missing_table_raises_ledger_error_naming_it_not_the_key(ledger: Ledger) -> None:
    deletions = DynamoDbDeletionLedger("no-such-ledger", ledger.dynamodb)

    for call in (lambda: deletions.record_deletes({JANE: T0}), lambda: deletions.deleted_since([JANE], T0)):
        with pytest.raises(LedgerError) as raised:
            call()
        message = str(raised.value)
        assert "'no-such-ledger'" in message and "ResourceNotFoundException" in message
        # the key is personal data: not in the message, nor anywhere in the traceback a log would print
        assert "jane@example.com" not in "".join(traceback.format_exception(raised.value))


def test_unprocessed_keys_are_read_again(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("forwarder.adapters.aws.time.sleep", sleeps.append)
    dynamodb = boto3.client("dynamodb")
    names = {"#pk": "pk", "#deleted": "deleted_at", "#expires": "expires_at"}
    unprocessed = {
        "ledger": {
            "Keys": [{"pk": {"S": JANE}}],
            "ConsistentRead": True,
            "ProjectionExpression": "#pk, #deleted, #expires",
            "ExpressionAttributeNames": names,
        }
    }
    with Stubber(dynamodb) as stubber:
        # Given DynamoDB answering John's key (no delete) and throttling Jane's, then answering it
        stubber.add_response("batch_get_item", {"Responses": {"ledger": []}, "UnprocessedKeys": unprocessed})
        jane = {"pk": {"S": JANE}, "deleted_at": {"S": T0}, "expires_at": {"N": "4102444800"}}
        stubber.add_response(
            "batch_get_item",
            {"Responses": {"ledger": [jane]}, "UnprocessedKeys": {}},
            expected_params={"RequestItems": unprocessed},
        )
        deletions = DynamoDbDeletionLedger("ledger", dynamodb)

        # Then the second call reads Jane's delete
        assert deletions.deleted_since([JOHN, JANE], BEFORE_T0) == JANE
        stubber.assert_no_pending_responses()
    assert len(sleeps) == 1


def test_keys_left_unprocessed_raise_ledger_error_after_bounded_retries(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr("forwarder.adapters.aws.time.sleep", sleeps.append)
    dynamodb = boto3.client("dynamodb")
    unprocessed = {"ledger": {"Keys": [{"pk": {"S": JANE}}], "ConsistentRead": True}}
    with Stubber(dynamodb) as stubber:
        for _ in range(LEDGER_BATCH_GET_ATTEMPTS):
            stubber.add_response("batch_get_item", {"Responses": {}, "UnprocessedKeys": unprocessed})
        deletions = DynamoDbDeletionLedger("ledger", dynamodb)

        with pytest.raises(LedgerError, match=r"1 of 1 keys unread in table 'ledger'") as raised:
            deletions.deleted_since([JANE], BEFORE_T0)
        stubber.assert_no_pending_responses()
    assert "jane@example.com" not in str(raised.value)
    assert len(sleeps) == LEDGER_BATCH_GET_ATTEMPTS - 1
    assert sleeps == sorted(sleeps)  # backing off


def test_throttled_writes_raise_ledger_error_with_the_code(aws: None) -> None:
    dynamodb = boto3.client("dynamodb")
    with Stubber(dynamodb) as stubber:
        stubber.add_client_error("update_item", service_error_code="ProvisionedThroughputExceededException")
        deletions = DynamoDbDeletionLedger("ledger", dynamodb)

        with pytest.raises(LedgerError, match="'ledger': ProvisionedThroughputExceededException") as raised:
            deletions.record_deletes({JANE: T0})
    assert "jane@example.com" not in str(raised.value)


def test_delivered_upserts_are_kept_apart_from_deletes(ledger: Ledger) -> None:
    # given Jane's delete at T0 and her newer upsert, delivered, recorded at AFTER_T0
    deletions = DynamoDbDeletionLedger(ledger.table, ledger.dynamodb)
    deletions.record_deletes({JANE: T0})
    deletions.record_upserts({JANE: AFTER_T0})
    deletions.record_upserts({JANE: BEFORE_T0})  # an older one never lowers it

    # then the delete, replayed, sees the newer upsert; upserts after the delete are still not superseded
    assert deletions.upserted_since([JOHN, JANE], T0) == JANE
    assert deletions.upserted_since([JANE], AFTER_T0) is None
    assert deletions.deleted_since([JANE], BEFORE_T0) == JANE
    assert deletions.deleted_since([JANE], T0) is None
