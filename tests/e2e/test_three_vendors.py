"""End to end on the embedded stack with the shipped config: the demo group key fans one record out to
ExpertSender CDP, Convertlab DM Hub and CRM CareCloud (their sandboxes), events reach DM Hub, and the token
vendors' tokens are fetched once and renewed once when they stop working mid-run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_aws4auth import AWS4Auth

from forwarder_local.sandboxes.carecloud import CareCloudSandbox
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox
from forwarder_local.stack import EmbeddedStack, StackOptions
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def options(state_dir: Path) -> StackOptions:
    return StackOptions(
        state_dir=state_dir,
        port=0,
        sandbox_port=0,
        retry_base_seconds=0.2,
        retry_max_seconds=1.0,
        poll_window_seconds=0.05,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(options(tmp_path / "state")) as running:
        yield running


class Demo:
    """The demo client, signing requests to the running stack, and the stack's three sandboxes."""

    def __init__(self, stack: EmbeddedStack) -> None:
        first = stack.first_client()
        assert first is not None
        _, self.group_key, access_key, secret_key = first
        self.auth = AWS4Auth(access_key, secret_key, "us-east-1", "execute-api")
        assert stack.gateway is not None
        self.url = stack.gateway.url
        expertsender, dmhub, carecloud = (
            stack.sandboxes[name] for name in ("expertsender", "dmhub", "carecloud")
        )
        assert isinstance(expertsender, ExpertSenderSandbox)
        assert isinstance(dmhub, DmHubSandbox)
        assert isinstance(carecloud, CareCloudSandbox)
        self.expertsender, self.dmhub, self.carecloud = expertsender, dmhub, carecloud

    def send(self, path: str, data: dict[str, Any]) -> requests.Response:
        response = requests.post(
            self.url + path, json={"data": data, "group_key": self.group_key}, auth=self.auth, timeout=10
        )
        assert response.status_code == 202, response.text
        return response

    def everywhere(self, email: str) -> bool:
        return bool(
            self.expertsender.find(email=email)
            and self.dmhub.find_customer("email", email)
            and self.carecloud.find(email=email)
        )


def test_one_contact_with_tags_lands_in_all_three_vendors(stack: EmbeddedStack) -> None:
    demo = Demo(stack)
    # when one contact with tags is sent
    demo.send(
        "/v1/contacts",
        {
            "email": "Jane@Example.com",
            "first_name": "Jane",
            "city": "Oslo",
            "tags": ["vip", "newsletter"],
            "loyalty_tier": "gold",
            "flavours": ["Sorbet"],
        },
    )
    wait_for(lambda: demo.everywhere("jane@example.com"), what="the customer at all three vendors")
    # (a DM Hub contact's list memberships and a CareCloud customer's records follow the customer's write)
    wait_for(
        lambda: len((demo.dmhub.find_customer("email", "jane@example.com") or {}).get("lists", [])) == 2,
        what="the DM Hub memberships",
    )
    wait_for(
        lambda: demo.carecloud.interest_records(demo.carecloud.find(email="jane@example.com")["customer_id"]),
        what="the CareCloud interest record",
    )
    # then ExpertSender has the customer with its attributes
    customer = demo.expertsender.find(email="jane@example.com")
    assert (
        customer is not None and {"name": "Tags", "value": "vip,newsletter"} in customer["customAttributes"]
    )
    # and DM Hub has the customer in the lists its tags name (created on first use)
    found = demo.dmhub.find_customer("email", "jane@example.com")
    assert found is not None and found["name"] == "Jane" and found["attr1"] == "gold"
    names = {item["id"]: item["name"] for item in demo.dmhub.lists()}
    assert sorted(names[list_id] for list_id in found["lists"]) == ["NEWSLETTER", "VIP"]
    # and CareCloud has the customer with its property record and interest
    carecloud = demo.carecloud.find(email="jane@example.com")
    assert carecloud is not None
    assert carecloud["personal_information"]["address"]["city"] == "Oslo"
    properties = demo.carecloud.property_records(carecloud["customer_id"])
    assert [(item["property_id"], item["property_value"]) for item in properties] == [
        ("loyalty_tier", "gold")
    ]
    assert [item["interest_id"] for item in demo.carecloud.interest_records(carecloud["customer_id"])] == [
        "87d706e4864d02b01"
    ]


def test_an_event_lands_in_dm_hub_once(stack: EmbeddedStack) -> None:
    demo = Demo(stack)
    response = demo.send(
        "/v1/events",
        {"email": "buyer@example.com", "event": "purchase", "order_value": 12.5, "currency": "EUR"},
    )
    event = wait_for(lambda: demo.dmhub.events(), what="the event in DM Hub")[0]
    assert event["event"] == "purchase" and event["attr1"] == 12.5 and event["attr2"] == "EUR"
    assert event["externalId"] == response.json()["request_id"]
    customer = demo.dmhub.find_customer("email", "buyer@example.com")
    assert customer is not None and event["customerId"] == customer["id"]


def test_expiring_every_token_mid_run_loses_nothing_and_renews_each_once(stack: EmbeddedStack) -> None:
    demo = Demo(stack)
    # given a run under way, with the token vendors' tokens fetched once
    for index in range(20):
        demo.send("/v1/contacts", {"email": f"early{index}@example.com", "tags": ["early"]})
    wait_for(
        lambda: all(demo.everywhere(f"early{index}@example.com") for index in range(20)),
        what="the first records everywhere",
    )
    assert demo.dmhub.token_requests() == 1 and demo.carecloud.token_requests() == 1
    # when every token stops working in the middle of it
    for index in range(20):
        demo.send("/v1/contacts", {"email": f"late{index}@example.com", "tags": ["late"]})
        if index == 5:
            demo.dmhub.expire_tokens()
            demo.carecloud.expire_tokens()
    # then every record still reaches every vendor
    wait_for(
        lambda: all(demo.everywhere(f"late{index}@example.com") for index in range(20)),
        what="the later records everywhere",
    )
    # with exactly one renewal per token vendor, and nothing rejected or dead-lettered
    assert demo.dmhub.token_requests() == 2 and demo.carecloud.token_requests() == 2
    assert stack.store.peek("rejects") == [] and stack.store.peek("delivery-dlq") == []
    late = next(item for item in demo.dmhub.lists() if item["name"] == "LATE")
    assert late["members"] == 20


def test_the_sandboxes_keep_their_state_and_tokens_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with EmbeddedStack(options(state)) as first:
        demo = Demo(first)
        demo.send("/v1/contacts", {"email": "kept@example.com", "tags": ["kept"]})
        wait_for(lambda: demo.everywhere("kept@example.com"), what="the customer everywhere")
    with EmbeddedStack(options(state)) as second:
        demo = Demo(second)
        # the vendors' data is still there, read back page by page
        assert demo.everywhere("kept@example.com")
        page = requests.get(demo.dmhub.url + "/_sandbox/state/customers?limit=1", timeout=5).json()
        assert page["total"] == 1 and page["next_offset"] is None
        # and the tokens stored before the restart still work: no new token is fetched
        demo.send("/v1/contacts", {"email": "after@example.com", "tags": ["kept"]})
        wait_for(lambda: demo.everywhere("after@example.com"), what="a customer after the restart")
        assert demo.dmhub.token_requests() == 1 and demo.carecloud.token_requests() == 1


def test_one_vendor_down_is_probed_about_once_an_interval_and_nothing_is_dead_lettered(
    tmp_path: Path,
) -> None:
    # given the stack, with a circuit probe every second (a minute by default)
    settings = options(tmp_path / "state")
    settings.circuit_probe_seconds = 1.0
    with EmbeddedStack(settings) as stack:
        demo = Demo(stack)
        # when ExpertSender goes down while 12 contacts come in
        demo.expertsender.inject(status=503, times=10_000, method="POST")
        for index in range(12):
            demo.send("/v1/contacts", {"email": f"outage{index}@example.com"})
        # then DM Hub and CareCloud are not held up
        wait_for(
            lambda: all(
                demo.dmhub.find_customer("email", f"outage{index}@example.com")
                and demo.carecloud.find(email=f"outage{index}@example.com")
                for index in range(12)
            ),
            what="the other vendors' deliveries",
        )
        # and after the circuit opened, ExpertSender sees about one probe a second, not a request per record
        time.sleep(3)
        tried = len([seen for seen in demo.expertsender.requests if seen.method == "POST"])
        assert tried <= 5 + 6, tried
        # when ExpertSender is back, the backlog drains by itself and nothing was dead-lettered
        demo.expertsender.reset()
        wait_for(
            lambda: all(demo.expertsender.find(email=f"outage{index}@example.com") for index in range(12)),
            what="the backlog at ExpertSender",
        )
        assert stack.store.peek("delivery-dlq") == [] and stack.store.peek("rejects") == []


def test_a_slow_vendor_does_not_hold_up_the_others(stack: EmbeddedStack) -> None:
    demo = Demo(stack)
    # given ExpertSender answering after 6 s
    demo.expertsender.set_latency(6.0)
    # when a contact for all three vendors is sent
    started = time.monotonic()
    demo.send("/v1/contacts", {"email": "patient@example.com", "first_name": "Pat"})
    # then DM Hub and CareCloud have it before ExpertSender has answered, not after
    wait_for(
        lambda: (
            demo.dmhub.find_customer("email", "patient@example.com")
            and demo.carecloud.find(email="patient@example.com")
        ),
        timeout=10,
        what="the contact at DM Hub and CareCloud",
    )
    assert time.monotonic() - started < 5.0, "they waited for ExpertSender's answer"
    # and ExpertSender gets it too
    wait_for(lambda: demo.expertsender.find(email="patient@example.com"), what="the contact at ExpertSender")
