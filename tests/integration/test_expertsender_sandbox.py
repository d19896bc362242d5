"""The ExpertSender CDP sandbox behaves like the vendor document says, over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder_local.sandboxes.expertsender import ExpertSenderSandbox

API_KEY = "sandbox-secret-key"
TIMEOUT = 5


@pytest.fixture
def sandbox() -> Iterator[ExpertSenderSandbox]:
    with ExpertSenderSandbox(API_KEY) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["x-api-key"] = API_KEY
        yield session


def post(http: requests.Session, sandbox: ExpertSenderSandbox, mode: str, match_by: str, *data: Any) -> Any:
    return http.post(
        f"{sandbox.url}/customers",
        json={"mode": mode, "matchBy": match_by, "data": list(data)},
        timeout=TIMEOUT,
    )


ANNA = {
    "email": "anna@example.com",
    "phone": "+48600100200",
    "crmId": "CRM-1",
    "firstName": "Anna",
    "lastName": "Nowak",
    "dateOfBirth": "1990-05-17T00:00:00.000Z",
    "gender": "Female",
    "customAttributes": [{"name": "tier", "value": "gold"}],
    "consentsData": {"consents": [{"id": 1, "value": "True"}], "force": False, "confirmationMessageId": 7},
}


def test_missing_or_wrong_api_key_is_rejected_with_401_and_the_key_is_never_echoed(
    sandbox: ExpertSenderSandbox,
) -> None:
    body = {"mode": "Add", "matchBy": "Email", "data": [{"email": "a@b.pl"}]}
    missing = requests.post(f"{sandbox.url}/customers", json=body, timeout=TIMEOUT)
    wrong = requests.post(
        f"{sandbox.url}/customers", json=body, headers={"x-api-key": "guessed-key"}, timeout=TIMEOUT
    )

    assert missing.status_code == 401
    assert missing.json() == {
        "type": "https://tools.ietf.org/html/rfc7235#section-3.1",
        "title": "Unauthorized",
        "status": 401,
        "detail": "The x-api-key header is missing.",
        "instance": "/customers",
    }
    assert wrong.status_code == 401
    assert "guessed-key" not in wrong.text
    assert sandbox.customers() == []
    logged = sandbox.requests
    assert [r.status for r in logged] == [401, 401]
    assert logged[1].headers["x-api-key"] == "***"


def test_added_customer_can_be_read_back_by_email_phone_crm_id_and_id(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    created = post(http, sandbox, "Add", "Email", ANNA)

    assert created.status_code == 201
    assert created.json() == {
        "status": 201,
        "data": [{"id": 1, "email": "anna@example.com", "phone": "+48600100200", "crmId": "CRM-1"}],
    }
    for path in (
        "email/ANNA%40example.com",  # e-mail look-up is case-insensitive and URL-decoded
        "phone/+48600100200",
        "crmId/CRM-1",
        "id/1",
    ):
        answer = http.get(f"{sandbox.url}/customers/{path}", timeout=TIMEOUT)
        assert answer.status_code == 200, path
        data = answer.json()["data"]
        assert answer.json()["status"] == 200
        assert (data["id"], data["email"], data["firstName"], data["gender"]) == (
            1,
            "anna@example.com",
            "Anna",
            "Female",
        )
        assert data["customAttributes"] == [{"name": "tier", "value": "gold"}]
        assert data["consentsData"] == {"consents": [{"id": 1, "value": "True"}]}
    assert http.get(f"{sandbox.url}/customers/crmId/crm-1", timeout=TIMEOUT).status_code == 404
    assert sandbox.find(phone="+48600100200", crm_id="CRM-1") == sandbox.customers()[0]


def test_add_or_update_merges_attributes_by_name_and_consents_by_id(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    assert post(http, sandbox, "Add", "Email", ANNA).status_code == 201

    merged = post(
        http,
        sandbox,
        "AddOrUpdate",
        "Email",
        {
            "email": "anna@example.com",
            "lastName": "Kowalska",
            "customAttributes": [{"name": "tier", "value": "platinum"}, {"name": "city", "value": "Kraków"}],
            "consentsData": {"consents": [{"id": 2, "value": "AwaitingConfirmation"}]},
        },
        {"email": "new@example.com", "firstName": "Jan"},
    )

    assert merged.status_code == 201
    assert [item["id"] for item in merged.json()["data"]] == [1, 2]
    anna = sandbox.find(email="anna@example.com")
    assert anna is not None
    assert (anna["firstName"], anna["lastName"], anna["phone"]) == ("Anna", "Kowalska", "+48600100200")
    assert anna["customAttributes"] == [
        {"name": "tier", "value": "platinum"},
        {"name": "city", "value": "Kraków"},
    ]
    assert anna["consentsData"]["consents"] == [
        {"id": 1, "value": "True"},
        {"id": 2, "value": "AwaitingConfirmation"},
    ]
    assert sandbox.find(email="new@example.com") == {
        "id": 2,
        "email": "new@example.com",
        "firstName": "Jan",
        "customAttributes": [],
        "consentsData": {"consents": []},
    }


def test_add_of_an_existing_customer_is_rejected_with_the_failing_record_index(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    assert post(http, sandbox, "Add", "Email", {"email": "anna@example.com"}).status_code == 201

    duplicate = post(
        http, sandbox, "Add", "Email", {"email": "fresh@example.com"}, {"email": "Anna@Example.com"}
    )

    assert duplicate.status_code == 400
    problem = duplicate.json()
    assert problem["title"] == "One or more validation errors occurred."
    assert problem["errors"] == ["data[1]: customer with email 'Anna@Example.com' already exists"]
    assert "\n" not in problem["detail"]
    assert [c["email"] for c in sandbox.customers()] == ["anna@example.com"]  # atomic: fresh@ not stored


def test_an_invalid_record_in_a_batch_rejects_the_whole_batch(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    answer = post(
        http,
        sandbox,
        "Add",
        "Email",
        {"email": "one@example.com"},
        {"email": "not-an-email"},
        {"email": "three@example.com"},
    )

    assert answer.status_code == 400
    assert answer.json()["errors"] == ["data[1].email: 'not-an-email' is not a valid e-mail address"]
    assert answer.json()["instance"] == "/customers"
    assert sandbox.customers() == []
    assert http.get(f"{sandbox.url}/customers/email/one@example.com", timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (
            {"email": "a@b.pl", "phone": "600 100 200"},
            "data[0].phone: '600 100 200' is not a valid phone number",
        ),
        ({"email": "a@b.pl", "dateOfBirth": "17.05.1990"}, "data[0].dateOfBirth: '17.05.1990' is not an ISO"),
        ({"email": "a@b.pl", "dateOfBirth": "1990-05-17"}, "data[0].dateOfBirth: '1990-05-17' is not an ISO"),
        ({"email": "a@b.pl", "gender": "female"}, "data[0].gender: 'female' is not one of Male, Female"),
        ({"email": "a@b.pl", "customAttributes": [{"name": "", "value": "x"}]}, "customAttributes[0].name"),
        (
            {"email": "a@b.pl", "consentsData": {"consents": [{"id": 1, "value": "Yes"}]}},
            "data[0].consentsData.consents[0].value: 'Yes' is not one of False, AwaitingConfirmation, True",
        ),
        (
            {"email": "a@b.pl", "consentsData": {"consents": [{"id": 2**31, "value": "True"}]}},
            "consents[0].id: '2147483648' is not a 32-bit integer",
        ),
        ({"email": "a@b.pl", "nickname": "an"}, "data[0].nickname: unknown field"),
        ({"phone": "+48600100200"}, "data[0].email: required when matchBy is Email"),
    ],
)
def test_each_documented_field_rule_is_enforced_with_a_located_message(
    sandbox: ExpertSenderSandbox, http: requests.Session, record: dict[str, Any], error: str
) -> None:
    answer = post(http, sandbox, "Add", "Email", record)

    assert answer.status_code == 400
    assert any(error in message for message in answer.json()["errors"]), answer.json()["errors"]
    assert sandbox.customers() == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"matchBy": "Email", "data": [{"email": "a@b.pl"}]}, "mode: required"),
        (
            {"mode": "Upsert", "matchBy": "Email", "data": [{"email": "a@b.pl"}]},
            "mode: 'Upsert' is not one of",
        ),
        (
            {"mode": "Add", "matchBy": "Login", "data": [{"email": "a@b.pl"}]},
            "matchBy: 'Login' is not one of",
        ),
        ({"mode": "Add", "matchBy": "Email", "data": []}, "data: must contain at least one customer"),
        ({"mode": "Add", "matchBy": "Email", "data": [{"email": "a@b.pl"}] * 3}, "exceed the limit of 2"),
    ],
)
def test_request_envelope_is_validated(body: dict[str, Any], error: str) -> None:
    with ExpertSenderSandbox(API_KEY, max_batch=2) as small:
        answer = requests.post(
            f"{small.url}/customers", json=body, headers={"x-api-key": API_KEY}, timeout=TIMEOUT
        )
        assert answer.status_code == 400
        assert any(error in message for message in answer.json()["errors"]), answer.json()["errors"]


def test_non_json_body_is_a_400(sandbox: ExpertSenderSandbox, http: requests.Session) -> None:
    answer = http.post(f"{sandbox.url}/customers", data=b"mode=Add", timeout=TIMEOUT)

    assert answer.status_code == 400
    assert answer.json()["errors"][0].startswith("body: not valid JSON")


def test_update_of_a_missing_customer_is_rejected(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    answer = post(http, sandbox, "Update", "CrmId", {"crmId": "CRM-404", "firstName": "Ghost"})

    assert answer.status_code == 400
    assert answer.json()["errors"] == ["data[0]: no customer with crmId 'CRM-404'"]
    assert sandbox.customers() == []


def test_identifiers_stay_unique_across_customers(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    assert post(http, sandbox, "Add", "Email", ANNA).status_code == 201

    answer = post(http, sandbox, "Add", "Email", {"email": "other@example.com", "phone": "+48600100200"})

    assert answer.status_code == 400
    assert answer.json()["errors"] == ["data[0].phone: '+48600100200' already belongs to customer 1"]


def test_guid_and_visitor_id_matching(sandbox: ExpertSenderSandbox, http: requests.Session) -> None:
    assert (
        post(http, sandbox, "Add", "VisitorId", {"visitorId": "v-1", "email": "v@example.com"}).status_code
        == 201
    )
    assert post(http, sandbox, "Update", "GUID", {"id": 1, "firstName": "Viktor"}).status_code == 201
    assert post(http, sandbox, "Add", "VisitorId", {"email": "x@example.com"}).json()["errors"] == [
        "data[0].visitorId: required when matchBy is VisitorId"
    ]
    assert post(http, sandbox, "Add", "GUID", {"id": 5}).json()["errors"] == [
        "data[0]: mode Add cannot match by GUID; customer ids are assigned by the platform"
    ]
    assert post(http, sandbox, "AddOrUpdate", "GUID", {"id": 9}).json()["errors"] == [
        "data[0]: no customer with id '9'"
    ]
    assert sandbox.customers() == [
        {
            "id": 1,
            "visitorId": "v-1",
            "email": "v@example.com",
            "firstName": "Viktor",
            "customAttributes": [],
            "consentsData": {"consents": []},
        }
    ]


def test_delete_without_anonymisation_then_get_is_404(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    assert post(http, sandbox, "Add", "Email", ANNA).status_code == 201

    deleted = http.delete(f"{sandbox.url}/customers/email/anna@example.com", timeout=TIMEOUT)
    after = http.get(f"{sandbox.url}/customers/email/anna@example.com", timeout=TIMEOUT)

    assert deleted.status_code == 200
    assert after.status_code == 404
    assert after.json()["substatus"] == "CustomerNotFound"
    assert sandbox.customers() == []
    assert sandbox.deleted == [{"id": 1, "anonymized": False}]
    # the identifiers are free again
    assert post(http, sandbox, "Add", "Email", ANNA).json()["data"][0]["id"] == 2


def test_delete_with_anonymisation_via_lower_case_crmid_path(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    assert post(http, sandbox, "Add", "Email", ANNA).status_code == 201

    deleted = http.delete(
        f"{sandbox.url}/customers/crmid/CRM-1", params={"withAnonymization": "true"}, timeout=TIMEOUT
    )

    assert deleted.status_code == 200
    assert http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT).status_code == 404
    assert sandbox.deleted == [{"id": 1, "anonymized": True}]
    assert sandbox.customers() == []


def test_delete_of_a_missing_customer_is_404_with_substatus(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    missing = http.delete(f"{sandbox.url}/customers/phone/+48111222333", timeout=TIMEOUT)
    bad_id = http.delete(f"{sandbox.url}/customers/id/abc", timeout=TIMEOUT)
    bad_flag = http.delete(f"{sandbox.url}/customers/id/1?withAnonymization=maybe", timeout=TIMEOUT)

    assert missing.status_code == 404
    assert missing.json()["substatus"] == "CustomerNotFound"
    assert missing.json()["instance"] == "/customers/phone/+48111222333"
    assert (bad_id.status_code, bad_id.json()["substatus"]) == (400, "CustomerInvalidModelState")
    assert bad_flag.status_code == 400
    assert sandbox.deleted == []


def test_unknown_routes_are_404_and_wrong_methods_405(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    unknown = http.get(f"{sandbox.url}/contacts", timeout=TIMEOUT)
    lookup = http.get(f"{sandbox.url}/customers/nickname/anna", timeout=TIMEOUT)
    wrong = http.get(f"{sandbox.url}/customers", timeout=TIMEOUT)
    put = http.put(f"{sandbox.url}/customers/id/1", json={}, timeout=TIMEOUT)

    assert (unknown.status_code, lookup.status_code) == (404, 404)
    assert unknown.json()["title"] == "Not Found"
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "POST")
    assert (put.status_code, put.headers["Allow"]) == (405, "GET, DELETE")


def test_injected_503_answers_once_then_the_request_succeeds(
    sandbox: ExpertSenderSandbox, http: requests.Session
) -> None:
    sandbox.inject(status=503, method="POST", path_prefix="/customers")

    first = post(http, sandbox, "Add", "Email", ANNA)
    second = post(http, sandbox, "Add", "Email", ANNA)

    assert first.status_code == 503
    assert first.json()["status"] == 503
    assert first.headers["Content-Type"].startswith("application/problem+json")
    assert second.status_code == 201
    assert [r.status for r in sandbox.requests] == [503, 201]
    assert len(sandbox.customers()) == 1


def test_injected_fault_applies_before_auth_and_only_to_matching_requests(
    sandbox: ExpertSenderSandbox,
) -> None:
    sandbox.inject(status=500, method="GET", times=2, body={"message": "boom"})

    posted = requests.post(f"{sandbox.url}/customers", json={}, timeout=TIMEOUT)  # no key, not a GET
    first = requests.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)
    second = requests.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)
    third = requests.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)

    assert posted.status_code == 401
    assert (first.status_code, first.json()) == (500, {"message": "boom"})
    assert second.status_code == 500
    assert third.status_code == 401


def test_injected_429_carries_retry_after(sandbox: ExpertSenderSandbox, http: requests.Session) -> None:
    sandbox.inject(status=429, retry_after=7)

    limited = http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.json()["title"] == "Too Many Requests"
    assert http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT).status_code == 404


def test_latency_delays_every_vendor_answer(sandbox: ExpertSenderSandbox, http: requests.Session) -> None:
    sandbox.set_latency(0.3)

    started = time.monotonic()
    answer = http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)
    elapsed = time.monotonic() - started

    assert answer.status_code == 404
    assert elapsed >= 0.3
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(f"{sandbox.url}/customers/id/1", timeout=0.1)


def test_admin_routes_over_http(sandbox: ExpertSenderSandbox, http: requests.Session) -> None:
    admin = f"{sandbox.url}/_sandbox"
    assert post(http, sandbox, "Add", "Email", ANNA).status_code == 201

    customers = requests.get(f"{admin}/customers", timeout=TIMEOUT).json()
    assert [c["email"] for c in customers["customers"]] == ["anna@example.com"]
    assert customers["deleted"] == []
    logged = requests.get(f"{admin}/requests", timeout=TIMEOUT).json()["requests"]
    assert [(r["method"], r["path"], r["status"]) for r in logged] == [("POST", "/customers", 201)]
    assert logged[0]["headers"]["x-api-key"] == "***"
    assert logged[0]["body"]["mode"] == "Add"

    fault = requests.post(
        f"{admin}/faults", json={"status": 429, "retry_after": 2, "times": 1}, timeout=TIMEOUT
    )
    assert fault.status_code == 200
    limited = http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "2")

    bad_fault = requests.post(f"{admin}/faults", json={"status": 503, "color": "red"}, timeout=TIMEOUT)
    assert bad_fault.status_code == 400
    assert requests.post(f"{admin}/latency", json={"seconds": -1}, timeout=TIMEOUT).status_code == 400
    assert requests.post(f"{admin}/latency", json={"seconds": 0.2}, timeout=TIMEOUT).status_code == 200
    started = time.monotonic()
    assert http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT).status_code == 200
    assert time.monotonic() - started >= 0.2

    assert requests.post(f"{admin}/reset", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{admin}/customers", timeout=TIMEOUT).json() == {"customers": [], "deleted": []}
    assert requests.get(f"{admin}/requests", timeout=TIMEOUT).json() == {"requests": []}
    started = time.monotonic()
    assert http.get(f"{sandbox.url}/customers/id/1", timeout=TIMEOUT).status_code == 404
    assert time.monotonic() - started < 0.2  # latency cleared too
    assert requests.get(f"{admin}/reset", timeout=TIMEOUT).status_code == 405


def test_runs_standalone_as_a_module() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forwarder_local.sandboxes.expertsender",
            "--port",
            "0",
            "--api-key",
            API_KEY,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split()[0]
        answer = requests.post(
            f"{url}/customers",
            json={"mode": "Add", "matchBy": "Email", "data": [{"email": "cli@example.com"}]},
            headers={"x-api-key": API_KEY},
            timeout=TIMEOUT,
        )
        assert answer.status_code == 201
        assert requests.get(f"{url}/_sandbox/customers", timeout=TIMEOUT).json()["customers"][0]["id"] == 1
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_customers_survive_a_restart_and_the_state_reads_back_page_by_page(tmp_path: Path) -> None:
    # given three customers added to a sandbox that keeps its state in a file
    state = tmp_path / "expertsender.jsonl"
    with ExpertSenderSandbox(API_KEY, state_path=state) as first, requests.Session() as http:
        http.headers["x-api-key"] = API_KEY
        added = post(
            http,
            first,
            "Add",
            "Email",
            *({"email": f"c{number}@example.com", "firstName": f"C{number}"} for number in range(3)),
        )
        assert added.status_code in (200, 201), added.text
    # when it starts again on the same file
    with ExpertSenderSandbox(API_KEY, state_path=state) as second, requests.Session() as http:
        http.headers["x-api-key"] = API_KEY
        # then the customers are still there, found by the vendor's own API
        found = http.get(f"{second.url}/customers/email/c2@example.com", timeout=TIMEOUT)
        assert found.status_code == 200 and found.json()["data"]["firstName"] == "C2"
        # and the state reads back in pages, not in one answer
        state_url = f"{second.url}/_sandbox/state/customers"
        page = requests.get(state_url, params={"offset": 0, "limit": 2}, timeout=TIMEOUT).json()
        rest = requests.get(state_url, params={"offset": 2, "limit": 2}, timeout=TIMEOUT).json()
    assert (len(page["items"]), page["total"], page["next_offset"]) == (2, 3, 2)
    assert (len(rest["items"]), rest["next_offset"]) == (1, None)
    emails = {item["email"] for item in page["items"] + rest["items"]}
    assert emails == {"c0@example.com", "c1@example.com", "c2@example.com"}
