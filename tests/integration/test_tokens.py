"""Vendor tokens shared by every delivery: renewed once under a lock however many deliveries hit the same
refusal, renewed ahead of expiry by the schedule, and a failed renewal reported without the secret.

Real parts: the DM Hub and CareCloud sandboxes (one active token per application; tokens that expire on
demand), the local secret store, and SQLite lease locks shared by every thread and "container"."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.config import IntegrationConfig, load_config_text
from forwarder.flows.refresh_tokens import refresh_all
from forwarder.ports.deliveries import DeliveryKey
from forwarder.ports.locks import LockError
from forwarder.runtime import RuntimeSettings, Services
from forwarder.tokens import TokenKeeper, TokenUnavailable
from forwarder_local.queue import DurableQueueStore
from forwarder_local.sandboxes.carecloud import BASE_PATH, FORWARDER_SOURCE_ID, CareCloudSandbox
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.stack import QUEUES
from forwarder_local.stores import EmbeddedQueues, LocalDeliveryLog, LocalLocks, LocalSecretStore

DMHUB_SECRET = "forwarder/brand/dmhub"
CARECLOUD_SECRET = "forwarder/brand/carecloud"

CONFIG = f"""
version: 1
clients:
  - {{name: brand, principals: [AKIDEXAMPLEBRAND], group_keys: [brand]}}
group_keys:
  brand:
    integrations:
      - name: dmhub
        type: dmhub
        secret: {DMHUB_SECRET}
        settings: {{api_version: v1}}
        contacts:
          mapping:
            - {{kind: string, from: email, to: email, required: true}}
      - name: carecloud
        type: carecloud
        secret: {CARECLOUD_SECRET}
        settings:
          base_url: https://project.example/webservice/rest-api/customer-interface/v1.0
          customer_source_id: "{FORWARDER_SOURCE_ID}"
        contacts:
          mapping:
            - {{kind: string, from: email, to: email, required: true}}
"""


class World:
    """One brand's secrets and leases on disk, and the two token vendors' sandboxes."""

    def __init__(self, tmp_path: Path, dmhub: DmHubSandbox, carecloud: CareCloudSandbox) -> None:
        self.tmp_path = tmp_path
        self.dmhub, self.carecloud = dmhub, carecloud
        config_path = tmp_path / "forwarder.yaml"
        config_path.write_text(CONFIG)
        self.settings = RuntimeSettings(
            runtime="embedded", config_path=str(config_path), token_wait_seconds=10
        )
        self.config = load_config_text(CONFIG)
        self.secrets_path, self.locks_path = tmp_path / "secrets.json", tmp_path / "locks.db"
        secrets = LocalSecretStore(self.secrets_path)
        secrets.put(DMHUB_SECRET, {"app_id": "cl-brand", "secret": "right-secret", "base_url": dmhub.url})
        secrets.put(
            CARECLOUD_SECRET, {"external_application_id": "brand-app", "base_url": carecloud.url + BASE_PATH}
        )
        store = DurableQueueStore(tmp_path / "queues.db")
        for spec in QUEUES:
            store.create_queue(spec)
        self.queues = EmbeddedQueues(store)

    def integration(self, name: str) -> IntegrationConfig:
        found = self.config.group_keys["brand"].integration(name)
        assert found is not None
        return found

    def container(self) -> Services:
        """What one Lambda container has: its own clients and caches, the shared stores behind them."""
        return Services(
            settings=self.settings,
            queues=self.queues,
            secrets=LocalSecretStore(self.secrets_path),
            locks=LocalLocks(self.locks_path),
            http=requests.Session(),
            deliveries=LocalDeliveryLog(self.tmp_path / "deliveries.db"),
        )

    def stored(self, name: str) -> dict[str, Any]:
        return LocalSecretStore(self.secrets_path).get(name)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with (
        DmHubSandbox("cl-brand", "right-secret") as dmhub,
        CareCloudSandbox(external_application_id="brand-app") as carecloud,
    ):
        yield World(tmp_path, dmhub, carecloud)


def _renew_concurrently(world: World, name: str, stale: str | None, containers: int) -> list[Any]:
    """``containers`` deliveries, each in its own container, renewing the same refused token at once."""
    start = threading.Barrier(containers)
    results: list[Any] = [None] * containers

    def deliver(index: int) -> None:
        keeper = world.container().token_keeper()
        start.wait()
        try:
            results[index] = keeper.renew(world.integration(name), stale, reason="refused")
        except Exception as error:  # collected and asserted on below
            results[index] = error

    threads = [threading.Thread(target=deliver, args=(index,)) for index in range(containers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


@pytest.mark.parametrize("name", ["dmhub", "carecloud"])
def test_many_deliveries_refused_at_once_cause_one_token_request(world: World, name: str) -> None:
    # given a token every container holds, which the vendor has just stopped accepting
    sandbox = world.dmhub if name == "dmhub" else world.carecloud
    first = world.container().token_keeper().usable(world.integration(name), world.stored(name_secret(name)))
    refused = world.integration(name).integration.token(first)
    assert refused and sandbox.token_requests() == 1
    sandbox.expire_tokens()
    # when twelve deliveries in twelve containers hit the refusal together
    results = _renew_concurrently(world, name, refused, containers=12)
    # then the vendor was asked for one new token, and every delivery uses that one
    assert not [result for result in results if isinstance(result, Exception)], results
    assert sandbox.token_requests() == 2
    tokens = {world.integration(name).integration.token(result) for result in results}
    assert len(tokens) == 1 and refused not in tokens
    assert tokens == {world.integration(name).integration.token(world.stored(name_secret(name)))}


def name_secret(name: str) -> str:
    return DMHUB_SECRET if name == "dmhub" else CARECLOUD_SECRET


def test_a_delivery_holding_an_old_token_takes_the_renewed_one_without_asking_the_vendor(
    world: World,
) -> None:
    # given a container that renewed the token after another container read the old one
    config = world.integration("dmhub")
    old = world.container().token_keeper().usable(config, world.stored(DMHUB_SECRET))
    world.dmhub.expire_tokens()
    world.container().token_keeper().renew(config, config.integration.token(old), reason="refused")
    assert world.dmhub.token_requests() == 2
    # when the other container's delivery is refused with the old token
    renewed = world.container().token_keeper().renew(config, config.integration.token(old), reason="refused")
    # then it reads the stored token instead of fetching a third (which would invalidate the second)
    assert world.dmhub.token_requests() == 2
    assert config.integration.token(renewed) == config.integration.token(world.stored(DMHUB_SECRET))


def test_a_delivery_waits_for_the_lease_holder_and_uses_its_token(world: World) -> None:
    # given another container holding the token's lease while it fetches
    config = world.integration("dmhub")
    holder = LocalLocks(world.locks_path)
    assert holder.acquire(f"token/{DMHUB_SECRET}", "other-container", 30)

    def other_container_finishes() -> None:
        time.sleep(0.5)
        fresh = {
            **world.stored(DMHUB_SECRET),
            "access_token": "from-the-other",
            "expires_at": time.time() + 7200,
        }
        LocalSecretStore(world.secrets_path).put(DMHUB_SECRET, fresh)
        holder.release(f"token/{DMHUB_SECRET}", "other-container")

    threading.Thread(target=other_container_finishes).start()
    # when this container needs a token
    credentials = world.container().token_keeper().usable(config, world.stored(DMHUB_SECRET))
    # then it waited and took the holder's token, asking the vendor for none
    assert credentials["access_token"] == "from-the-other"
    assert world.dmhub.token_requests() == 0


def test_a_delivery_gives_up_waiting_when_the_holder_never_finishes(world: World) -> None:
    config = world.integration("dmhub")
    assert LocalLocks(world.locks_path).acquire(f"token/{DMHUB_SECRET}", "stuck", 30)
    keeper = TokenKeeper(
        LocalSecretStore(world.secrets_path), LocalLocks(world.locks_path), requests.Session()
    )
    keeper.wait_seconds = 0.5
    with pytest.raises(TokenUnavailable, match="another process is renewing"):
        keeper.usable(config, world.stored(DMHUB_SECRET))
    assert world.dmhub.token_requests() == 0


def test_the_schedule_renews_only_tokens_close_to_expiry(world: World) -> None:
    # given a DM Hub token with two hours to live and no CareCloud token yet
    container = world.container()
    container.token_keeper().usable(world.integration("dmhub"), world.stored(DMHUB_SECRET))
    # when the schedule runs
    report = refresh_all(container)
    # then only the missing CareCloud token was fetched; the fresh DM Hub token is left alone
    assert report.problems == []
    assert report.refreshed == [f"brand/carecloud (secret '{CARECLOUD_SECRET}')"]
    assert world.dmhub.token_requests() == 1 and world.carecloud.token_requests() == 1
    # when the DM Hub token comes within the margin (30 minutes) of its expiry
    stored = world.stored(DMHUB_SECRET)
    LocalSecretStore(world.secrets_path).put(DMHUB_SECRET, {**stored, "expires_at": time.time() + 1200})
    report = refresh_all(container)
    # then the schedule renews it (a new secret version with the new token) and nothing else
    assert report.refreshed == [f"brand/dmhub (secret '{DMHUB_SECRET}')"]
    assert world.dmhub.token_requests() == 2 and world.carecloud.token_requests() == 1
    assert world.stored(DMHUB_SECRET)["access_token"] != stored["access_token"]
    assert world.stored(DMHUB_SECRET)["expires_at"] > time.time() + 7000


def test_a_refused_renewal_is_reported_with_the_group_key_and_never_the_secret(
    world: World, logged: list[dict[str, Any]]
) -> None:
    # given app credentials the vendor refuses
    stored = world.stored(DMHUB_SECRET)
    LocalSecretStore(world.secrets_path).put(DMHUB_SECRET, {**stored, "secret": "wrong-secret-value"})
    # when the schedule runs
    report = refresh_all(world.container())
    # then the problem names the group key, integration and the vendor's answer
    (problem,) = report.problems
    assert problem.startswith(f"brand/dmhub (secret '{DMHUB_SECRET}'): DM Hub refused a token")
    assert "40001" in problem
    # and neither the report nor the logs hold the secret
    assert "wrong-secret-value" not in problem
    assert "wrong-secret-value" not in json.dumps(logged)
    (error,) = [line for line in logged if line["message"] == "credentials problem"]
    assert error["group_key"] == "brand" and error["integration"] == "dmhub" and error["level"] == "ERROR"


def container_log(world: World) -> LocalDeliveryLog:
    return LocalDeliveryLog(world.tmp_path / "deliveries.db")


def test_deliveries_without_a_token_wait_on_the_queue_and_count_a_credential_problem(
    world: World, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    from forwarder.flows.deliver import handle_batch
    from forwarder.messages import DeliveryMessage
    from forwarder.observability import metrics
    from forwarder_local.poller import sqs_event

    # given DM Hub refusing the application's credentials, and two contacts waiting to be delivered
    stored = world.stored(DMHUB_SECRET)
    LocalSecretStore(world.secrets_path).put(DMHUB_SECRET, {**stored, "secret": "revoked-secret"})
    store = world.queues.store
    for index in range(2):
        delivery = DeliveryMessage(
            request_id=f"request-{index}",
            group_key="brand",
            action="upsert_contact",
            integration="dmhub",
            integration_type="dmhub",
            operation="upsert_customer",
            payload={
                "identity": {"identityType": "email", "identityValue": f"c{index}@example.com"},
                "customer": {},
            },
            received_at="2026-11-28T10:00:00.000Z",
        )
        store.send("delivery", delivery.model_dump_json(), group_id=f"customer-{index}")
    event = sqs_event(store.queue_arn("delivery"), store.receive("delivery", max_messages=10))
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    # when deliver runs
    response = handle_batch(world.container(), event)
    # then both stay on the queue, hidden for a backoff, with no attempt spent and nothing dead-lettered
    assert len(response["batchItemFailures"]) == 2
    assert store.counts("delivery") == {"visible": 0, "in_flight": 2, "delayed": 0}
    assert store.peek("delivery-dlq") == [] and store.peek("rejects") == []
    records = container_log(world).get(
        [DeliveryKey(f"request-{index}", "dmhub", "upsert_customer") for index in range(2)]
    )
    assert {record.attempts for record in records.values()} == {0}
    # and the problem is counted for the alarm and logged with the group key, never the secret
    assert metrics.metric_set["CredentialProblems"]["Value"] == [1.0]
    metrics.clear_metrics()
    (line,) = [item for item in logged if item["message"].startswith("could not renew the vendor token")]
    assert line["group_key"] == "brand" and line["integration"] == "dmhub"
    assert "revoked-secret" not in json.dumps(logged)


class _BrokenLocks(LocalLocks):
    """A lock store that refuses every lease (e.g. AccessDenied on the lock table)."""

    def acquire(self, name: str, owner: str, lease_seconds: float) -> bool:
        raise LockError("DynamoDB refused a lock in table 'TokenLockTable': AccessDeniedException")


def test_a_failing_lock_store_holds_the_records_and_is_counted_not_silent(
    world: World, monkeypatch: pytest.MonkeyPatch, logged: list[dict[str, Any]]
) -> None:
    from forwarder.flows.deliver import handle_batch
    from forwarder.messages import DeliveryMessage
    from forwarder.observability import metrics
    from forwarder_local.poller import sqs_event

    # given no stored token yet, and a lock store that refuses every lease
    store = world.queues.store
    delivery = DeliveryMessage(
        request_id="request-0",
        group_key="brand",
        action="upsert_contact",
        integration="dmhub",
        integration_type="dmhub",
        operation="upsert_customer",
        payload={"identity": {"identityType": "email", "identityValue": "c@example.com"}, "customer": {}},
        received_at="2026-11-28T10:00:00.000Z",
    )
    store.send("delivery", delivery.model_dump_json(), group_id="customer-c")
    container = world.container()
    container.locks = _BrokenLocks(world.locks_path)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    # when deliver runs
    event = sqs_event(store.queue_arn("delivery"), store.receive("delivery", max_messages=10))
    assert len(handle_batch(container, event)["batchItemFailures"]) == 1
    # then no token was fetched without the lease, the record waits, and the problem is counted and logged
    assert world.dmhub.token_requests() == 0
    assert store.counts("delivery") == {"visible": 0, "in_flight": 1, "delayed": 0}
    assert store.peek("delivery-dlq") == []
    assert metrics.metric_set["CredentialProblems"]["Value"] == [1.0]
    metrics.clear_metrics()
    (line,) = [item for item in logged if item["message"].startswith("could not renew the vendor token")]
    assert "AccessDeniedException" in line["problem"] and line["integration"] == "dmhub"


def test_the_schedule_starts_no_renewal_it_could_not_finish(
    world: World, logged: list[dict[str, Any]]
) -> None:
    # given an invocation with ten seconds left, too little for a token call and a wait for a lease
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 10_000

    # when the schedule runs
    report = refresh_all(world.container(), Context())
    # then no token call was started, and the secrets left are named for the next run
    assert world.dmhub.token_requests() == 0 and world.carecloud.token_requests() == 0
    assert report.refreshed == [] and report.problems == []
    assert report.skipped == [
        f"brand/dmhub (secret '{DMHUB_SECRET}')",
        f"brand/carecloud (secret '{CARECLOUD_SECRET}')",
    ]
    assert any(line["message"].startswith("refresh ran out of time") for line in logged)
