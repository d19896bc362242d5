"""The ExpertSender integration against the ExpertSender sandbox, a real local HTTP server of the vendor API."""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from forwarder.integrations.base import Outcome, RecordInvalid, Verdict
from forwarder.integrations.expertsender import ExpertSender, ExpertSenderSettings
from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox

UPSERT = "upsert_customer"
DELETE = "delete_customer"


@pytest.fixture(scope="module")
def api_key() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def sandbox(api_key: str) -> Iterator[ExpertSenderSandbox]:
    with ExpertSenderSandbox(api_key) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def integration() -> ExpertSender:
    return ExpertSender()


def credentials(sandbox: ExpertSenderSandbox, api_key: str) -> dict[str, Any]:
    return {"api_key": api_key, "base_url": sandbox.url}


def upsert(
    integration: ExpertSender,
    sandbox: ExpertSenderSandbox,
    api_key: str,
    http: requests.Session,
    mapped: list[dict[str, Any]],
    **settings: Any,
) -> list[Outcome]:
    """Prepare each mapped record as validate does, then deliver them as one batch as deliver does."""
    parsed = ExpertSenderSettings(**settings)
    payloads = [integration.prepare(UPSERT, record, parsed) for record in mapped]
    return integration.deliver(UPSERT, payloads, parsed, credentials(sandbox, api_key), http)


def delete(
    integration: ExpertSender,
    sandbox: ExpertSenderSandbox,
    api_key: str,
    http: requests.Session,
    mapped: dict[str, Any],
    **settings: Any,
) -> Outcome:
    parsed = ExpertSenderSettings(**settings)
    payload = integration.prepare(DELETE, mapped, parsed)
    (outcome,) = integration.deliver(DELETE, [payload], parsed, credentials(sandbox, api_key), http)
    return outcome


PEOPLE = [
    {"email": "anna@example.com", "firstName": "Anna", "customAttributes": {"City": "Oslo"}},
    {"email": "ben@example.com", "phone": "+48600100200"},
    {"email": "cleo@example.com", "lastName": "Nowak", "gender": "female"},
]


# --- delivering customers -----------------------------------------------------------------------------------


def test_a_batch_of_three_customers_is_delivered_in_one_post(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    # when three mapped customers are delivered as one batch
    outcomes = upsert(integration, sandbox, api_key, http, PEOPLE)

    # then each is delivered, by a single POST /customers carrying all three
    assert [outcome.verdict for outcome in outcomes] == [Verdict.DELIVERED] * 3
    assert {outcome.vendor_status for outcome in outcomes} == {201}
    (request,) = sandbox.requests
    assert (request.method, request.path) == ("POST", "/customers")
    assert request.body["mode"] == "AddOrUpdate" and request.body["matchBy"] == "Email"
    assert [customer["email"] for customer in request.body["data"]] == [p["email"] for p in PEOPLE]
    assert request.headers["x-api-key"] == "***"  # the sandbox saw a key (and redacted it in its log)

    # and the vendor holds them as sent
    anna = sandbox.find(email="anna@example.com")
    assert anna is not None and anna["firstName"] == "Anna"
    assert anna["customAttributes"] == [{"name": "City", "value": "Oslo"}]
    ben = sandbox.find(phone="+48600100200")
    assert ben is not None and ben["email"] == "ben@example.com"
    cleo = sandbox.find(email="cleo@example.com")
    assert cleo is not None and cleo["gender"] == "Female" and cleo["lastName"] == "Nowak"


def test_an_invalid_customer_in_a_batch_is_rejected_with_the_vendors_error_and_the_rest_delivered(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    # given ben already exists at the vendor
    upsert(integration, sandbox, api_key, http, [{"email": "ben@example.com", "firstName": "Ben"}])
    before = len(sandbox.requests)

    # when a batch is added in Add mode, with ben second
    outcomes = upsert(integration, sandbox, api_key, http, PEOPLE, mode="Add")

    # then ben is rejected for good with the vendor's error naming his index; the others are delivered
    assert [outcome.verdict for outcome in outcomes] == [
        Verdict.DELIVERED,
        Verdict.REJECTED,
        Verdict.DELIVERED,
    ]
    rejected = outcomes[1]
    assert rejected.vendor_status == 400
    assert rejected.reason.startswith("ExpertSender HTTP 400")
    assert len(rejected.errors) == 1
    assert rejected.errors[0].startswith("data[1]")
    assert "ben@example.com" in rejected.errors[0] and "already exists" in rejected.errors[0]

    # and the vendor saw the batch of three, then the two good customers again
    sent = [[c["email"] for c in r.body["data"]] for r in sandbox.requests[before:]]
    assert sent == [[p["email"] for p in PEOPLE], ["anna@example.com", "cleo@example.com"]]
    assert [r.status for r in sandbox.requests[before:]] == [400, 201]
    assert sandbox.find(email="anna@example.com") is not None
    assert sandbox.find(email="cleo@example.com") is not None
    ben = sandbox.find(email="ben@example.com")
    assert ben is not None and ben.get("phone") is None  # Add did not touch the existing customer


def test_a_batch_400_that_names_no_customer_is_retried_one_by_one(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    # given the vendor answers the next request 400 without naming any customer
    sandbox.inject(status=400, body={"title": "Bad Request", "status": 400, "errors": ["something odd"]})

    outcomes = upsert(integration, sandbox, api_key, http, PEOPLE[:2])

    # then each customer is sent alone and gets its own verdict
    assert [outcome.verdict for outcome in outcomes] == [Verdict.DELIVERED, Verdict.DELIVERED]
    assert [len(r.body["data"]) for r in sandbox.requests] == [2, 1, 1]
    assert len(sandbox.customers()) == 2


def test_a_single_customer_the_vendor_refuses_is_rejected_with_its_errors(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    (outcome,) = upsert(integration, sandbox, api_key, http, [{"email": "nobody@example.com"}], mode="Update")

    assert outcome.verdict is Verdict.REJECTED and outcome.vendor_status == 400
    assert len(outcome.errors) == 1 and "no customer with email 'nobody@example.com'" in outcome.errors[0]
    assert sandbox.customers() == []


# --- what is retried --------------------------------------------------------------------------------------------


def test_a_wrong_api_key_is_retried_and_the_reason_never_holds_a_key(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    wrong_key = secrets.token_urlsafe(24)
    parsed = ExpertSenderSettings()
    payloads = [integration.prepare(UPSERT, record, parsed) for record in PEOPLE]

    outcomes = integration.deliver(
        UPSERT, payloads, parsed, {"api_key": wrong_key, "base_url": sandbox.url}, http
    )

    # then every customer is kept for a retry (the record is fine, the credentials are not)
    assert [outcome.verdict for outcome in outcomes] == [Verdict.RETRY] * 3
    assert {outcome.vendor_status for outcome in outcomes} == {401}
    reason = outcomes[0].reason
    assert "API key" in reason and "secret" in reason
    assert wrong_key not in reason and api_key not in reason
    assert all(wrong_key not in error for outcome in outcomes for error in outcome.errors)
    assert sandbox.customers() == []


def test_a_503_is_retried_and_the_next_attempt_delivers(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    sandbox.inject(status=503)

    first = upsert(integration, sandbox, api_key, http, PEOPLE[:2])
    second = upsert(integration, sandbox, api_key, http, PEOPLE[:2])

    assert [(o.verdict, o.vendor_status) for o in first] == [(Verdict.RETRY, 503)] * 2
    assert "unavailable" in first[0].reason
    assert [o.verdict for o in second] == [Verdict.DELIVERED] * 2
    assert len(sandbox.customers()) == 2


def test_a_429_is_retried_no_sooner_than_its_retry_after(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    sandbox.inject(status=429, retry_after=7)

    (outcome,) = upsert(integration, sandbox, api_key, http, PEOPLE[:1])

    assert (outcome.verdict, outcome.vendor_status, outcome.retry_after) == (Verdict.RETRY, 429, 7.0)
    assert "throttled" in outcome.reason
    assert sandbox.customers() == []


def test_a_vendor_slower_than_the_timeout_is_retried(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    sandbox.set_latency(1.0)
    try:
        outcomes = upsert(integration, sandbox, api_key, http, PEOPLE[:2], timeout_seconds=0.2)
    finally:
        sandbox.set_latency(0)

    assert [outcome.verdict for outcome in outcomes] == [Verdict.RETRY] * 2
    assert "timeout" in outcomes[0].reason
    assert outcomes[0].vendor_status is None


def test_a_vendor_that_refuses_connections_is_retried(
    integration: ExpertSender, http: requests.Session
) -> None:
    # given a port nothing listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    parsed = ExpertSenderSettings()
    payload = integration.prepare(UPSERT, PEOPLE[0], parsed)

    (outcome,) = integration.deliver(
        UPSERT, [payload], parsed, {"api_key": "k", "base_url": f"http://127.0.0.1:{port}"}, http
    )

    assert outcome.verdict is Verdict.RETRY
    assert "could not connect" in outcome.reason


def test_a_stopped_vendor_is_retried_for_deletes_too(
    integration: ExpertSender, api_key: str, http: requests.Session
) -> None:
    with ExpertSenderSandbox(api_key) as stopped:
        url = stopped.url
    parsed = ExpertSenderSettings()

    (outcome,) = integration.deliver(
        DELETE, [integration.prepare(DELETE, {"email": "a@b.pl"}, parsed)], parsed,
        {"api_key": api_key, "base_url": url}, http,
    )  # fmt: skip

    assert outcome.verdict is Verdict.RETRY


# --- deleting -------------------------------------------------------------------------------------------------


def test_a_delete_with_anonymisation_removes_the_customer(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    upsert(integration, sandbox, api_key, http, PEOPLE)
    anna = sandbox.find(email="anna@example.com")
    assert anna is not None

    outcome = delete(
        integration, sandbox, api_key, http, {"email": " anna@example.com "}, with_anonymization=True
    )

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 200)
    assert sandbox.find(email="anna@example.com") is None
    assert sandbox.deleted == [{"id": anna["id"], "anonymized": True}]
    last = sandbox.requests[-1]
    assert (last.method, last.query["withAnonymization"]) == ("DELETE", ["true"])
    assert len(sandbox.customers()) == 2


def test_a_delete_by_phone_encodes_the_plus_sign(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    upsert(integration, sandbox, api_key, http, PEOPLE)

    outcome = delete(integration, sandbox, api_key, http, {"phone": "+48600100200"}, delete_by="phone")

    assert outcome.verdict is Verdict.DELIVERED
    assert sandbox.find(email="ben@example.com") is None
    assert sandbox.deleted[0]["anonymized"] is False


def test_deleting_a_missing_customer_is_delivered_as_already_absent(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    outcome = delete(integration, sandbox, api_key, http, {"email": "ghost@example.com"})

    assert (outcome.verdict, outcome.vendor_status) == (Verdict.DELIVERED, 404)
    assert [r.status for r in sandbox.requests] == [404]
    assert sandbox.deleted == []


def test_a_delete_without_the_delete_by_field_is_invalid(integration: ExpertSender) -> None:
    with pytest.raises(RecordInvalid) as caught:
        integration.prepare(DELETE, {"email": "a@b.pl"}, ExpertSenderSettings(delete_by="crmId"))

    assert caught.value.errors == ["field 'crmId' is required to delete a customer (delete_by)"]


# --- prepare: the vendor's field rules, checked before anything is sent ----------------------------------------


def invalid(integration: ExpertSender, mapped: dict[str, Any], **settings: Any) -> list[str]:
    with pytest.raises(RecordInvalid) as caught:
        integration.prepare(UPSERT, mapped, ExpertSenderSettings(**settings))
    return caught.value.errors


def test_an_invalid_email_is_refused(integration: ExpertSender) -> None:
    assert invalid(integration, {"email": "jane.example.com"}) == [
        "field 'email': 'jane.example.com' is not a valid e-mail address"
    ]


def test_a_phone_with_spaces_is_refused_pointing_at_the_phone_transform(integration: ExpertSender) -> None:
    (error,) = invalid(integration, {"email": "a@b.pl", "phone": "+48 600 100 200"})

    assert error.startswith("field 'phone': '+48 600 100 200'") and "'phone' transform" in error


def test_a_gender_the_vendor_does_not_know_is_refused_and_known_ones_are_spelled_as_documented(
    integration: ExpertSender,
) -> None:
    assert invalid(integration, {"email": "a@b.pl", "gender": "robot"}) == [
        "field 'gender': 'robot' is not one of Male, Female, NotSpecified"
    ]
    prepared = integration.prepare(
        UPSERT, {"email": "a@b.pl", "gender": "not specified"}, ExpertSenderSettings()
    )
    assert prepared["customer"]["gender"] == "NotSpecified"


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("1990-05-17", "1990-05-17T00:00:00.000Z"),
        ("1990-05-17T01:30:00+02:00", "1990-05-16T23:30:00.000Z"),
        ("1990-05-17T12:00:00.123456Z", "1990-05-17T12:00:00.123Z"),
    ],
)
def test_date_of_birth_is_sent_as_a_utc_date_time_the_vendor_accepts(
    integration: ExpertSender,
    sandbox: ExpertSenderSandbox,
    api_key: str,
    http: requests.Session,
    given: str,
    sent: str,
) -> None:
    outcomes = upsert(integration, sandbox, api_key, http, [{"email": "a@b.pl", "dateOfBirth": given}])

    assert outcomes[0].verdict is Verdict.DELIVERED
    assert sandbox.requests[0].body["data"][0]["dateOfBirth"] == sent
    stored = sandbox.find(email="a@b.pl")
    assert stored is not None and stored["dateOfBirth"] == sent


def test_a_date_of_birth_that_is_not_iso_8601_is_refused(integration: ExpertSender) -> None:
    (error,) = invalid(integration, {"email": "a@b.pl", "dateOfBirth": "17.05.1990"})

    assert error.startswith("field 'dateOfBirth': '17.05.1990' is not a date in ISO 8601")
    assert "add a 'date' transform" in error


def test_consents_become_consents_data_with_numeric_ids_and_the_vendor_stores_them(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    # given a mapped record whose consents attribute names were renamed to consent ids
    mapped = {"email": "a@b.pl", "consents": {"1": "yes", "2": False, "3": "AwaitingConfirmation"}}
    settings = ExpertSenderSettings(consents_force=True, confirmation_message_id=5)

    prepared = integration.prepare(UPSERT, mapped, settings)

    assert prepared["customer"]["consentsData"] == {
        "consents": [
            {"id": 1, "value": "True"},
            {"id": 2, "value": "False"},
            {"id": 3, "value": "AwaitingConfirmation"},
        ],
        "force": True,
        "confirmationMessageId": 5,
    }
    assert "consents" not in prepared["customer"]
    (outcome,) = integration.deliver(UPSERT, [prepared], settings, credentials(sandbox, api_key), http)
    assert outcome.verdict is Verdict.DELIVERED
    stored = sandbox.find(email="a@b.pl")
    assert stored is not None
    assert stored["consentsData"]["consents"] == prepared["customer"]["consentsData"]["consents"]


def test_consents_not_renamed_to_ids_or_with_unknown_values_are_refused(integration: ExpertSender) -> None:
    errors = invalid(integration, {"email": "a@b.pl", "consents": {"newsletter": "yes", "4": "maybe"}})

    assert errors == [
        "consent 'newsletter': the mapping must rename the attribute to a numeric consent id",
        "consent 4: 'maybe' is not true, false or AwaitingConfirmation",
    ]


def test_a_record_without_the_match_field_lists_every_problem(integration: ExpertSender) -> None:
    # given the integration matches by phone, and a record with no phone and two other problems
    errors = invalid(integration, {"email": "not-an-email", "gender": "x"}, match_by="PhoneNumber")

    # then all three problems are reported at once
    assert errors == [
        "field 'email': 'not-an-email' is not a valid e-mail address",
        "field 'gender': 'x' is not one of Male, Female, NotSpecified",
        "field 'phone' is required: the integration matches customers by PhoneNumber",
    ]


def test_a_batch_too_large_for_the_vendor_is_halved_until_it_fits(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    # given a vendor that refuses the first (whole) batch as too large
    sandbox.inject(status=413, times=1, method="POST")
    outcomes = upsert(integration, sandbox, api_key, http, PEOPLE)
    # then nobody is rejected for the batch's size: the halves are delivered
    assert [outcome.verdict for outcome in outcomes] == [Verdict.DELIVERED] * 3
    assert [request.status for request in sandbox.requests] == [413, 201, 201]
    assert all(sandbox.find(email=person["email"]) for person in PEOPLE)


def test_a_wrong_route_is_a_configuration_problem_not_a_bad_record(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    parsed = ExpertSenderSettings()
    payloads = [integration.prepare(UPSERT, person, parsed) for person in PEOPLE]
    wrong = {"api_key": api_key, "base_url": sandbox.url + "/v9"}
    outcomes = integration.deliver(UPSERT, payloads, parsed, wrong, http)
    assert {outcome.verdict for outcome in outcomes} == {Verdict.RETRY}
    assert "base_url" in outcomes[0].reason


def test_delete_by_crm_id_uses_the_documented_path(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    upsert(integration, sandbox, api_key, http, [{"email": "crm@example.com", "crmId": "C-77"}])
    outcome = delete(integration, sandbox, api_key, http, {"crmId": "C-77"}, delete_by="crmId")
    assert outcome.verdict is Verdict.DELIVERED
    assert sandbox.requests[-1].method == "DELETE"
    assert sandbox.requests[-1].path == "/customers/crmid/C-77"
    assert sandbox.find(crm_id="C-77") is None


def test_a_delete_to_a_wrong_route_is_retried_not_taken_for_an_absent_customer(
    integration: ExpertSender, sandbox: ExpertSenderSandbox, api_key: str, http: requests.Session
) -> None:
    upsert(integration, sandbox, api_key, http, [PEOPLE[0]])
    parsed = ExpertSenderSettings()
    payload = integration.prepare(DELETE, {"email": PEOPLE[0]["email"]}, parsed)
    wrong = {"api_key": api_key, "base_url": sandbox.url + "/v9"}
    (outcome,) = integration.deliver(DELETE, [payload], parsed, wrong, http)
    assert outcome.verdict is Verdict.RETRY
    assert "base_url" in outcome.reason
    assert sandbox.find(email=PEOPLE[0]["email"]) is not None
