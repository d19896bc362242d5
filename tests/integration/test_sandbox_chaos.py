"""The sandbox framework's chaos machinery (random faults, slow answers, outages), its effects ledger and its
persisted request counters, which ``make chaos`` measures the forwarder with: each over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder_local.sandboxes.carecloud import BASE_PATH, CareCloudSandbox
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.sandboxes.framework import effect_key, op_marker, route_of

API_KEY = "chaos-key"
TIMEOUT = 5


@pytest.fixture
def sandbox() -> Iterator[ExpertSenderSandbox]:
    with ExpertSenderSandbox(API_KEY) as running:
        yield running


def upsert(
    sandbox: ExpertSenderSandbox, *customers: dict[str, Any], timeout: float = TIMEOUT
) -> requests.Response:
    return requests.post(
        f"{sandbox.url}/customers",
        json={"mode": "AddOrUpdate", "matchBy": "Email", "data": list(customers)},
        headers={"x-api-key": API_KEY},
        timeout=timeout,
    )


def jane(op: str) -> dict[str, Any]:
    return {"email": "Jane@Example.com", "customAttributes": [{"name": "op", "value": op}]}


def test_a_random_failure_answers_before_anything_is_applied(sandbox: ExpertSenderSandbox) -> None:
    # given chaos that fails every request with a 429
    sandbox.set_chaos(1.0, statuses=[429], retry_after=3)
    # when a customer is posted
    answer = upsert(sandbox, jane("op:1"))
    # then the vendor says 429 with Retry-After, and applied nothing
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "3"
    assert sandbox.customers() == [] and sandbox.effects() == []
    assert sandbox.request_counts()["chaos"] == 1
    # and once chaos is off, the same request is applied once
    sandbox.set_chaos(0)
    assert upsert(sandbox, jane("op:1")).status_code == 201
    assert sandbox.effects() == [{"kind": "upsert", "key": "jane@example.com|op:1", "count": 1}]


def test_a_slow_answer_comes_after_the_read_timeout_but_the_change_is_applied(
    sandbox: ExpertSenderSandbox,
) -> None:
    # given chaos that answers every write late
    sandbox.set_chaos(0, slow_rate=1.0, slow_seconds=1.0)
    # when the client gives up before the answer
    with pytest.raises(requests.ReadTimeout):
        upsert(sandbox, jane("op:7"), timeout=0.3)
    # then the vendor did the work anyway: the customer is there, one effect
    assert sandbox.find(email="jane@example.com") is not None
    assert sandbox.effects()[0]["count"] == 1
    # and a retry of the same request is counted as the same effect applied twice
    sandbox.set_chaos(0)
    assert upsert(sandbox, jane("op:7")).status_code == 201
    assert sandbox.effects() == [{"kind": "upsert", "key": "jane@example.com|op:7", "count": 2}]
    assert sandbox.request_counts()["slow"] == 1


def test_reads_are_not_slowed_by_default_and_rates_add_up(sandbox: ExpertSenderSandbox) -> None:
    sandbox.set_chaos(0, slow_rate=1.0, slow_seconds=5.0)
    missing = requests.get(
        f"{sandbox.url}/customers/email/nobody@example.com", headers={"x-api-key": API_KEY}, timeout=2
    )
    assert missing.status_code == 404  # answered at once: GET is not in slow_methods
    with pytest.raises(ValueError, match="must not exceed 1"):
        sandbox.set_chaos(0.6, slow_rate=0.5, slow_seconds=1)


def test_the_same_seed_draws_the_same_faults() -> None:
    def statuses(seed: int) -> list[int]:
        with ExpertSenderSandbox(API_KEY) as fresh:
            fresh.set_chaos(0.5, statuses=[503], seed=seed)
            return [upsert(fresh, jane(f"op:{n}")).status_code for n in range(20)]

    first, again = statuses(11), statuses(11)
    assert first == again
    assert {201, 503} <= set(first)


def test_an_outage_answers_503_to_everything_until_it_ends() -> None:
    with DmHubSandbox("app", "secret") as dmhub:
        # given an outage (random faults would spare the token route; an outage does not)
        answer = requests.post(f"{dmhub.url}/_sandbox/outage", json={"seconds": 60}, timeout=TIMEOUT)
        assert answer.status_code == 200
        token = requests.get(
            f"{dmhub.url}/security/accesstoken",
            params={"grant_type": "client_credentials", "appid": "app", "secret": "secret"},
            timeout=TIMEOUT,
        )
        assert token.status_code == 503
        assert token.json()["error_code"] == 50300
        assert dmhub.request_counts()["outage"] == 1
        # when it is ended, the vendor answers again
        dmhub.outage(0)
        assert dmhub.outage_left() == 0
        again = requests.get(
            f"{dmhub.url}/security/accesstoken",
            params={"grant_type": "client_credentials", "appid": "app", "secret": "secret"},
            timeout=TIMEOUT,
        )
        assert again.json()["error_code"] == 0


def test_random_faults_spare_token_routes_by_default() -> None:
    with CareCloudSandbox(external_application_id="app") as carecloud:
        carecloud.set_chaos(1.0, statuses=[500])
        token = requests.post(
            f"{carecloud.url}{BASE_PATH}/tokens",
            json={
                "device": {
                    "device_id": "d",
                    "device_system": "Linux",
                    "device_name": "chaos",
                    "device_type": "server",
                },
                "setup": {"language_id": "en", "allowed_gps": False, "allowed_notifications": False},
                "external_application_id": "app",
            },
            timeout=TIMEOUT,
        )
        assert token.status_code == 201
        stores = requests.get(
            f"{carecloud.url}{BASE_PATH}/stores",
            headers={"Authorization": f"Bearer {token.json()['data']['token_id']}"},
            timeout=TIMEOUT,
        )
        assert stores.status_code == 500
        assert carecloud.chaos.exempt == (BASE_PATH + "/tokens",)


def test_the_admin_route_sets_shows_and_refuses_chaos(sandbox: ExpertSenderSandbox) -> None:
    url = f"{sandbox.url}/_sandbox/chaos"
    set_ = requests.post(
        url, json={"rate": 0.2, "slow_rate": 0.01, "slow_seconds": 2, "seed": 3}, timeout=TIMEOUT
    )
    assert set_.status_code == 200
    assert set_.json()["rate"] == 0.2 and set_.json()["statuses"] == [503, 429]
    assert requests.get(url, timeout=TIMEOUT).json()["slow_seconds"] == 2
    unknown = requests.post(url, json={"rate": 0.2, "colour": "red"}, timeout=TIMEOUT)
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]
    too_high = requests.post(url, json={"rate": 2}, timeout=TIMEOUT)
    assert too_high.status_code == 400
    assert requests.post(url, json={"rate": 0}, timeout=TIMEOUT).json()["rate"] == 0
    assert not sandbox.chaos.active


def test_the_effects_ledger_and_counters_survive_a_restart(tmp_path: Path) -> None:
    journal = tmp_path / "expertsender.jsonl"
    with ExpertSenderSandbox(API_KEY, state_path=journal) as first:
        assert upsert(first, jane("op:1")).status_code == 201
        deleted = requests.delete(
            f"{first.url}/customers/email/jane@example.com", headers={"x-api-key": API_KEY}, timeout=TIMEOUT
        )
        assert deleted.status_code == 200
    # the process is gone; a new one on the same journal reads the same ledger and counters
    with ExpertSenderSandbox(API_KEY, state_path=journal) as second:
        assert upsert(second, jane("op:1")).status_code == 201
        page = requests.get(f"{second.url}/_sandbox/state/effects", timeout=TIMEOUT).json()
        assert page["items"] == [
            {"kind": "upsert", "key": "jane@example.com|op:1", "count": 2},
            {"kind": "delete", "key": "jane@example.com|op:1", "count": 1},
        ]
        counts = requests.get(f"{second.url}/_sandbox/counters", timeout=TIMEOUT).json()
        assert counts["requests"] == 3
        assert counts["by_route"] == {"DELETE /customers/email/{id}": 1, "POST /customers": 2}


def test_dmhub_records_upserts_events_and_memberships_once_each() -> None:
    with DmHubSandbox("app", "secret") as dmhub:
        token = requests.get(
            f"{dmhub.url}/security/accesstoken",
            params={"grant_type": "client_credentials", "appid": "app", "secret": "secret"},
            timeout=TIMEOUT,
        ).json()["access_token"]
        params = {"access_token": token}
        identity = [{"identityType": "email", "identityValue": "Jane@Example.com"}]
        body = {"customer": {"email": "jane@example.com", "source": "op:4"}, "customerIdentities": identity}
        customer = requests.post(
            f"{dmhub.url}/v1/customerandidentities", params=params, json=body, timeout=TIMEOUT
        ).json()
        event = {"customerId": customer["id"], "event": "ping", "externalId": "req-1"}
        for _ in range(2):  # the second is refused as a duplicate: not an effect
            requests.post(f"{dmhub.url}/v1/customerevents", params=params, json=event, timeout=TIMEOUT)
        listed = requests.post(f"{dmhub.url}/v1/lists", params=params, json={"name": "VIP"}, timeout=TIMEOUT)
        member = {"items": [{"customerId": customer["id"], "listId": listed.json()["id"]}]}
        for _ in range(2):  # already a member the second time: not an effect
            requests.post(f"{dmhub.url}/v1/listMembersBatch", params=params, json=member, timeout=TIMEOUT)
        assert {(item["kind"], item["key"], item["count"]) for item in dmhub.effects()} == {
            ("upsert", "jane@example.com|op:4", 1),
            ("event", "req-1", 1),
            ("membership", f"{listed.json()['id']}/{customer['id']}", 1),
        }


def test_op_markers_keys_and_routes() -> None:
    assert op_marker({"a": [1, {"b": "x"}, {"c": "op:9.1"}], "d": "op:0"}) == "op:9.1"
    assert op_marker({"a": "operation"}) is None
    assert effect_key("jane@example.com", {"source": "op:2"}) == "jane@example.com|op:2"
    assert effect_key("x", {"b": 1, "a": 2}) == effect_key("x", {"a": 2, "b": 1})
    assert effect_key("x", {"a": 1}).startswith("x|#")
    assert route_of("/v1/customers/12") == "/v1/customers/{id}"
    assert route_of("/customers/email/jane@example.com") == "/customers/email/{id}"
    assert route_of(f"{BASE_PATH}/customers/0a1b2c3d4e5f60718293a4b5c6") == f"{BASE_PATH}/customers/{{id}}"
