"""The Convertlab DM Hub integration against the DM Hub sandbox, a real local HTTP server of the vendor API:
every list call of seed 003 through the client, contacts with their list memberships, events, deletes, how
failures are classified, that a v1 token (carried in the URL) never leaks, and the deliver flow fetching,
renewing or waiting for the one token DM Hub allows an application."""

from __future__ import annotations

import io
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder.config import ConfigError, load_config_text
from forwarder.contract import Action
from forwarder.flows.deliver import handle_batch
from forwarder.integrations.base import NO_CONTEXT, Outcome, RecordContext, RecordInvalid, TokenError, Verdict
from forwarder.integrations.dmhub import DmHub, DmHubClient, DmHubError, DmHubSettings
from forwarder.integrations.dmhub.client import ApiVersion, fetch_token
from forwarder.integrations.dmhub.integration import LIST_IDS
from forwarder.messages import DeliveryMessage
from forwarder.runtime import RuntimeSettings, Services
from forwarder_local.poller import sqs_event
from forwarder_local.queue import DurableQueueStore
from forwarder_local.sandboxes.dmhub import DmHubSandbox
from forwarder_local.stack import QUEUES
from forwarder_local.stores import EmbeddedQueues, LocalLocks, LocalSecretStore

APP_ID = "cl-app-7f3a"
SECRET = "cl-secret-9b1c"
SECRET_NAME = "forwarder/demo/dmhub"
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z, the sandbox's clock
UPSERT = "upsert_customer"
EVENT = "customer_event"
DELETE = "delete_customer"
ACTIONS = {UPSERT: Action.UPSERT_CONTACT, EVENT: Action.EVENT, DELETE: Action.DELETE_CONTACT}


class Clock:
    """The sandbox's clock, moved by hand (membership join dates)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> Iterator[DmHubSandbox]:
    """An old-version (API v1) application: its token travels in the query string."""
    with DmHubSandbox(APP_ID, SECRET, clock=clock) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(autouse=True)
def _no_cached_list_ids() -> Iterator[None]:
    """List name -> id is cached per process: each test starts (and ends) without it."""
    LIST_IDS.clear()
    yield
    LIST_IDS.clear()


def new_token(sandbox: DmHubSandbox, http: requests.Session) -> str:
    token, _ = fetch_token(sandbox.url, sandbox.api_version, APP_ID, SECRET, http, 5)
    return token


@pytest.fixture
def client(sandbox: DmHubSandbox, http: requests.Session) -> DmHubClient:
    return DmHubClient(sandbox.url, sandbox.api_version, new_token(sandbox, http), http)


def calls(sandbox: DmHubSandbox, method: str, path: str, since: int = 0) -> int:
    """How many vendor requests ``METHOD path`` the sandbox received (from the ``since``-th on)."""
    return sum(1 for seen in sandbox.requests[since:] if (seen.method, seen.path) == (method, path))


def new_customer(client: DmHubClient, email: str) -> int:
    return int(
        client.upsert_customer({"email": email}, [{"identityType": "email", "identityValue": email}])["id"]
    )


def verdicts(outcomes: list[Outcome]) -> list[Verdict]:
    return [outcome.verdict for outcome in outcomes]


class Hub:
    """The integration as validate (``prepare``) and deliver (``deliver``) use it, with one fetched token."""

    def __init__(self, sandbox: DmHubSandbox, http: requests.Session, **settings: Any) -> None:
        self.sandbox = sandbox
        self.http = http
        self.integration = DmHub()
        self.settings = DmHubSettings(api_version=sandbox.api_version, **settings)
        secret = {"app_id": APP_ID, "secret": SECRET, "base_url": sandbox.url}
        self.credentials = {**secret, **self.integration.fetch_token(self.settings, secret, http)}

    @property
    def token(self) -> str:
        return str(self.credentials["access_token"])

    def client(self) -> DmHubClient:
        return DmHubClient(self.sandbox.url, self.settings.api_version, self.token, self.http)

    def deliver(
        self,
        operation: str,
        records: list[dict[str, Any]],
        contexts: list[RecordContext] | None = None,
        credentials: dict[str, Any] | None = None,
    ) -> list[Outcome]:
        """Prepare each mapped record, then deliver them all in one call."""
        contexts = contexts or [NO_CONTEXT] * len(records)
        payloads = [
            self.integration.prepare(operation, record, self.settings, context)
            for record, context in zip(records, contexts, strict=True)
        ]
        return self.integration.deliver(
            operation, payloads, self.settings, credentials or self.credentials, self.http
        )


def emails(count: int) -> list[str]:
    return [f"person{n}@example.com" for n in range(count)]


# --- every list call of seed 003, through the client --------------------------------------------------------


@pytest.mark.parametrize("api_version", ["v1", "v2"])
def test_each_api_version_fetches_its_token_and_presents_it_its_own_way(
    api_version: ApiVersion, clock: Clock, http: requests.Session
) -> None:
    with DmHubSandbox(APP_ID, SECRET, api_version=api_version, clock=clock) as sandbox:
        # when a token is fetched and a list created and listed with it
        token, lifetime = fetch_token(sandbox.url, sandbox.api_version, APP_ID, SECRET, http, 5)
        client = DmHubClient(sandbox.url, sandbox.api_version, token, http)
        created = client.create_list("VIP")
        listed = [found["id"] for found in client.iter_lists()]

        # then the token came from the generation's own token call, and both calls were accepted
        assert (lifetime, sandbox.token_requests()) == (7200, 1)
        assert listed == [created["id"]]
        token_call, *data_calls = sandbox.requests
        assert token_call.path == {"v1": "/security/accesstoken", "v2": "/v2/oauth2/token"}[api_version]
        # v1: ?access_token= (a Bearer header is ignored by v1); v2: Authorization: Bearer, not in the URL
        assert len(data_calls) == 2
        for call in data_calls:
            if api_version == "v1":
                assert call.query["access_token"] == ["***"] and "authorization" not in call.headers
            else:
                assert call.headers["authorization"] == "***" and "access_token" not in call.query


@pytest.mark.parametrize(("application", "asked"), [("v1", "v2"), ("v2", "v1")])
def test_a_token_call_of_the_wrong_application_generation_is_refused_saying_so(
    application: ApiVersion, asked: ApiVersion, clock: Clock, http: requests.Session
) -> None:
    with DmHubSandbox(APP_ID, SECRET, api_version=application, clock=clock) as sandbox:
        with pytest.raises(TokenError) as raised:
            fetch_token(sandbox.url, asked, APP_ID, SECRET, http, 5)
        assert "permission is not enough" in str(raised.value)
        assert SECRET not in str(raised.value)
        assert sandbox.token_requests() == 0


def test_create_list_makes_an_empty_list_dm_hub_holds(client: DmHubClient, sandbox: DmHubSandbox) -> None:
    created = client.create_list("VIP")

    assert created["name"] == "VIP" and created["id"] > 0
    assert [(found["id"], found["name"], found["members"]) for found in sandbox.lists()] == [
        (created["id"], "VIP", 0)
    ]


def test_delete_list_removes_the_list_and_its_memberships_but_keeps_the_customers(
    client: DmHubClient, sandbox: DmHubSandbox
) -> None:
    # given jane in two lists
    jane = new_customer(client, "jane@example.com")
    vip, other = client.create_list("VIP")["id"], client.create_list("OTHER")["id"]
    client.add_member(jane, vip)
    client.add_member(jane, other)

    # when one list is deleted
    client.delete_list(vip)

    # then the list is gone, jane stays, in the other list only
    assert [found["name"] for found in sandbox.lists()] == ["OTHER"]
    customer = sandbox.find_customer("email", "jane@example.com")
    assert customer is not None and customer["id"] == jane and customer["lists"] == [other]
    # and deleting it again names the missing list
    with pytest.raises(DmHubError) as raised:
        client.delete_list(vip)
    assert raised.value.not_found and f"list {vip} does not exist" in str(raised.value)


def test_lists_page_sorts_and_pages_as_asked(client: DmHubClient, sandbox: DmHubSandbox) -> None:
    for name in ("delta", "alpha", "echo", "charlie", "bravo"):
        client.create_list(name)

    second = client.lists_page(rows=2, page=2, sidx="name", sord="desc")
    last = client.lists_page(rows=2, page=3, sidx="name", sord="asc")

    assert [found["name"] for found in second["rows"]] == ["charlie", "bravo"]
    assert (second["page"], second["records"], second["total"]) == (2, 2, 3)  # total counts pages
    assert [found["name"] for found in last["rows"]] == ["echo"]
    query = sandbox.requests[-2].query
    assert (query["rows"], query["page"], query["sidx"], query["sord"]) == (["2"], ["2"], ["name"], ["desc"])


def test_iter_lists_pages_through_every_list(client: DmHubClient, sandbox: DmHubSandbox) -> None:
    created = [client.create_list(f"list-{n}")["id"] for n in range(7)]
    before = len(sandbox.requests)

    found = [item["id"] for item in client.iter_lists(rows=3)]

    assert found == created
    assert [seen.query["page"] for seen in sandbox.requests[before:]] == [["1"], ["2"], ["3"]]


def test_add_member_puts_one_customer_in_one_list_once(client: DmHubClient, sandbox: DmHubSandbox) -> None:
    jane = new_customer(client, "jane@example.com")
    vip = client.create_list("VIP")["id"]

    member = client.add_member(jane, vip)
    again = client.add_member(jane, vip)

    assert (member["customerId"], member["listId"]) == (jane, vip) and member["id"] > 0
    assert again["id"] == member["id"]  # already a member: the existing membership
    assert sandbox.members(vip) == [jane]


def test_add_members_adds_many_memberships_in_one_list_members_batch_call(
    client: DmHubClient, sandbox: DmHubSandbox
) -> None:
    people = [new_customer(client, email) for email in emails(3)]
    first, second = client.create_list("FIRST")["id"], client.create_list("SECOND")["id"]
    before = len(sandbox.requests)

    items = client.add_members(
        [{"customerId": person, "listId": first} for person in people]
        + [{"customerId": people[0], "listId": second}]
    )

    assert [(item["customerId"], item["listId"]) for item in items] == [
        *((person, first) for person in people),
        (people[0], second),
    ]
    assert sandbox.members(first) == people and sandbox.members(second) == [people[0]]
    assert [(seen.method, seen.path) for seen in sandbox.requests[before:]] == [
        ("POST", "/v1/listMembersBatch")
    ]
    # and a batch naming an unknown list is refused as a whole, naming the item
    with pytest.raises(DmHubError) as raised:
        client.add_members(
            [{"customerId": people[1], "listId": second}, {"customerId": people[1], "listId": 999}]
        )
    assert raised.value.outcome().verdict is Verdict.REJECTED and "items[1].listId" in str(raised.value)
    assert sandbox.members(second) == [people[0]]


def test_remove_member_deletes_one_membership_by_its_id(client: DmHubClient, sandbox: DmHubSandbox) -> None:
    jane, john = new_customer(client, "jane@example.com"), new_customer(client, "john@example.com")
    vip = client.create_list("VIP")["id"]
    membership = client.add_member(jane, vip)
    client.add_member(john, vip)

    client.remove_member(membership["id"])

    assert sandbox.members(vip) == [john]
    assert sandbox.find_customer("email", "jane@example.com") is not None


def test_remove_members_takes_several_customers_out_of_a_list_in_one_call(
    client: DmHubClient, sandbox: DmHubSandbox
) -> None:
    people = [new_customer(client, email) for email in emails(3)]
    vip = client.create_list("VIP")["id"]
    client.add_members([{"customerId": person, "listId": vip} for person in people])
    before = len(sandbox.requests)

    answer = client.remove_members(vip, people[:2])

    assert answer == {"removed": 2}
    assert sandbox.members(vip) == [people[2]]
    [call] = sandbox.requests[before:]
    assert (call.method, call.path) == ("POST", "/v1/listservice/removeFromList")
    assert call.query["customerIds"] == [f"{people[0]},{people[1]}"] and call.query["listId"] == [str(vip)]


def test_members_page_pages_by_keyset_both_ways_and_keeps_to_dm_hubs_row_limit(
    client: DmHubClient, sandbox: DmHubSandbox
) -> None:
    people = [new_customer(client, email) for email in emails(5)]
    vip, other = client.create_list("VIP")["id"], client.create_list("OTHER")["id"]
    ids = [client.add_member(person, vip)["id"] for person in people]
    client.add_member(people[0], other)

    ascending = client.members_page(list_id=vip, since_id=ids[1], rows=2, sidx="id", sord="asc")
    descending = client.members_page(list_id=vip, since_id=ids[3], rows=2, sidx="id", sord="desc")
    everyone = client.members_page(list_id=vip, rows=10000)

    assert [member["id"] for member in ascending] == [ids[2], ids[3]]
    assert [member["id"] for member in descending] == [ids[2], ids[1]]
    assert sorted(member["customerId"] for member in everyone) == people
    # DM Hub takes at most 10000 rows: more (or none) is refused before any call
    before = len(sandbox.requests)
    for rows in (10001, 0):
        with pytest.raises(ValueError, match="10000"):
            client.members_page(list_id=vip, rows=rows)
    assert len(sandbox.requests) == before


def test_iter_members_follows_the_keyset_over_several_pages(
    client: DmHubClient, sandbox: DmHubSandbox
) -> None:
    people = [new_customer(client, email) for email in emails(5)]
    vip, other = client.create_list("VIP")["id"], client.create_list("OTHER")["id"]
    members = client.add_members([{"customerId": person, "listId": vip} for person in people])
    client.add_member(people[0], other)
    before = len(sandbox.requests)

    found = list(client.iter_members(vip, rows=2))

    assert [member["id"] for member in found] == [member["id"] for member in members]
    assert [member["customerId"] for member in found] == people
    pages = [seen.query.get("sinceId") for seen in sandbox.requests[before:]]
    assert pages == [None, [str(members[1]["id"])], [str(members[3]["id"])]]


def test_member_count_counts_members_who_joined_within_the_window(
    client: DmHubClient, sandbox: DmHubSandbox, clock: Clock
) -> None:
    def at(moment: float) -> str:
        return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S")

    # given two members who joined at START and one 90 minutes later (within the token's 2 hours)
    people = [new_customer(client, email) for email in emails(3)]
    vip = client.create_list("VIP")["id"]
    client.add_member(people[0], vip)
    client.add_member(people[1], vip)
    clock.now = START + 5400
    client.add_member(people[2], vip)

    assert client.member_count(vip) == 3
    assert client.member_count(vip, joined_since=at(START + 3600)) == 1
    assert client.member_count(vip, joined_to=at(START + 3600)) == 2
    assert client.member_count(vip, joined_since=at(START), joined_to=at(START)) == 2  # bounds are inclusive
    assert client.member_count(vip, joined_since=at(START + 5401)) == 0


# --- contacts -------------------------------------------------------------------------------------------------


def test_a_new_customer_is_created_by_its_email_identity_with_its_fields(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    record = {
        "email": " Jane@Example.com ",
        "name": "Jane Doe",
        "mobile": "+86 15300830723",
        "gender": "female",
        "birthday": "1990-05-17",
        "city": "Shanghai",
        "attributes": {"attr1": "gold"},
    }

    [outcome] = hub.deliver(UPSERT, [record])

    assert outcome.verdict is Verdict.DELIVERED
    jane = sandbox.find_customer("email", "jane@example.com")
    assert jane is not None
    assert {
        key: jane.get(key) for key in ("email", "name", "mobile", "gender", "birthday", "city", "attr1")
    } == {
        "email": "jane@example.com",
        "name": "Jane Doe",
        "mobile": "+86 15300830723",
        "gender": 2,
        "birthday": "1990-05-17",
        "city": "Shanghai",
        "attr1": "gold",
    }
    assert [(item["identityType"], item["identityValue"]) for item in jane["identities"]] == [
        ("email", "jane@example.com")
    ]


def test_a_second_delivery_updates_the_customer_without_blanking_its_other_fields(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    hub.deliver(
        UPSERT,
        [{"email": "jane@example.com", "name": "Jane", "city": "Shanghai", "attributes": {"attr1": 1}}],
    )

    [outcome] = hub.deliver(UPSERT, [{"email": "JANE@example.com", "city": "Beijing"}])

    assert outcome.verdict is Verdict.DELIVERED
    [jane] = sandbox.customers()
    assert (jane["name"], jane["city"], jane["attr1"]) == ("Jane", "Beijing", 1)


def test_list_names_resolve_to_the_ids_of_existing_lists(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    client = hub.client()
    client.create_list("OTHER")
    vip = client.create_list("VIP")["id"]
    before = len(sandbox.requests)

    [outcome] = hub.deliver(UPSERT, [{"email": "jane@example.com", "lists": ["VIP"]}])

    assert outcome.verdict is Verdict.DELIVERED
    jane = sandbox.find_customer("email", "jane@example.com")
    assert jane is not None and jane["lists"] == [vip]
    assert calls(sandbox, "POST", "/v1/lists", since=before) == 0


def test_a_missing_list_is_created_once_when_create_missing_lists_allows_it(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)

    outcomes = hub.deliver(UPSERT, [{"email": email, "lists": ["NEW"]} for email in emails(2)])

    assert verdicts(outcomes) == [Verdict.DELIVERED] * 2
    [created] = sandbox.lists()
    assert (created["name"], created["members"]) == ("NEW", 2)
    assert calls(sandbox, "POST", "/v1/lists") == 1


def test_a_missing_list_is_not_created_by_default_and_its_record_waits_for_it(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given DM Hub has a list VIP but none named GHOST, and the integration may not create lists
    hub = Hub(sandbox, http)
    client = hub.client()
    vip = client.create_list("VIP")["id"]
    before = len(sandbox.requests)

    # when jane asks for VIP and GHOST, and john for VIP alone
    jane, john = hub.deliver(
        UPSERT,
        [
            {"email": "jane@example.com", "lists": ["VIP", "GHOST"]},
            {"email": "john@example.com", "lists": ["VIP"]},
        ],
    )

    # then jane is retried, with a reason naming the missing list; no list was created; john is delivered
    assert jane.verdict is Verdict.RETRY
    assert "'GHOST'" in jane.reason and "'VIP'" not in jane.reason and "create_missing_lists" in jane.reason
    assert john.verdict is Verdict.DELIVERED
    assert [found["name"] for found in sandbox.lists()] == ["VIP"]
    assert calls(sandbox, "POST", "/v1/lists", since=before) == 0
    john_at_vendor = sandbox.find_customer("email", "john@example.com")
    assert john_at_vendor is not None and john_at_vendor["lists"] == [vip]

    # and once someone creates GHOST in DM Hub, the retry finds it (the cached names are looked up again)
    ghost = client.create_list("GHOST")["id"]
    [retried] = hub.deliver(UPSERT, [{"email": "jane@example.com", "lists": ["VIP", "GHOST"]}])
    assert retried.verdict is Verdict.DELIVERED
    jane_at_vendor = sandbox.find_customer("email", "jane@example.com")
    assert jane_at_vendor is not None and jane_at_vendor["lists"] == sorted([vip, ghost])


def test_memberships_of_a_delivery_go_in_list_members_batch_calls_of_list_batch_size(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True, list_batch_size=5)
    records = [{"email": email, "lists": ["VIP", "NEWSLETTER"]} for email in emails(7)]

    outcomes = hub.deliver(UPSERT, records)

    assert verdicts(outcomes) == [Verdict.DELIVERED] * 7
    pairs = 7 * 2
    batches = [seen for seen in sandbox.requests if seen.path == "/v1/listMembersBatch"]
    assert len(batches) == math.ceil(pairs / 5)
    assert [len(seen.body["items"]) for seen in batches] == [5, 5, 4]
    assert calls(sandbox, "POST", "/v1/listMembers") == 0
    ids = {found["name"]: found["id"] for found in sandbox.lists()}
    assert {customer["email"]: customer["lists"] for customer in sandbox.customers()} == {
        email: sorted([ids["VIP"], ids["NEWSLETTER"]]) for email in emails(7)
    }


def test_remove_lists_takes_customers_out_with_one_remove_from_list_call_per_list(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)
    hub.deliver(UPSERT, [{"email": email, "lists": ["A", "B"]} for email in emails(3)])
    ids = {found["name"]: found["id"] for found in sandbox.lists()}
    before = len(sandbox.requests)

    outcomes = hub.deliver(UPSERT, [{"email": email, "remove_lists": ["A"]} for email in emails(3)])

    assert verdicts(outcomes) == [Verdict.DELIVERED] * 3
    assert sandbox.members(ids["A"]) == []
    assert [customer["lists"] for customer in sandbox.customers()] == [[ids["B"]]] * 3
    [removal] = [seen for seen in sandbox.requests[before:] if seen.path == "/v1/listservice/removeFromList"]
    people = [customer["id"] for customer in sandbox.customers()]
    assert removal.query["customerIds"] == [",".join(map(str, people))]
    assert removal.query["listId"] == [str(ids["A"])]


def test_list_ids_are_cached_so_a_second_delivery_does_not_page_the_lists_again(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)

    hub.deliver(UPSERT, [{"email": "jane@example.com", "lists": ["VIP"]}])
    hub.deliver(UPSERT, [{"email": "john@example.com", "lists": ["VIP"]}])

    assert calls(sandbox, "GET", "/v1/lists") == 1
    [vip] = sandbox.lists()
    assert vip["members"] == 2
    # and a process without the cache pages them again (and still creates VIP only once)
    LIST_IDS.clear()
    hub.deliver(UPSERT, [{"email": "joan@example.com", "lists": ["VIP"]}])
    assert calls(sandbox, "GET", "/v1/lists") == 2
    assert calls(sandbox, "POST", "/v1/lists") == 1


def test_a_list_deleted_in_dm_hub_after_its_id_was_cached_is_retried_not_rejected(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given VIP's id cached by a first delivery, then the list deleted in DM Hub
    hub = Hub(sandbox, http, create_missing_lists=True)
    hub.deliver(UPSERT, [{"email": "jane@example.com", "lists": ["VIP"]}])
    [vip] = sandbox.lists()
    hub.client().delete_list(int(vip["id"]))
    # when a record names VIP again
    [outcome] = hub.deliver(UPSERT, [{"email": "john@example.com", "lists": ["VIP"]}])
    # then it is retried, saying the list was deleted, instead of being rejected for good
    assert outcome.verdict is Verdict.RETRY, outcome
    assert "deleted since their names were looked up" in outcome.reason
    # and the retry resolves the name again: VIP is created anew and john is in it
    [delivered] = hub.deliver(UPSERT, [{"email": "john@example.com", "lists": ["VIP"]}])
    assert delivered.verdict is Verdict.DELIVERED
    [new_vip] = sandbox.lists()
    assert new_vip["id"] != vip["id"] and new_vip["members"] == 1


# --- a thousand contacts ----------------------------------------------------------------------------------------


def test_a_thousand_contacts_with_tags_go_out_with_one_token_and_batched_memberships(
    sandbox: DmHubSandbox, http: requests.Session, make_world: Callable[..., World]
) -> None:
    # given 1,000 contacts queued, each tagged NEWSLETTER and one of four cohorts, and no token stored yet
    world = make_world(sandbox, http)
    people = emails(1000)
    world.queue(
        UPSERT,
        [
            {"email": email, "name": f"Person {n}", "lists": ["NEWSLETTER", f"COHORT-{n % 4}"]}
            for n, email in enumerate(people)
        ],
    )
    # when the deliver flow takes them 100 at a time, as the template's event source does
    world.run(batch=100)
    # then every one is delivered, and DM Hub issued one token, fetched by the flow and shared by all
    assert world.failures() == [] and world.bodies("rejects") == [] and world.bodies("delivery-dlq") == []
    assert sandbox.token_requests() == 1
    assert world.secret()["access_token"]
    # and the memberships went in listMembersBatch calls (200 per 100 records, list_batch_size 500), never
    # one by one
    assert calls(sandbox, "POST", "/v1/listMembersBatch") == 10
    assert calls(sandbox, "POST", "/v1/listMembers") == 0
    # and the lists were looked up once (and once more under each new list's lease) and created once each
    assert calls(sandbox, "GET", "/v1/lists") == 1 + 5 and calls(sandbox, "POST", "/v1/lists") == 5
    # and every customer is at DM Hub, in its lists
    ids = {found["name"]: found["id"] for found in sandbox.lists()}
    held = {customer["email"]: customer["lists"] for customer in sandbox.customers()}
    assert held == {
        email: sorted([ids["NEWSLETTER"], ids[f"COHORT-{n % 4}"]]) for n, email in enumerate(people)
    }


def test_two_deliveries_creating_the_same_list_at_once_create_it_once(
    sandbox: DmHubSandbox, http: requests.Session, tmp_path: Path
) -> None:
    # given two containers (shared leases) delivering a contact each to a list that does not exist yet
    hub = Hub(sandbox, http, create_missing_lists=True)
    sandbox.set_latency(0.1)  # every call slow: both containers miss the list before either creates it
    start = threading.Barrier(2, timeout=10)
    results: list[list[Outcome]] = []
    leases = {email: LocalLocks(tmp_path / "locks.db") for email in ("a@example.com", "b@example.com")}

    def container(email: str) -> None:
        locks = leases[email]
        payload = hub.integration.prepare(UPSERT, {"email": email, "lists": ["VIP"]}, hub.settings)
        start.wait()
        results.append(
            hub.integration.deliver(
                UPSERT, [payload], hub.settings, hub.credentials, requests.Session(), locks=locks
            )
        )

    threads = [
        threading.Thread(target=container, args=(email,)) for email in ("a@example.com", "b@example.com")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # then both are delivered into one list named VIP (DM Hub itself would accept two lists of that name)
    assert [outcome.verdict for result in results for outcome in result] == [Verdict.DELIVERED] * 2
    [vip] = sandbox.lists()
    assert vip["name"] == "VIP" and vip["members"] == 2
    assert calls(sandbox, "POST", "/v1/lists") == 1


@pytest.mark.parametrize("create_missing_lists", [False, True])
def test_leaving_a_list_that_does_not_exist_is_done_and_creates_nothing(
    sandbox: DmHubSandbox, http: requests.Session, create_missing_lists: bool
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=create_missing_lists)
    [outcome] = hub.deliver(UPSERT, [{"email": "jane@example.com", "remove_lists": ["NEVER"]}])
    assert outcome.verdict is Verdict.DELIVERED
    assert sandbox.lists() == [] and calls(sandbox, "POST", "/v1/listservice/removeFromList") == 0


def test_a_membership_batch_refused_as_a_whole_is_halved_so_good_records_are_delivered(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given four contacts joining VIP, and DM Hub refusing the first (whole) membership batch once
    hub = Hub(sandbox, http, create_missing_lists=True)
    hub.client().create_list("VIP")
    sandbox.inject(
        status=400,
        times=1,
        path_prefix="/v1/listMembersBatch",
        body={"error_code": 40000, "error_description": "items[2].customerId: customer 3 does not exist"},
    )
    # when they are delivered
    outcomes = hub.deliver(UPSERT, [{"email": email, "lists": ["VIP"]} for email in emails(4)])
    # then the batch is split and sent again in halves, and every record is delivered
    assert verdicts(outcomes) == [Verdict.DELIVERED] * 4
    sizes = [len(seen.body["items"]) for seen in sandbox.requests if seen.path == "/v1/listMembersBatch"]
    assert sizes == [4, 2, 2]
    assert sandbox.lists()[0]["members"] == 4


def test_a_token_refused_on_a_membership_call_stops_the_calls_and_sends_the_records_again(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given three contacts joining three lists, one membership call each, the first refused for its token
    hub = Hub(sandbox, http, create_missing_lists=True, list_batch_size=1)
    sandbox.inject(
        status=200,
        times=1,
        path_prefix="/v1/listMembersBatch",
        body={"error_code": 42001, "error_description": "access_token expired"},
    )
    outcomes = hub.deliver(
        UPSERT, [{"email": email, "lists": [f"L{n}"]} for n, email in enumerate(emails(3))]
    )
    # then no other membership call is made with that token, and all three are to be sent again after renewal
    assert calls(sandbox, "POST", "/v1/listMembersBatch") == 1
    assert all(outcome.token_refused for outcome in outcomes)


# --- events ---------------------------------------------------------------------------------------------------


def test_an_event_of_a_new_customer_creates_the_customer_and_records_the_event_under_the_request_id(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    context = RecordContext(request_id="req-0001", received_at="2024-05-01T10:00:00.123Z")
    record = {
        "email": "new@example.com",
        "event": "purchase",
        "target_id": "sku-1",
        "target_name": "Sneakers",
        "attributes": {"attr1": 99.5, "attr2": "EUR"},
    }

    [outcome] = hub.deliver(EVENT, [record], [context])

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 201)
    customer = sandbox.find_customer("email", "new@example.com")
    assert customer is not None
    [event] = sandbox.events()
    assert event == {
        "id": event["id"],
        "customerId": customer["id"],
        "event": "purchase",
        "date": "2024-05-01T10:00:00Z",  # the request's received_at, in DM Hub's form
        "targetId": "sku-1",
        "targetName": "Sneakers",
        "attr1": 99.5,
        "attr2": "EUR",
        "externalId": "req-0001",
    }


def test_an_event_of_a_known_customer_is_recorded_on_that_customer(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    hub.deliver(UPSERT, [{"email": "jane@example.com", "name": "Jane"}])
    before = len(sandbox.requests)

    [outcome] = hub.deliver(
        EVENT, [{"email": "jane@example.com", "event": "login"}], [RecordContext("req-7")]
    )

    assert outcome.verdict is Verdict.DELIVERED
    [jane] = sandbox.customers()
    [event] = sandbox.events()
    assert (event["customerId"], event["externalId"]) == (jane["id"], "req-7")
    assert calls(sandbox, "POST", "/v1/customerandidentities", since=before) == 0


def test_the_same_event_delivered_twice_is_recorded_once(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    record = {"email": "jane@example.com", "event": "purchase"}
    context = RecordContext("req-42", "2024-05-01T10:00:00.000Z")

    # when a delivery is retried after its acknowledgement was lost
    [first] = hub.deliver(EVENT, [record], [context])
    [second] = hub.deliver(EVENT, [record], [context])

    # then DM Hub's "duplicate" answer counts as delivered, and it holds one event
    assert [first.verdict, second.verdict] == [Verdict.DELIVERED, Verdict.DELIVERED]
    assert second.vendor_status == 400
    assert len(sandbox.events()) == 1
    # while another request's event is a second event
    hub.deliver(EVENT, [record], [RecordContext("req-43", "2024-05-01T10:00:00.000Z")])
    assert [event["externalId"] for event in sandbox.events()] == ["req-42", "req-43"]


def test_an_event_date_defaults_to_received_at_and_is_sent_in_utc_seconds(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    records = [
        {"email": "jane@example.com", "event": "login"},
        {"email": "jane@example.com", "event": "purchase", "date": "2024-06-01T12:30:45+02:00"},
    ]
    contexts = [
        RecordContext("req-1", "2024-05-01T10:00:00.999Z"),
        RecordContext("req-2", "2024-06-02T00:00:00Z"),
    ]

    outcomes = hub.deliver(EVENT, records, contexts)

    assert verdicts(outcomes) == [Verdict.DELIVERED] * 2
    assert [event["date"] for event in sandbox.events()] == ["2024-05-01T10:00:00Z", "2024-06-01T10:30:45Z"]


def test_an_event_name_of_32_characters_is_dm_hubs_limit_and_is_delivered(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    [outcome] = hub.deliver(EVENT, [{"email": "jane@example.com", "event": "e" * 32}], [RecordContext("r")])
    assert outcome.verdict is Verdict.DELIVERED
    assert [event["event"] for event in sandbox.events()] == ["e" * 32]


# --- deletes --------------------------------------------------------------------------------------------------


def test_a_delete_by_identity_removes_the_customer(sandbox: DmHubSandbox, http: requests.Session) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)
    hub.deliver(UPSERT, [{"email": "jane@example.com", "lists": ["VIP"]}, {"email": "john@example.com"}])

    [outcome] = hub.deliver(DELETE, [{"email": "Jane@Example.com"}])

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 204)
    assert sandbox.find_customer("email", "jane@example.com") is None
    assert [customer["email"] for customer in sandbox.customers()] == ["john@example.com"]
    assert [found["members"] for found in sandbox.lists()] == [0]


def test_deleting_an_unknown_customer_is_delivered(sandbox: DmHubSandbox, http: requests.Session) -> None:
    hub = Hub(sandbox, http)

    before = len(sandbox.requests)

    [outcome] = hub.deliver(DELETE, [{"email": "nobody@example.com"}])

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 404)
    assert [(seen.method, seen.path) for seen in sandbox.requests[before:]] == [
        ("GET", "/v1/customeridentities")
    ]


def test_a_customer_gone_between_lookup_and_delete_is_delivered(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http)
    hub.deliver(UPSERT, [{"email": "jane@example.com"}])
    sandbox.inject(
        status=404,
        method="DELETE",
        path_prefix="/v1/customers/",
        body={"error_code": 40400, "error_description": "customer 1 does not exist"},
    )

    [outcome] = hub.deliver(DELETE, [{"email": "jane@example.com"}])

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 404)


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/customerandidentities", "/v1/listMembersBatch"])
def test_an_http_200_carrying_an_error_code_is_rejected_with_the_vendors_words(
    path: str, sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)
    words = "customer.city: is 300 characters long; at most 255 are allowed"
    sandbox.inject(status=200, path_prefix=path, body={"error_code": 40000, "error_description": words})

    [outcome] = hub.deliver(UPSERT, [{"email": "jane@example.com", "city": "Shanghai", "lists": ["VIP"]}])

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.REJECTED, 200)
    assert "error_code 40000" in outcome.reason and words in outcome.reason and path in outcome.reason
    assert outcome.errors == [words]
    if path == "/v1/customerandidentities":
        assert sandbox.customers() == []


@pytest.mark.parametrize(
    ("api_version", "status", "body"),
    [
        ("v1", 429, None),
        ("v1", 503, None),
        ("v2", 400, {"success": False, "error": {"code": 400013, "message": "call quota exceeded"}}),
    ],
    ids=["429", "503", "v2-400013"],
)
def test_throttling_and_outages_are_retried_after_the_vendors_retry_after(
    api_version: ApiVersion, status: int, body: dict[str, Any] | None, clock: Clock, http: requests.Session
) -> None:
    with DmHubSandbox(APP_ID, SECRET, api_version=api_version, clock=clock) as sandbox:
        hub = Hub(sandbox, http)
        sandbox.inject(status=status, retry_after=42, path_prefix="/v1/customerandidentities", body=body)

        [first] = hub.deliver(UPSERT, [{"email": "jane@example.com"}])
        [second] = hub.deliver(UPSERT, [{"email": "jane@example.com"}])

        assert (first.verdict, first.vendor_status, first.retry_after) == (Verdict.RETRY, status, 42.0)
        assert not first.token_refused
        assert second.verdict is Verdict.DELIVERED
        assert len(sandbox.customers()) == 1


def _records_of(operation: str) -> list[dict[str, Any]]:
    if operation == EVENT:
        return [{"email": email, "event": "login"} for email in emails(3)]
    return [{"email": email} for email in emails(3)]


@pytest.mark.parametrize("api_version", ["v1", "v2"])
@pytest.mark.parametrize("operation", [UPSERT, EVENT, DELETE])
@pytest.mark.parametrize("how", ["expired", "replaced"])
def test_a_refused_token_asks_for_a_renewal_and_the_rest_of_the_batch_is_not_sent(
    how: str, operation: str, api_version: ApiVersion, clock: Clock, http: requests.Session
) -> None:
    with DmHubSandbox(APP_ID, SECRET, api_version=api_version, clock=clock) as sandbox:
        # given three customers, and a token that has expired, or been replaced by another process's fetch
        hub = Hub(sandbox, http)
        hub.deliver(UPSERT, [{"email": email} for email in emails(3)])
        if how == "expired":
            sandbox.expire_tokens()
        else:
            new_token(sandbox, http)
        before = len(sandbox.requests)

        # when three records are delivered with it
        contexts = [RecordContext(f"req-{n}", "2024-05-01T10:00:00Z") for n in range(3)]
        outcomes = hub.deliver(operation, _records_of(operation), contexts)

        # then each is kept for a retry with a renewed token, and only the first was sent
        assert all(outcome.token_refused and outcome.verdict is Verdict.RETRY for outcome in outcomes)
        code = {"expired": "42001", "replaced": "40014"}[how]
        assert f"error_code {code}" in outcomes[0].reason
        assert len(sandbox.requests) - before == 1
        assert len(sandbox.customers()) == 3 and sandbox.events() == []


def test_a_token_refused_mid_batch_is_used_for_no_further_call(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given a list VIP, and DM Hub expiring the token right after the first customer of a batch
    hub = Hub(sandbox, http)
    hub.client().create_list("VIP")

    def expire_after_an_upsert(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if response.request.path_url.startswith("/v1/customerandidentities"):
            sandbox.expire_tokens()

    http.hooks["response"].append(expire_after_an_upsert)
    before = len(sandbox.requests)

    # when three customers joining VIP are delivered
    outcomes = hub.deliver(UPSERT, [{"email": email, "lists": ["VIP"]} for email in emails(3)])

    # then all three are sent again after the renewal (the first still lacks its membership), and after the
    # refused upsert no call (list look-up, membership, customer) was made with the refused token
    assert all(outcome.token_refused for outcome in outcomes)
    assert [(seen.method, seen.path) for seen in sandbox.requests[before:]] == [
        ("POST", "/v1/customerandidentities")
    ] * 2


def test_a_token_call_that_echoes_its_url_leaks_no_secret(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    echo = f"upstream failed: GET /security/accesstoken?grant_type=client_credentials&appid={APP_ID}&secret={SECRET}"
    sandbox.inject(
        status=502, path_prefix="/security/accesstoken", body={"error_code": 50200, "error_description": echo}
    )

    with pytest.raises(TokenError) as raised:
        fetch_token(sandbox.url, "v1", APP_ID, SECRET, http, 5)

    assert "upstream failed" in str(raised.value) and "error_code 50200" in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    ("operation", "mapped", "settings", "problem"),
    [
        (UPSERT, {"name": "Jane"}, {}, "field 'email' is required"),
        (UPSERT, {"email": "jane@example"}, {}, "'jane@example' is not a valid e-mail address"),
        (UPSERT, {"email": "jane@example.com", "gender": "x"}, {}, "'x' is not male, female or unknown"),
        (UPSERT, {"mobile": "12"}, {"identity_type": "mobile"}, "not a mobile number in international form"),
        (DELETE, {}, {}, "field 'email' is required"),
        (EVENT, {"email": "jane@example.com"}, {}, "field 'event' is required"),
        (EVENT, {"email": "jane@example.com", "event": "e" * 33}, {}, "longer than DM Hub's 32 characters"),
        (EVENT, {"email": "jane@example.com", "event": "x", "date": "yesterday"}, {}, "field 'date'"),
    ],
)
def test_prepare_rejects_a_record_dm_hub_would_refuse_saying_why(
    operation: str, mapped: dict[str, Any], settings: dict[str, Any], problem: str
) -> None:
    with pytest.raises(RecordInvalid) as raised:
        DmHub().prepare(
            operation, mapped, DmHubSettings(**settings), RecordContext("r", "2024-05-01T10:00:00Z")
        )
    assert any(problem in error for error in raised.value.errors), raised.value.errors


def test_an_invalid_e_mail_that_is_also_the_identity_is_named_once() -> None:
    # given an e-mail identity (the default) and an invalid e-mail, checked as identity and as customer field
    with pytest.raises(RecordInvalid) as raised:
        DmHub().prepare(
            UPSERT, {"email": "jane@example"}, DmHubSettings(), RecordContext("r", "2024-05-01T10:00:00Z")
        )
    # then the rejection says it once
    assert raised.value.errors == ["field 'email': 'jane@example' is not a valid e-mail address"]


def config_text(
    contact_attribute: str = "attr20", event_attribute: str = "attr5", identity_type: str = "email"
) -> str:
    """A config with one DM Hub integration (contacts, events, delete), in YAML."""
    return f"""\
version: 1
clients:
  - name: demo
    principals: [arn:aws:iam::000000000000:user/forwarder-demo]
    group_keys: [demo]
group_keys:
  demo:
    integrations:
      - name: dmhub
        type: dmhub
        secret: {SECRET_NAME}
        settings:
          identity_type: {identity_type}
          create_missing_lists: true
          list_batch_size: 500
        contacts:
          mapping:
            - kind: string
              from: email
              to: email
              required: true
            - kind: list
              from: tags
              to: lists
            - kind: dynamic
              to: attributes
              fields:
                loyalty_tier: {contact_attribute}
        events:
          mapping:
            - kind: string
              from: email
              to: email
              required: true
            - kind: string
              from: event
              to: event
              required: true
            - kind: dynamic
              to: attributes
              fields:
                order_value: {event_attribute}
        delete:
          mapping:
            - kind: string
              from: email
              to: email
              required: true
"""


def test_a_config_with_dm_hub_attributes_attr20_and_attr5_is_accepted() -> None:
    config = load_config_text(config_text())

    integration = config.group_keys["demo"].integrations[0]
    assert isinstance(integration.parsed_settings, DmHubSettings)
    assert integration.parsed_settings.create_missing_lists is True


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"contact_attribute": "attr21"}, "DM Hub attributes are named attr1 ... attr20, not 'attr21'"),
        ({"contact_attribute": "loyalty"}, "DM Hub attributes are named attr1 ... attr20, not 'loyalty'"),
        ({"event_attribute": "attr6"}, "DM Hub attributes are named attr1 ... attr5, not 'attr6'"),
        ({"identity_type": "mobile"}, "settings.identity_type is mobile but no mapping fills 'mobile'"),
    ],
)
def test_check_config_refuses_mappings_dm_hub_would_refuse_every_record_of(
    changes: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_text(config_text(**changes))
    assert any(problem in found for found in raised.value.problems), raised.value.problems


class World:
    """The deliver flow on real local parts: durable queues, a local secret store, local locks, a config with
    one DM Hub integration, and the sandbox."""

    def __init__(
        self,
        tmp_path: Path,
        sandbox: DmHubSandbox,
        http: requests.Session,
        *,
        secret: str = SECRET,
        token: dict[str, Any] | None = None,
        **runtime_settings: Any,
    ) -> None:
        self.sandbox = sandbox
        tmp_path.mkdir(parents=True, exist_ok=True)
        config_path = tmp_path / "forwarder.yaml"
        config_path.write_text(config_text(), encoding="utf-8")
        self.store = DurableQueueStore(tmp_path / "q.db")
        for spec in QUEUES:
            self.store.create_queue(spec)
        self.secrets = LocalSecretStore(tmp_path / "s.json")
        stored = {"app_id": APP_ID, "secret": secret, "base_url": sandbox.url}
        if token is not None:
            stored.update(access_token=token["access_token"], expires_at=token["expires_at"])
        self.secrets.put(SECRET_NAME, stored)
        self.locks = LocalLocks(tmp_path / "locks.db")
        settings = RuntimeSettings(
            runtime="embedded",
            config_path=str(config_path),
            **{"retry_base_seconds": 1, "retry_max_seconds": 2, **runtime_settings},
        )
        self.services = Services(
            settings=settings,
            queues=EmbeddedQueues(self.store),
            secrets=self.secrets,
            locks=self.locks,
            http=http,
        )
        self.responses: list[dict[str, Any]] = []
        self.queued = 0

    def secret(self) -> dict[str, Any]:
        return self.secrets.get(SECRET_NAME)

    def set_secret(self, **changes: Any) -> None:
        self.secrets.put(SECRET_NAME, {**self.secret(), **changes})

    def queue(self, operation: str, records: list[dict[str, Any]]) -> list[str]:
        """Queue deliveries as validate does; returns their request ids."""
        settings = DmHubSettings(create_missing_lists=True)
        ids = []
        for record in records:
            self.queued += 1
            request_id = f"req-{self.queued}"
            received_at = "2024-05-01T10:00:00.000Z"
            message = DeliveryMessage(
                request_id=request_id,
                group_key="demo",
                action=ACTIONS[operation],
                integration="dmhub",
                integration_type="dmhub",
                operation=operation,
                payload=DmHub().prepare(operation, record, settings, RecordContext(request_id, received_at)),
                received_at=received_at,
            )
            identity = message.payload["identity"]["identityValue"]
            self.store.send("delivery", message.model_dump_json(), group_id=f"customer-{identity}")
            ids.append(request_id)
        return ids

    def run(self, batch: int = 10) -> None:
        """Feed the delivery queue to the deliver flow ``batch`` messages at a time, as the SQS event source
        does (messages not reported failed are deleted), until no message is visible."""
        while messages := self.store.receive("delivery", max_messages=batch):
            response = handle_batch(self.services, sqs_event(self.store.queue_arn("delivery"), messages))
            self.responses.append(response)
            failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
            for message in messages:
                if message.message_id not in failed:
                    self.store.delete("delivery", message.receipt_handle)

    def failures(self) -> list[dict[str, Any]]:
        return [failure for response in self.responses for failure in response["batchItemFailures"]]

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(message["body"]) for message in self.store.peek(queue, limit=10000)]

    def close(self) -> None:
        self.store.close()
        self.locks.close()


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Worlds in this test's folder, closed when it ends."""
    made: list[World] = []

    def make(sandbox: DmHubSandbox, http: requests.Session, **options: Any) -> World:
        made.append(World(tmp_path / str(len(made)), sandbox, http, **options))
        return made[-1]

    yield make
    for world in made:
        world.close()


# --- no token leaks ------------------------------------------------------------------------------------------


@pytest.fixture
def forwarder_log() -> Iterator[io.StringIO]:
    """Everything the forwarder's Powertools logger writes (JSON lines to stdout on Lambda), at DEBUG."""
    stdlib = logging.getLogger("forwarder")
    buffer = io.StringIO()
    handlers = [handler for handler in stdlib.handlers if isinstance(handler, logging.StreamHandler)]
    assert handlers, "the Powertools logger writes through a stream handler"
    streams = [handler.stream for handler in handlers]
    level = stdlib.level
    for handler in handlers:
        handler.setStream(buffer)
    stdlib.setLevel(logging.DEBUG)
    yield buffer
    stdlib.setLevel(level)
    for handler, stream in zip(handlers, streams, strict=True):
        handler.setStream(stream)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


LEAK_FAILURES = ["transport", "http_500", "error_code", "token_refused", "echoed_url"]


@pytest.mark.parametrize("failure", LEAK_FAILURES)
def test_the_v1_token_appears_in_no_reason_exception_or_log_whatever_fails(
    failure: str,
    sandbox: DmHubSandbox,
    http: requests.Session,
    make_world: Callable[..., World],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    forwarder_log: io.StringIO,
) -> None:
    caplog.set_level(logging.INFO)  # what Lambda runs at; DEBUG is checked below
    # given a v1 application (its token in every URL) holding jane, and a deliver flow whose secret holds the token
    hub = Hub(sandbox, http, create_missing_lists=True)
    hub.deliver(UPSERT, [{"email": "jane@example.com"}])
    token = hub.token
    world = make_world(sandbox, http, token=hub.credentials)
    base_url = sandbox.url
    # when every call fails in one way
    if failure == "transport":
        base_url = closed_port_url()
        world.set_secret(base_url=base_url)
    elif failure == "http_500":
        sandbox.inject(status=500, times=1000)
    elif failure == "error_code":
        sandbox.inject(
            status=200, times=1000, body={"error_code": 40000, "error_description": "invalid request"}
        )
    elif failure == "token_refused":
        sandbox.expire_tokens()
    else:  # a vendor (or a proxy before it) that echoes the request URL in its error
        echo = f"upstream failed: GET {sandbox.url}/v1/lists?access_token={token}"
        sandbox.inject(status=500, times=1000, body={"error_code": 50000, "error_description": echo})
    texts: list[str] = []
    credentials = {**hub.credentials, "base_url": base_url}
    contexts = [RecordContext("req-1", "2024-05-01T10:00:00Z")]
    for operation, record in (
        (UPSERT, {"email": "jane@example.com", "lists": ["VIP"]}),
        (EVENT, {"email": "jane@example.com", "event": "login"}),
        (DELETE, {"email": "jane@example.com"}),
    ):
        [outcome] = hub.deliver(operation, [record], contexts, credentials)
        assert outcome.verdict is not Verdict.DELIVERED
        texts += [outcome.reason, *outcome.errors, repr(outcome)]
    client = DmHubClient(base_url, "v1", token, http)
    attempts: list[Callable[[], Any]] = [
        lambda: client.create_list("VIP"),
        lambda: client.lists_page(rows=1),
        lambda: client.add_members([{"customerId": 1, "listId": 1}]),
        lambda: client.remove_members(1, [1]),
        lambda: client.member_count(1),
        lambda: client.find_customer("email", "jane@example.com"),
    ]
    for attempt in attempts:
        with pytest.raises(DmHubError) as raised:
            attempt()
        texts += [str(raised.value), repr(raised.value), raised.value.outcome().reason]
    # and the deliver flow sends a record, settles it, and logs what it did
    world.queue(UPSERT, [{"email": "jane@example.com", "lists": ["VIP"]}])
    world.run()

    renewed = str(world.secret().get("access_token"))
    out, err = capsys.readouterr()
    queued = [
        json.dumps(body) for name in ("delivery", "delivery-dlq", "rejects") for body in world.bodies(name)
    ]
    texts += [caplog.text, forwarder_log.getvalue(), out, err, *queued]
    # then neither the token (nor a renewed one, nor the secret) is in any of it
    assert forwarder_log.getvalue(), "the flow logged something: the check is not vacuous"
    for text in texts:
        assert token not in text
        assert renewed not in text
        assert SECRET not in text


def test_at_debug_level_no_log_line_holds_the_v1_token_or_the_secret(
    sandbox: DmHubSandbox, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    hub = Hub(sandbox, http)
    hub.deliver(UPSERT, [{"email": "jane@example.com"}])

    assert hub.token not in caplog.text and SECRET not in caplog.text
    # the request lines are still logged, with the credentials masked
    assert "/v1/customerandidentities?access_token=***" in caplog.text


# --- through the deliver flow ----------------------------------------------------------------------------------


def test_the_flow_fetches_one_token_when_none_is_stored_and_delivers_everything(
    sandbox: DmHubSandbox, http: requests.Session, make_world: Callable[..., World]
) -> None:
    # given a secret with the application's credentials but no token yet, and 25 contacts queued
    world = make_world(sandbox, http)
    world.queue(UPSERT, [{"email": email, "lists": ["VIP"]} for email in emails(25)])

    # when the deliver flow runs (three invocations of at most 10 messages)
    world.run()

    # then it fetched exactly one token, kept it in the secret, and delivered every contact
    assert sandbox.token_requests() == 1
    stored = world.secret()
    assert stored["access_token"] and float(stored["expires_at"]) > time.time() + 3600
    assert (len(world.responses), world.failures()) == (3, [])
    assert sorted(customer["email"] for customer in sandbox.customers()) == sorted(emails(25))
    [vip] = sandbox.lists()
    assert vip["members"] == 25
    assert world.bodies("delivery") == world.bodies("delivery-dlq") == world.bodies("rejects") == []


def test_a_token_expiring_mid_batch_is_renewed_once_and_nothing_is_lost(
    sandbox: DmHubSandbox, http: requests.Session, make_world: Callable[..., World]
) -> None:
    # given a stored token, and DM Hub expiring it right after the 4th customer of the run
    token = DmHub().fetch_token(
        DmHubSettings(), {"app_id": APP_ID, "secret": SECRET, "base_url": sandbox.url}, http
    )
    world = make_world(sandbox, http, token=token)
    upserts = refused = 0

    def expire_after_the_fourth(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        nonlocal upserts, refused
        body = response.json() if response.content else None
        if isinstance(body, dict) and body.get("error_code") in (40014, 42001):
            refused += 1
        if response.request.path_url.startswith("/v1/customerandidentities"):
            upserts += 1
            if upserts == 4:
                sandbox.expire_tokens()

    http.hooks["response"].append(expire_after_the_fourth)
    world.queue(UPSERT, [{"email": email, "lists": ["VIP"]} for email in emails(20)])

    # when the deliver flow runs
    world.run()

    # then exactly one call met the expired token, one new token was fetched (and stored), and every record
    # was delivered: of the first invocation's 10, the 4 upserted before the refusal were read back, not
    # upserted again (only their memberships were left), the refused one and the 5 not sent went out once
    # more, and the second invocation's 10 went out once
    assert refused == 1
    assert sandbox.token_requests() == 2
    assert world.secret()["access_token"] != token["access_token"]
    assert world.failures() == []
    assert sorted(customer["email"] for customer in sandbox.customers()) == sorted(emails(20))
    assert [found["members"] for found in sandbox.lists()] == [20]
    assert calls(sandbox, "POST", "/v1/customerandidentities") == 20 + 1
    assert world.bodies("delivery") == world.bodies("delivery-dlq") == world.bodies("rejects") == []


def test_records_wait_in_the_queue_when_dm_hub_refuses_a_token(
    sandbox: DmHubSandbox, http: requests.Session, make_world: Callable[..., World]
) -> None:
    # given a secret with a wrong secret key and no token
    world = make_world(sandbox, http, secret="not-the-secret")
    request_ids = world.queue(UPSERT, [{"email": email} for email in emails(5)])

    # when the deliver flow runs
    world.run()

    # then none is dead-lettered or rejected: each waits in the delivery queue, hidden for a backoff, with
    # no attempt spent, and DM Hub saw one token call and nothing else
    waiting = world.bodies("delivery")
    assert sorted(body["request_id"] for body in waiting) == sorted(request_ids)
    assert {message["state"] for message in world.store.peek("delivery")} == {"in_flight"}
    assert world.bodies("delivery-dlq") == world.bodies("rejects") == []
    assert [seen.path for seen in sandbox.requests] == ["/security/accesstoken"]
    assert sandbox.token_requests() == 0 and sandbox.customers() == []
    assert "access_token" not in world.secret()


def test_the_flow_waits_out_dm_hubs_retry_after(
    sandbox: DmHubSandbox, http: requests.Session, make_world: Callable[..., World]
) -> None:
    # given a throttled DM Hub asking for 120 s, and a backoff that alone would wait about a second
    world = make_world(sandbox, http, retry_base_seconds=1, retry_max_seconds=900)
    sandbox.inject(status=429, retry_after=120, path_prefix="/v1/customerandidentities")
    world.queue(UPSERT, [{"email": "jane@example.com"}])

    world.run()

    # then the record is reported failed and stays hidden for the vendor's 120 s
    assert len(world.failures()) == 1
    [message] = world.store.peek("delivery")
    assert message["state"] == "in_flight" and message["visible_at"] - time.time() > 100


def test_an_unanswered_upsert_is_read_back_as_applied_only_when_dm_hub_holds_all_of_it(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    hub = Hub(sandbox, http, create_missing_lists=True)
    record = {"email": "jane@example.com", "name": "Jane", "lists": ["VIP"], "remove_lists": ["OLD"]}
    payload = hub.integration.prepare(UPSERT, record, hub.settings)
    confirm = hub.integration.confirm
    # not applied yet: sent again
    assert confirm(UPSERT, [payload], hub.settings, hub.credentials, http) == [False]
    assert verdicts(hub.deliver(UPSERT, [record])) == [Verdict.DELIVERED]
    # applied (the customer, its fields, its list): not sent twice
    assert confirm(UPSERT, [payload], hub.settings, hub.credentials, http) == [True]
    # a list it is not in yet, or a field it does not hold: sent
    more = hub.integration.prepare(UPSERT, {**record, "lists": ["VIP", "GOLD"]}, hub.settings)
    other = hub.integration.prepare(UPSERT, {**record, "name": "Janet"}, hub.settings)
    assert confirm(UPSERT, [more, other], hub.settings, hub.credentials, http) == [False, False]
    # events and deletes need no read: the externalId, or a second delete finding nothing, keeps them once
    assert confirm(EVENT, [{}], hub.settings, hub.credentials, http) == [None]
    # a read that fails (DM Hub answers 503) is not "not applied": the delivery waits, still unanswered
    sandbox.inject(status=503, method="GET")
    [failed] = confirm(UPSERT, [payload], hub.settings, hub.credentials, http)
    assert isinstance(failed, Outcome) and failed.verdict is Verdict.RETRY and failed.ambiguous


def test_a_retry_after_a_failed_membership_call_does_not_upsert_the_customer_again(
    sandbox: DmHubSandbox, http: requests.Session
) -> None:
    # given a contact whose membership call failed after its customer was upserted
    hub = Hub(sandbox, http, create_missing_lists=True)
    sandbox.inject(status=503, times=1, path_prefix="/v1/listMembersBatch")
    record = {"email": "jane@example.com", "name": "Jane", "lists": ["VIP"]}
    assert verdicts(hub.deliver(UPSERT, [record])) == [Verdict.RETRY]
    upserts = calls(sandbox, "POST", "/v1/customerandidentities")
    # when it is delivered again, marked as tried before
    payload = hub.integration.prepare(UPSERT, record, hub.settings)
    outcomes = hub.integration.deliver(UPSERT, [payload], hub.settings, hub.credentials, http, retried=[True])
    # then only what was left is done: the customer is read, not upserted a second time, and joins its list
    assert verdicts(outcomes) == [Verdict.DELIVERED]
    assert calls(sandbox, "POST", "/v1/customerandidentities") == upserts == 1
    [vip] = sandbox.lists()
    assert vip["members"] == 1
