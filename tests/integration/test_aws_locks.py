"""Token leases on DynamoDB (moto), on the table template.yaml declares: one holder at a time, a lease that
runs out by itself, and a release that never ends somebody else's lease."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import cfn_yaml

from forwarder.adapters.aws import LOCKS_TABLE_ENV_VAR, DynamoDbLocks
from forwarder.ports.locks import LockError

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table(aws: None) -> str:
    template = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    properties: dict[str, Any] = template["Resources"]["TokenLockTable"]["Properties"]
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[LOCKS_TABLE_ENV_VAR] == {"Ref": "TokenLockTable"}
    client = boto3.client("dynamodb")
    client.create_table(
        TableName="TokenLockTable",
        AttributeDefinitions=properties["AttributeDefinitions"],
        KeySchema=properties["KeySchema"],
        BillingMode=properties["BillingMode"],
    )
    client.update_time_to_live(
        TableName="TokenLockTable", TimeToLiveSpecification=properties["TimeToLiveSpecification"]
    )
    return "TokenLockTable"


def test_one_holder_at_a_time_across_containers(table: str) -> None:
    # given two containers, each with its own adapter on the same table
    clock = Clock()
    first = DynamoDbLocks.from_environment({LOCKS_TABLE_ENV_VAR: table})
    second = DynamoDbLocks.from_environment({LOCKS_TABLE_ENV_VAR: table})
    first._clock = second._clock = clock
    # when both want to renew the same token
    assert first.acquire("token/forwarder/demo/dmhub", "container-a", 30) is True
    assert second.acquire("token/forwarder/demo/dmhub", "container-b", 30) is False
    # then another token's lease is independent
    assert second.acquire("token/forwarder/other/dmhub", "container-b", 30) is True
    # and once the holder releases, the other may take it
    first.release("token/forwarder/demo/dmhub", "container-a")
    assert second.acquire("token/forwarder/demo/dmhub", "container-b", 30) is True


def test_a_killed_holder_blocks_nobody_after_its_lease(table: str) -> None:
    clock = Clock()
    locks = DynamoDbLocks(table, clock=clock)
    assert locks.acquire("token/x", "dead-container", 30)
    clock.now += 29
    assert not locks.acquire("token/x", "live-container", 30)
    clock.now += 3
    assert locks.acquire("token/x", "live-container", 30)


def test_a_late_release_leaves_the_new_holders_lease_alone(table: str) -> None:
    clock = Clock()
    locks = DynamoDbLocks(table, clock=clock)
    assert locks.acquire("token/x", "slow", 30)
    clock.now += 40  # slow's lease ran out; fast took over
    assert locks.acquire("token/x", "fast", 30)
    locks.release("token/x", "slow")
    assert not locks.acquire("token/x", "third", 30)


def test_no_table_configured_is_an_error_naming_the_variable() -> None:
    with pytest.raises(LockError, match=LOCKS_TABLE_ENV_VAR):
        DynamoDbLocks.from_environment({})


def test_an_unreachable_table_is_a_lock_error_naming_the_table(aws: None) -> None:
    locks = DynamoDbLocks("no-such-table")
    with pytest.raises(LockError, match=r"no-such-table.*ResourceNotFoundException"):
        locks.acquire("token/x", "me", 30)
