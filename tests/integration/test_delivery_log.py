"""The delivery log, on DynamoDB (moto, the template's table) and on SQLite (embedded): what makes a delivery's
effect exactly-once and its retries end by age."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import cfn_yaml

from forwarder.adapters.aws import DELIVERY_LOG_TABLE_ENV_VAR, DynamoDbDeliveryLog
from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryLog,
    DeliveryLogError,
    DeliveryState,
    PlannedDelivery,
    RequestRecord,
)
from forwarder_local.stores import LocalDeliveryLog

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
JANE = DeliveryKey("request-1", "expertsender", "upsert_customer")
JANE_AT_DMHUB = DeliveryKey("request-1", "dmhub", "upsert_customer")


@pytest.fixture(params=["dynamodb", "sqlite"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DeliveryLog]:
    if request.param == "sqlite":
        local = LocalDeliveryLog(tmp_path / "deliveries.db")
        yield local
        local.close()
        return
    aws = request.getfixturevalue("aws")
    assert aws is None
    template = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    properties: dict[str, Any] = template["Resources"]["DeliveryLogTable"]["Properties"]
    assert template["Globals"]["Function"]["Environment"]["Variables"][DELIVERY_LOG_TABLE_ENV_VAR] == {
        "Ref": "DeliveryLogTable"
    }
    boto3.client("dynamodb").create_table(
        TableName="DeliveryLogTable",
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        BillingMode=properties["BillingMode"],
    )
    yield DynamoDbDeliveryLog.from_environment({DELIVERY_LOG_TABLE_ENV_VAR: "DeliveryLogTable"})


def test_attempts_are_counted_from_the_first_ones_time(log: DeliveryLog) -> None:
    # given a delivery tried at 1000 and again at 1060
    log.begin([JANE], 1000.0)
    log.finish({JANE: (DeliveryState.RETRYING, "HTTP 503")}, 1001.0)
    log.begin([JANE], 1060.0)
    # then the log holds two attempts since 1000, and it is on its way
    record = log.get([JANE])[JANE]
    assert record.attempts == 2 and record.first_attempt_at == 1000.0
    assert record.state is DeliveryState.SENDING
    # and another integration's delivery of the same request is its own
    assert log.get([JANE, JANE_AT_DMHUB]).keys() == {JANE}


def test_a_delivered_delivery_stays_delivered(log: DeliveryLog) -> None:
    log.begin([JANE], 1000.0)
    log.finish({JANE: (DeliveryState.DELIVERED, "delivered")}, 1001.0)
    # a late writer (a container that had it in flight) cannot turn it back
    log.begin([JANE], 1002.0)
    log.finish({JANE: (DeliveryState.RETRYING, "timeout")}, 1003.0)
    record = log.get([JANE])[JANE]
    assert record.state is DeliveryState.DELIVERED and record.attempts == 1


def test_a_replayed_dead_letter_starts_again(log: DeliveryLog) -> None:
    log.begin([JANE], 1000.0)
    log.finish({JANE: (DeliveryState.DEAD_LETTERED, "gave up")}, 2000.0)
    log.forget([JANE])
    assert log.get([JANE]) == {}
    log.begin([JANE], 3000.0)
    assert log.get([JANE])[JANE].first_attempt_at == 3000.0


def test_a_missing_table_is_named(aws: None) -> None:
    with pytest.raises(DeliveryLogError, match=DELIVERY_LOG_TABLE_ENV_VAR):
        DynamoDbDeliveryLog.from_environment({})
    with pytest.raises(DeliveryLogError, match="no-such-table"):
        DynamoDbDeliveryLog("no-such-table").get([JANE])


def test_a_request_reads_back_with_its_client_plan_and_deliveries(log: DeliveryLog) -> None:
    # given validate's record of a request: pending at ExpertSender and DM Hub, rejected at CareCloud
    record = RequestRecord(
        request_id="request-1",
        client="demo",
        group_key="demo",
        action="upsert_contact",
        received_at="2026-11-25T10:00:00.000Z",
        validated_at=1000.5,
        planned=(
            PlannedDelivery("expertsender", "upsert_customer", "pending"),
            PlannedDelivery("dmhub", "upsert_customer", "pending"),
            PlannedDelivery("carecloud", "upsert_customer", "rejected", "does not map", ("email: required",)),
        ),
    )
    log.record_requests([record])
    # and deliver's records of the first one
    log.begin([JANE], 1001.0)
    log.finish({JANE: (DeliveryState.DELIVERED, "delivered")}, 1002.0)
    # when it is read, then both come back as written (validate retried writes the same record again)
    log.record_requests([record])
    found, deliveries = log.request("request-1")
    assert found == record
    assert deliveries.keys() == {JANE}
    assert deliveries[JANE].state is DeliveryState.DELIVERED and deliveries[JANE].attempts == 1
    # and another request's id reads nothing
    assert log.request("request-2") == (None, {})


def test_a_batch_of_requests_is_recorded_in_one_go(log: DeliveryLog) -> None:
    records = [
        RequestRecord(f"request-{index}", "demo", "demo", "event", "2026-11-25T10:00:00.000Z", 1000.0 + index)
        for index in range(30)  # more than one DynamoDB batch write (25)
    ]
    log.record_requests(records)
    assert all(log.request(record.request_id)[0] == record for record in records)


def test_the_embedded_log_keeps_requests_for_30_days(tmp_path: Path) -> None:
    # given a request recorded on day 0 and another on day 20
    day = 86400.0
    log = LocalDeliveryLog(tmp_path / "deliveries.db", clock=lambda: 0.0)
    for request_id, when in (("old", 0.0), ("recent", 20 * day)):
        log.record_requests(
            [RequestRecord(request_id, "demo", "demo", "event", "2026-11-25T10:00:00Z", when)]
        )
    log.close()
    # when the stack starts again on day 31, then the older one is gone and the recent one kept
    log = LocalDeliveryLog(tmp_path / "deliveries.db", clock=lambda: 31 * day)
    assert log.request("old") == (None, {})
    assert log.request("recent")[0] is not None
    assert [record.request_id for record in log.recent()] == ["recent"]
    log.close()
