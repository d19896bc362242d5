"""The Convertlab DM Hub sandbox behaves as the DM Hub documents say, over real HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from forwarder_local.sandboxes.dmhub import DmHubSandbox

APP_ID = "cl-app-7f3a"
SECRET = "cl-secret-9b1c"
TIMEOUT = 5
START = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> Iterator[DmHubSandbox]:
    """An old-version (API v1) application."""
    with DmHubSandbox(APP_ID, SECRET, clock=clock) as running:
        yield running


@pytest.fixture
def v2(clock: Clock) -> Iterator[DmHubSandbox]:
    """A new-version (API v2) application."""
    with DmHubSandbox(APP_ID, SECRET, api_version="v2", clock=clock) as running:
        yield running


def v1_token(sandbox: DmHubSandbox) -> str:
    answer = requests.get(
        f"{sandbox.url}/security/accesstoken",
        params={"grant_type": "client_credentials", "appid": APP_ID, "secret": SECRET},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200 and answer.json()["error_code"] == 0, answer.text
    return str(answer.json()["access_token"])


def v2_token(sandbox: DmHubSandbox) -> str:
    answer = requests.get(
        f"{sandbox.url}/v2/oauth2/token",
        params={"app_id": APP_ID, "secret": SECRET, "grant_type": "client_credentials"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


class Api:
    """A v1 client: the token in ``?access_token=``, as DM Hub v1 wants it."""

    def __init__(self, sandbox: DmHubSandbox, token: str | None = None) -> None:
        self.sandbox = sandbox
        self.token = token if token is not None else v1_token(sandbox)

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return requests.request(
            method,
            f"{self.sandbox.url}{path}",
            params={**(params or {}), "access_token": self.token},
            timeout=TIMEOUT,
            **kwargs,
        )

    def upsert(self, customer: dict[str, Any], *identities: tuple[str, str]) -> Any:
        body = {
            "customer": customer,
            "customerIdentities": [
                {"identityType": kind, "identityValue": value} for kind, value in identities
            ],
        }
        return self.call("POST", "/v1/customerandidentities", json=body)

    def new_customer(self, email: str) -> int:
        answer = self.upsert({"email": email}, ("email", email))
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def new_list(self, name: str) -> int:
        answer = self.call("POST", "/v1/lists", json={"name": name})
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def join(self, customer_id: int, list_id: int) -> Any:
        return self.call(
            "POST", "/v1/listMembers", json={"data": {"customerId": customer_id, "listId": list_id}}
        )


@pytest.fixture
def api(sandbox: DmHubSandbox) -> Api:
    return Api(sandbox)


# -- tokens ----------------------------------------------------------------------------------------------------


def test_v1_token_call_answers_a_token_valid_for_7200_seconds(sandbox: DmHubSandbox) -> None:
    answer = requests.get(
        f"{sandbox.url}/security/accesstoken",
        params={"grant_type": "client_credentials", "appid": APP_ID, "secret": SECRET},
        timeout=TIMEOUT,
    )

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"error_code", "access_token", "expires_in"}
    assert body["error_code"] == 0 and body["expires_in"] == 7200
    assert len(body["access_token"]) >= 16
    assert sandbox.token_requests() == 1


@pytest.mark.parametrize(
    ("params", "code", "description"),
    [
        ({"appid": APP_ID, "secret": "wrong"}, 40001, "invalid appid or secret"),
        ({"appid": "other-app", "secret": SECRET}, 40001, "invalid appid or secret"),
        ({"secret": SECRET}, 40001, "invalid appid or secret"),
        ({"appid": APP_ID, "secret": SECRET, "grant_type": "password"}, 40002, "'password'"),
    ],
)
def test_v1_token_errors_are_http_200_with_an_error_code(
    sandbox: DmHubSandbox, params: dict[str, str], code: int, description: str
) -> None:
    answer = requests.get(
        f"{sandbox.url}/security/accesstoken",
        params={"grant_type": "client_credentials", **params},
        timeout=TIMEOUT,
    )

    assert answer.status_code == 200
    assert answer.json()["error_code"] == code
    assert description in answer.json()["error_description"]
    assert "access_token" not in answer.json()
    assert sandbox.token_requests() == 0


def test_each_token_call_refuses_an_application_of_the_other_version(
    sandbox: DmHubSandbox, v2: DmHubSandbox
) -> None:
    v2_app_on_v1 = requests.get(
        f"{v2.url}/security/accesstoken",
        params={"grant_type": "client_credentials", "appid": APP_ID, "secret": SECRET},
        timeout=TIMEOUT,
    )
    v1_app_on_v2 = requests.get(
        f"{sandbox.url}/v2/oauth2/token",
        params={"app_id": APP_ID, "secret": SECRET, "grant_type": "client_credentials"},
        timeout=TIMEOUT,
    )

    assert v2_app_on_v1.status_code == 200
    assert v2_app_on_v1.json() == {
        "error_code": 40201,
        "error_description": "permission is not enough: the application is new-version, use /v2/oauth2/token",
    }
    assert v1_app_on_v2.status_code == 403
    assert v1_app_on_v2.json()["success"] is False
    assert v1_app_on_v2.json()["error"]["code"] == 403001
    assert "/security/accesstoken" in v1_app_on_v2.json()["error"]["message"]
    assert sandbox.token_requests() == v2.token_requests() == 0


def test_v2_token_call_answers_exactly_the_seed_sample_shape(v2: DmHubSandbox) -> None:
    answer = requests.get(
        f"{v2.url}/v2/oauth2/token",
        params={"app_id": APP_ID, "secret": SECRET, "grant_type": "client_credentials"},
        timeout=TIMEOUT,
    )

    assert answer.status_code == 200
    assert set(answer.json()) == {"access_token", "expires_in"}
    assert answer.json()["expires_in"] == 7200
    assert v2.token_requests() == 1


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"app_id": APP_ID, "secret": "wrong", "grant_type": "client_credentials"}, 401, 401001),
        ({"app_id": APP_ID, "grant_type": "client_credentials"}, 400, 400001),
        ({"app_id": APP_ID, "secret": SECRET, "grant_type": "implicit"}, 400, 400001),
    ],
)
def test_v2_token_errors_use_the_v2_error_shape(
    v2: DmHubSandbox, params: dict[str, str], status: int, code: int
) -> None:
    answer = requests.get(f"{v2.url}/v2/oauth2/token", params=params, timeout=TIMEOUT)

    assert answer.status_code == status
    assert answer.json()["success"] is False
    assert answer.json()["error"]["code"] == code
    assert v2.token_requests() == 0


def test_fetching_a_new_token_invalidates_the_previous_one(sandbox: DmHubSandbox) -> None:
    old = Api(sandbox)
    assert old.call("GET", "/v1/lists").status_code == 200

    new = Api(sandbox)
    refused = old.call("GET", "/v1/lists")

    assert refused.status_code == 200  # DM Hub's habit: errors in an HTTP 200 body
    assert refused.json() == {"error_code": 40014, "error_description": "invalid access_token"}
    assert new.call("GET", "/v1/lists").status_code == 200
    assert sandbox.token_requests() == 2


def test_a_token_expires_after_its_lifetime(sandbox: DmHubSandbox, clock: Clock) -> None:
    api = Api(sandbox)
    clock.now += 7199
    assert api.call("GET", "/v1/lists").json()["records"] == 0

    clock.now += 1
    expired = api.call("GET", "/v1/lists")

    assert expired.status_code == 200
    assert expired.json() == {"error_code": 42001, "error_description": "access_token expired"}


def test_expire_tokens_by_method_and_admin_route(sandbox: DmHubSandbox, v2: DmHubSandbox) -> None:
    api = Api(sandbox)
    sandbox.expire_tokens()
    assert api.call("GET", "/v1/lists").json()["error_code"] == 42001

    token = v2_token(v2)
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{v2.url}/v1/lists", headers=headers, timeout=TIMEOUT).status_code == 200
    assert requests.post(f"{v2.url}/_sandbox/tokens/expire", timeout=TIMEOUT).status_code == 200
    expired = requests.get(f"{v2.url}/v1/lists", headers=headers, timeout=TIMEOUT)

    assert expired.status_code == 401
    assert expired.json() == {"success": False, "error": {"code": 42001, "message": "access_token expired"}}
    assert Api(sandbox).call("GET", "/v1/lists").status_code == 200  # a fresh token works again


def test_a_v1_token_in_a_bearer_header_counts_as_missing(sandbox: DmHubSandbox) -> None:
    token = v1_token(sandbox)

    answer = requests.get(
        f"{sandbox.url}/v1/lists", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )

    assert answer.status_code == 200
    assert answer.json() == {"error_code": 40014, "error_description": "invalid access_token"}
    assert (
        requests.get(f"{sandbox.url}/v1/lists", params={"access_token": token}, timeout=TIMEOUT).json()[
            "records"
        ]
        == 0
    )


def test_a_v2_token_is_accepted_in_the_bearer_header_or_the_query(v2: DmHubSandbox) -> None:
    token = v2_token(v2)

    by_header = requests.get(
        f"{v2.url}/v1/lists", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    by_query = requests.get(f"{v2.url}/v1/lists", params={"access_token": token}, timeout=TIMEOUT)
    missing = requests.get(f"{v2.url}/v1/lists", timeout=TIMEOUT)
    unknown = requests.get(f"{v2.url}/v1/lists", headers={"Authorization": "Bearer forged"}, timeout=TIMEOUT)

    assert by_header.status_code == by_query.status_code == 200
    assert missing.status_code == unknown.status_code == 401
    assert missing.json()["error"]["code"] == unknown.json()["error"]["code"] == 40014
    assert missing.json()["success"] is False


def test_authentication_comes_before_routing(sandbox: DmHubSandbox, api: Api) -> None:
    without_token = requests.get(f"{sandbox.url}/v1/nothing-here", timeout=TIMEOUT)
    with_token = api.call("GET", "/v1/nothing-here")
    wrong_method = api.call("PUT", "/v1/lists", json={"name": "x"})

    assert without_token.status_code == 200 and without_token.json()["error_code"] == 40014
    assert with_token.status_code == 404
    assert with_token.json() == {
        "error_code": 40400,
        "error_description": "no such API: GET /v1/nothing-here",
    }
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "GET, POST"
    assert wrong_method.json()["error_code"] == 40500


# -- customers -------------------------------------------------------------------------------------------------


def test_upsert_creates_a_customer_with_a_platform_id_and_binds_its_identities(api: Api) -> None:
    created = api.call(
        "POST",
        "/v1/customerandidentities",
        json={
            "customer": {
                "name": "Li Lei",
                "gender": 1,
                "mobile": "+86 15300830723",
                "email": "li.lei@example.cn",
                "birthday": "1990-05-17",
                "city": "Shanghai",
                "dateJoin": "2023-01-02T03:04:05Z",
                "attr1": "gold",
                "attr2": 3,
            },
            "customerIdentities": [
                {"identityType": "mobile", "identityValue": "+86 15300830723"},
                {"identityType": "wechat", "identityValue": "oX1-wx", "identityName": "WeChat"},
            ],
        },
    )

    assert created.status_code == 201
    customer = created.json()
    assert customer == {
        "id": 1,
        "name": "Li Lei",
        "gender": 1,
        "mobile": "+86 15300830723",
        "email": "li.lei@example.cn",
        "birthday": "1990-05-17",
        "city": "Shanghai",
        "dateJoin": "2023-01-02T03:04:05Z",
        "attr1": "gold",
        "attr2": 3,
        "dateCreated": "2023-11-14T22:13:20Z",
        "lastUpdated": "2023-11-14T22:13:20Z",
    }
    found = api.call(
        "GET", "/v1/customeridentities", params={"identityType": "wechat", "identityValue": "oX1-wx"}
    )
    assert found.status_code == 200
    assert found.json() == [
        {
            "id": 2,
            "customerId": 1,
            "identityType": "wechat",
            "identityValue": "oX1-wx",
            "identityName": "WeChat",
            "dateCreated": "2023-11-14T22:13:20Z",
        }
    ]
    assert api.call("GET", "/v1/customers/1").json() == customer
    none = api.call(
        "GET", "/v1/customeridentities", params={"identityType": "wechat", "identityValue": "other"}
    )
    assert none.status_code == 200 and none.json() == []


def test_upsert_by_a_bound_identity_updates_that_customer_and_never_blanks_fields(
    sandbox: DmHubSandbox, api: Api, clock: Clock
) -> None:
    first = api.upsert({"name": "Anna", "city": "Beijing", "attr1": "x"}, ("wechat", "w-anna")).json()
    clock.now += 60

    updated = api.upsert({"city": "Shenzhen", "name": None}, ("wechat", "w-anna"))

    assert updated.status_code == 200
    body = updated.json()
    assert (body["id"], body["name"], body["city"], body["attr1"]) == (first["id"], "Anna", "Shenzhen", "x")
    assert body["dateCreated"] == "2023-11-14T22:13:20Z"
    assert body["lastUpdated"] == "2023-11-14T22:14:20Z"
    assert len(sandbox.customers()) == 1


@pytest.mark.parametrize(
    ("existing", "request_fields"),
    [
        ({"mobile": "+86 15300830723"}, {"mobile": "+8615300830723", "name": "By mobile"}),
        ({"email": "Jane@Example.com"}, {"email": "jane@example.com", "name": "By email"}),
    ],
)
def test_upsert_without_a_bound_identity_matches_by_mobile_or_email(
    sandbox: DmHubSandbox, api: Api, existing: dict[str, str], request_fields: dict[str, str]
) -> None:
    first = api.upsert(existing, ("wechat", "w-1")).json()

    matched = api.upsert(request_fields, ("wechat-unionid", "u-1"))

    assert matched.status_code == 200
    assert matched.json()["id"] == first["id"]
    assert matched.json()["name"] == request_fields["name"]
    customer = sandbox.find_customer("wechat-unionid", "u-1")
    assert customer is not None and customer["id"] == first["id"]
    assert [item["identityType"] for item in customer["identities"]] == ["wechat", "wechat-unionid"]


def test_mobile_is_matched_before_email(api: Api) -> None:
    by_email = api.upsert({"email": "a@example.com"}, ("wechat", "w-a")).json()
    by_mobile = api.upsert({"mobile": "13800000000"}, ("wechat", "w-b")).json()

    matched = api.upsert({"email": "a@example.com", "mobile": "13800000000"}, ("custom", "c-1"))

    assert matched.status_code == 200
    assert matched.json()["id"] == by_mobile["id"] != by_email["id"]


def test_upsert_with_nothing_matching_creates_a_new_customer(sandbox: DmHubSandbox, api: Api) -> None:
    api.upsert({"email": "a@example.com"}, ("email", "a@example.com"))

    other = api.upsert({"email": "b@example.com"}, ("email", "b@example.com"))

    assert other.status_code == 201
    assert [customer["id"] for customer in sandbox.customers()] == [1, 2]


def test_an_identity_of_another_customer_is_a_conflict_and_nothing_changes(
    sandbox: DmHubSandbox, api: Api
) -> None:
    api.upsert({"name": "A"}, ("wechat", "w-a"))
    api.upsert({"name": "B"}, ("wechat", "w-b"))
    before = sandbox.customers()

    conflict = api.upsert({"name": "Changed"}, ("wechat", "w-a"), ("wechat", "w-b"))

    assert conflict.status_code == 400
    assert conflict.json() == {
        "error_code": 40900,
        "error_description": "customerIdentities[1]: identity wechat 'w-b' already belongs to customer 2",
    }
    assert sandbox.customers() == before


ONE_IDENTITY = [{"identityType": "wechat", "identityValue": "w-1"}]


@pytest.mark.parametrize(
    ("customer", "identities", "named"),
    [
        ({"nickname": "x"}, ONE_IDENTITY, "customer.nickname: unknown field"),
        ({"id": 5}, ONE_IDENTITY, "customer.id: unknown field"),
        ({"gender": "male"}, ONE_IDENTITY, "customer.gender: 'male' is not 0"),
        ({"gender": True}, ONE_IDENTITY, "customer.gender: 'true' is not 0"),
        ({"mobile": "153-0083"}, ONE_IDENTITY, "customer.mobile: '153-0083' is not a mobile number"),
        ({"email": "nope"}, ONE_IDENTITY, "customer.email: 'nope' is not a valid e-mail address"),
        ({"birthday": "1990-02-30"}, ONE_IDENTITY, "customer.birthday: '1990-02-30' is not a date"),
        (
            {"dateJoin": "2023-01-02 03:04:05"},
            ONE_IDENTITY,
            "customer.dateJoin: '2023-01-02 03:04:05' is not a UTC",
        ),
        ({"attr21": "x"}, ONE_IDENTITY, "customer.attr21: unknown field"),
        ({"attr3": [1]}, ONE_IDENTITY, "customer.attr3: '[1]' is not a string, a number or a boolean"),
        ({}, [], "customerIdentities: must contain at least one identity"),
        ({}, None, "customerIdentities: required"),
        (None, ONE_IDENTITY, "customer: required"),
        (
            {},
            [{"identityType": "t" * 33, "identityValue": "b"}],
            "[0].identityType: is 33 characters long; at most 32",
        ),
        (
            {},
            [{"identityType": "a", "identityValue": "v" * 129}],
            "[0].identityValue: is 129 characters long",
        ),
        (
            {},
            [{"identityType": "email", "identityValue": "x"}],
            "[0].identityValue: 'x' is not a valid e-mail",
        ),
        (
            {},
            [{"identityType": "", "identityValue": "b"}],
            "customerIdentities[0].identityType: must not be empty",
        ),
        ({}, [{"identityType": "a"}], "customerIdentities[0].identityValue: required"),
        ({}, ONE_IDENTITY * 2, "customerIdentities[1]: repeats customerIdentities[0]"),
    ],
)
def test_upsert_validation_names_the_failing_field(
    sandbox: DmHubSandbox, api: Api, customer: Any, identities: Any, named: str
) -> None:
    body = {
        name: value
        for name, value in (("customer", customer), ("customerIdentities", identities))
        if value is not None
    }

    answer = api.call("POST", "/v1/customerandidentities", json=body)

    assert answer.status_code == 400
    assert answer.json()["error_code"] == 40000
    assert named in answer.json()["error_description"]
    assert sandbox.customers() == []


def test_a_v2_application_gets_field_errors_in_the_v2_shape(v2: DmHubSandbox) -> None:
    token = v2_token(v2)

    answer = requests.post(
        f"{v2.url}/v1/customerandidentities",
        json={"customer": {"email": "bad", "gender": 7}, "customerIdentities": [{"identityType": "x"}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert answer.json()["success"] is False and error["code"] == 40000
    assert [item["field"] for item in error["fieldErrors"]] == [
        "customer.gender",
        "customer.email",
        "customerIdentities[0].identityValue",
    ]
    assert "customer.email: 'bad' is not a valid e-mail address" in error["message"]


def test_deleting_a_customer_removes_its_identities_and_memberships_but_keeps_events(
    sandbox: DmHubSandbox, api: Api
) -> None:
    customer_id = api.new_customer("gone@example.com")
    keeper = api.new_customer("stays@example.com")
    list_id = api.new_list("VIP")
    api.join(customer_id, list_id)
    api.join(keeper, list_id)
    api.call("POST", "/v1/customerevents", json={"customerId": customer_id, "event": "purchase"})

    deleted = api.call("DELETE", f"/v1/customers/{customer_id}")

    assert deleted.status_code == 204 and deleted.content == b""
    missing = api.call("GET", f"/v1/customers/{customer_id}")
    assert missing.status_code == 404
    assert missing.json() == {
        "error_code": 40400,
        "error_description": f"customer {customer_id} does not exist",
    }
    assert sandbox.find_customer("email", "gone@example.com") is None
    assert (
        api.call(
            "GET",
            "/v1/customeridentities",
            params={"identityType": "email", "identityValue": "gone@example.com"},
        ).json()
        == []
    )
    assert sandbox.members(list_id) == [keeper]
    assert [event["customerId"] for event in sandbox.events()] == [customer_id]
    assert api.call("DELETE", f"/v1/customers/{customer_id}").status_code == 404
    assert api.call("GET", "/v1/customers/abc").status_code == 400


# -- events ----------------------------------------------------------------------------------------------------


def test_an_event_is_stored_with_an_id_and_defaults_its_date_to_now(sandbox: DmHubSandbox, api: Api) -> None:
    customer_id = api.new_customer("buyer@example.com")

    answer = api.call(
        "POST",
        "/v1/customerevents",
        json={
            "customerId": customer_id,
            "event": "purchase",
            "targetName": "Shoes",
            "attr1": 99.5,
            "externalId": "o-1",
        },
    )

    assert answer.status_code == 201
    assert answer.json() == {
        "id": 1,
        "customerId": customer_id,
        "event": "purchase",
        "date": "2023-11-14T22:13:20Z",
        "targetName": "Shoes",
        "attr1": 99.5,
        "externalId": "o-1",
    }
    assert sandbox.events() == [answer.json()]


def test_the_same_external_id_for_the_same_customer_is_refused(sandbox: DmHubSandbox, api: Api) -> None:
    first = api.new_customer("a@example.com")
    second = api.new_customer("b@example.com")
    event = {
        "customerId": first,
        "event": "purchase",
        "date": "2023-11-01T10:00:00Z",
        "externalId": "order-7",
    }
    assert api.call("POST", "/v1/customerevents", json=event).status_code == 201

    again = api.call("POST", "/v1/customerevents", json=event)
    other_customer = api.call("POST", "/v1/customerevents", json={**event, "customerId": second})

    assert again.status_code == 400
    assert again.json() == {
        "error_code": 40901,
        "error_description": f"duplicate event: externalId 'order-7' is already recorded for customer {first}",
    }
    assert other_customer.status_code == 201
    assert len(sandbox.events()) == 2


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"event": "x"}, 400, "customerId: required"),
        ({"customerId": 1}, 400, "event: required"),
        ({"customerId": 1, "event": "e" * 33}, 400, "event: is 33 characters long; at most 32"),
        (
            {"customerId": 1, "event": "x", "date": "2023-11-01"},
            400,
            "date: '2023-11-01' is not a UTC date-time",
        ),
        ({"customerId": 1, "event": "x", "attr6": "y"}, 400, "attr6: unknown field"),
        ({"customerId": 1, "event": "x", "externalId": "e" * 65}, 400, "externalId: is 65 characters long"),
        ({"customerId": "1", "event": "x"}, 400, "customerId: '1' is not an id"),
        ({"customerId": 99, "event": "x"}, 404, "customer 99 does not exist"),
    ],
)
def test_event_validation(
    sandbox: DmHubSandbox, api: Api, body: dict[str, Any], status: int, named: str
) -> None:
    api.new_customer("only@example.com")

    answer = api.call("POST", "/v1/customerevents", json=body)

    assert answer.status_code == status
    assert named in answer.json()["error_description"]
    assert sandbox.events() == []


# -- lists (seed 003) --------------------------------------------------------------------------------------------


def test_create_list_answers_201_with_utc_dates_and_does_not_check_names_are_unique(
    sandbox: DmHubSandbox, api: Api
) -> None:
    first = api.call("POST", "/v1/lists", json={"name": "金卡会员"})
    second = api.call("POST", "/v1/lists", json={"name": "金卡会员"})

    assert first.status_code == second.status_code == 201
    assert first.json() == {
        "id": 1,
        "name": "金卡会员",
        "dateCreated": "2023-11-14T22:13:20Z",
        "lastUpdated": "2023-11-14T22:13:20Z",
    }
    assert second.json()["id"] == 2
    assert [item["name"] for item in sandbox.lists()] == ["金卡会员", "金卡会员"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({}, "name: required"),
        ({"name": "  "}, "name: must not be empty"),
        ({"name": "n" * 256}, "name: is 256 characters long; at most 255"),
        ({"name": "a", "kind": "static"}, "kind: unknown field"),
        (["name"], "body: must be a JSON object"),
    ],
)
def test_create_list_validation(sandbox: DmHubSandbox, api: Api, body: Any, named: str) -> None:
    answer = api.call("POST", "/v1/lists", json=body)

    assert answer.status_code == 400
    assert answer.json()["error_code"] == 40000
    assert named in answer.json()["error_description"]
    assert sandbox.lists() == []


def test_list_query_pages_and_sorts(api: Api, clock: Clock) -> None:
    for name in ("b", "d", "a", "e", "c"):
        api.new_list(name)
        clock.now += 1

    first_page = api.call("GET", "/v1/lists", params={"rows": 2})
    last_page = api.call("GET", "/v1/lists", params={"rows": 2, "page": 3})
    past_end = api.call("GET", "/v1/lists", params={"rows": 2, "page": 4})
    by_name_desc = api.call("GET", "/v1/lists", params={"sidx": "name", "sord": "desc", "rows": 3})
    by_created = api.call("GET", "/v1/lists", params={"sidx": "dateCreated", "sord": "desc", "rows": 1})
    default = api.call("GET", "/v1/lists")

    assert first_page.status_code == 200
    page = first_page.json()
    assert (page["page"], page["records"], page["total"]) == (1, 2, 3)
    assert [row["id"] for row in first_page.json()["rows"]] == [1, 2]
    assert (last_page.json()["page"], last_page.json()["records"]) == (3, 1)
    assert [row["name"] for row in last_page.json()["rows"]] == ["c"]
    assert past_end.json() == {"page": 4, "records": 0, "rows": [], "total": 3}
    assert [row["name"] for row in by_name_desc.json()["rows"]] == ["e", "d", "c"]
    assert [row["name"] for row in by_created.json()["rows"]] == ["c"]
    assert (default.json()["records"], default.json()["total"]) == (5, 1)  # rows default to 20


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sidx": "members"}, "sidx: 'members' is not one of"),
        ({"sord": "DESC"}, "sord: 'DESC' is not one of"),
        ({"rows": "0"}, "rows: '0' is not an integer >= 1"),
        ({"page": "x"}, "page: 'x' is not an integer"),
        ({"rows": "10001"}, "rows: 10001 exceeds the maximum of 10000"),
    ],
)
def test_list_query_rejects_bad_parameters(api: Api, params: dict[str, str], named: str) -> None:
    answer = api.call("GET", "/v1/lists", params=params)

    assert answer.status_code == 400
    assert named in answer.json()["error_description"]


def test_deleting_a_list_removes_its_members_but_never_customers(sandbox: DmHubSandbox, api: Api) -> None:
    customer_id = api.new_customer("member@example.com")
    doomed, kept = api.new_list("doomed"), api.new_list("kept")
    api.join(customer_id, doomed)
    api.join(customer_id, kept)

    deleted = api.call("DELETE", f"/v1/lists/{doomed}")

    assert deleted.status_code == 204
    assert [item["id"] for item in sandbox.lists()] == [kept]
    assert api.call("GET", "/v1/listMembers", params={"listId": doomed}).json() == {"items": []}
    assert sandbox.customers()[0]["lists"] == [kept]
    again = api.call("DELETE", f"/v1/lists/{doomed}")
    assert again.status_code == 404
    assert again.json()["error_description"] == f"list {doomed} does not exist"


def test_adding_a_member_twice_returns_the_existing_membership(
    sandbox: DmHubSandbox, api: Api, clock: Clock
) -> None:
    customer_id, list_id = api.new_customer("c@example.com"), api.new_list("VIP")

    added = api.join(customer_id, list_id)
    clock.now += 30
    again = api.join(customer_id, list_id)

    assert added.status_code == 201
    assert added.json() == {
        "data": {
            "id": 1,
            "customerId": customer_id,
            "dateCreated": "2023-11-14T22:13:20Z",
            "lastUpdated": "2023-11-14T22:13:20Z",
            "listId": list_id,
        }
    }
    assert again.status_code == 200
    assert again.json() == added.json()
    assert sandbox.members(list_id) == [customer_id]


@pytest.mark.parametrize(
    ("data", "status", "described"),
    [
        ({"customerId": 99, "listId": 1}, 404, "customer 99 does not exist"),
        ({"customerId": 1, "listId": 99}, 404, "list 99 does not exist"),
        ({"customerId": 1}, 400, "data.listId: required"),
        ({"customerId": 1, "listId": 1, "extra": True}, 400, "data.extra: unknown field"),
    ],
)
def test_adding_a_member_checks_the_customer_and_the_list(
    sandbox: DmHubSandbox, api: Api, data: dict[str, Any], status: int, described: str
) -> None:
    api.new_customer("c@example.com")
    api.new_list("VIP")

    answer = api.call("POST", "/v1/listMembers", json={"data": data})

    assert answer.status_code == status
    assert described in answer.json()["error_description"]
    assert sandbox.members(1) == []


def test_deleting_a_member_by_member_id(sandbox: DmHubSandbox, api: Api) -> None:
    customer_id, list_id = api.new_customer("c@example.com"), api.new_list("VIP")
    member_id = api.join(customer_id, list_id).json()["data"]["id"]

    deleted = api.call("DELETE", f"/v1/listMembers/{member_id}")
    again = api.call("DELETE", f"/v1/listMembers/{member_id}")

    assert deleted.status_code == 204
    assert sandbox.members(list_id) == []
    assert again.status_code == 404
    assert again.json() == {
        "error_code": 40400,
        "error_description": f"list member {member_id} does not exist",
    }


def test_remove_from_list_takes_query_parameters_and_ignores_non_members(
    sandbox: DmHubSandbox, api: Api
) -> None:
    ids = [api.new_customer(f"c{n}@example.com") for n in range(4)]
    list_id = api.new_list("VIP")
    for customer_id in ids[:3]:
        api.join(customer_id, list_id)

    removed = api.call(
        "POST",
        "/v1/listservice/removeFromList",
        params={"customerIds": f"{ids[0]},{ids[2]},{ids[3]},777", "listId": list_id},
    )

    assert removed.status_code == 200
    assert removed.json() == {"removed": 2}
    assert sandbox.members(list_id) == [ids[1]]


@pytest.mark.parametrize(
    ("params", "status", "described"),
    [
        ({"customerIds": "1,x", "listId": "1"}, 400, "customerIds: 'x' is not a customer id"),
        ({"customerIds": "1,,2", "listId": "1"}, 400, "customerIds: '' is not a customer id"),
        ({"customerIds": "1 ,2", "listId": "1"}, 400, "customerIds: '1 ' is not a customer id"),
        ({"listId": "1"}, 400, "customerIds: required"),
        ({"customerIds": "1"}, 400, "listId: required"),
        ({"customerIds": "1", "listId": "9"}, 404, "list 9 does not exist"),
    ],
)
def test_remove_from_list_rejects_malformed_parameters(
    sandbox: DmHubSandbox, api: Api, params: dict[str, str], status: int, described: str
) -> None:
    customer_id, list_id = api.new_customer("c@example.com"), api.new_list("VIP")
    api.join(customer_id, list_id)

    answer = api.call("POST", "/v1/listservice/removeFromList", params=params)

    assert answer.status_code == status
    assert described in answer.json()["error_description"]
    assert sandbox.members(list_id) == [customer_id]


def test_batch_add_returns_every_membership_in_request_order(sandbox: DmHubSandbox, api: Api) -> None:
    ids = [api.new_customer(f"c{n}@example.com") for n in range(3)]
    list_id = api.new_list("VIP")
    existing = api.join(ids[1], list_id).json()["data"]

    answer = api.call(
        "POST",
        "/v1/listMembersBatch",
        json={"items": [{"customerId": c, "listId": list_id} for c in reversed(ids)]},
    )

    assert answer.status_code == 200
    items = answer.json()["items"]
    assert [item["customerId"] for item in items] == list(reversed(ids))
    assert items[1] == existing
    assert sandbox.members(list_id) == ids


def test_batch_add_is_atomic_and_names_the_bad_item(sandbox: DmHubSandbox, api: Api) -> None:
    customer_id, list_id = api.new_customer("c@example.com"), api.new_list("VIP")

    answer = api.call(
        "POST",
        "/v1/listMembersBatch",
        json={
            "items": [{"customerId": customer_id, "listId": list_id}, {"customerId": 404, "listId": list_id}]
        },
    )

    assert answer.status_code == 400
    assert answer.json() == {
        "error_code": 40000,
        "error_description": "items[1].customerId: customer 404 does not exist",
    }
    assert sandbox.members(list_id) == []


def test_batch_add_refuses_more_than_max_batch_items(clock: Clock) -> None:
    with DmHubSandbox(APP_ID, SECRET, clock=clock, max_batch=2) as small:
        api = Api(small)
        customer_id, list_id = api.new_customer("c@example.com"), api.new_list("VIP")
        item = {"customerId": customer_id, "listId": list_id}

        answer = api.call("POST", "/v1/listMembersBatch", json={"items": [item, item, item]})

        assert answer.status_code == 400
        assert answer.json()["error_description"] == "items: 3 items exceed the limit of 2 per request"
        assert small.members(list_id) == []
        assert api.call("POST", "/v1/listMembersBatch", json={"items": [item, item]}).status_code == 200


@pytest.fixture
def populated(api: Api) -> tuple[Api, list[int], int]:
    """Five customers (ids 1..5) in list 1, added in the order 3, 1, 5, 2, 4 (member ids 1..5)."""
    for n in range(5):
        api.new_customer(f"m{n}@example.com")
    list_id = api.new_list("VIP")
    order = [3, 1, 5, 2, 4]
    api.call(
        "POST", "/v1/listMembersBatch", json={"items": [{"customerId": c, "listId": list_id} for c in order]}
    )
    return api, order, list_id


def test_list_members_keyset_paging_ascending_by_customer_id(populated: tuple[Api, list[int], int]) -> None:
    api, _, list_id = populated

    first = api.call("GET", "/v1/listMembers", params={"listId": list_id, "rows": 2}).json()["items"]
    second = api.call(
        "GET", "/v1/listMembers", params={"listId": list_id, "rows": 2, "sinceId": first[-1]["customerId"]}
    ).json()["items"]
    third = api.call(
        "GET", "/v1/listMembers", params={"listId": list_id, "rows": 2, "sinceId": second[-1]["customerId"]}
    ).json()["items"]

    assert [item["customerId"] for item in first + second + third] == [1, 2, 3, 4, 5]
    assert len(third) == 1


def test_list_members_keyset_paging_descending_by_member_id(populated: tuple[Api, list[int], int]) -> None:
    api, order, list_id = populated
    params: dict[str, Any] = {"listId": list_id, "rows": 2, "sidx": "id", "sord": "desc"}

    first = api.call("GET", "/v1/listMembers", params=params).json()["items"]
    second = api.call("GET", "/v1/listMembers", params={**params, "sinceId": first[-1]["id"]}).json()["items"]

    assert [item["id"] for item in first + second] == [5, 4, 3, 2]
    assert [item["customerId"] for item in first + second] == list(reversed(order))[:4]


def test_list_members_filters_by_customer_and_limits_rows_to_10000(
    populated: tuple[Api, list[int], int],
) -> None:
    api, _, list_id = populated
    other_list = api.new_list("Other")
    api.join(2, other_list)

    by_customer = api.call("GET", "/v1/listMembers", params={"customerId": 2}).json()["items"]
    most = api.call("GET", "/v1/listMembers", params={"rows": 10000})
    too_many = api.call("GET", "/v1/listMembers", params={"rows": 10001})
    bad_sidx = api.call("GET", "/v1/listMembers", params={"sidx": "dateCreated"})

    assert [(item["listId"], item["customerId"]) for item in by_customer] == [(list_id, 2), (other_list, 2)]
    assert most.status_code == 200 and len(most.json()["items"]) == 6
    assert too_many.status_code == 400
    assert too_many.json()["error_description"] == "rows: 10001 exceeds the maximum of 10000"
    assert bad_sidx.status_code == 400


def test_member_count_counts_members_who_joined_inside_the_window(api: Api, clock: Clock) -> None:
    ids = [api.new_customer(f"w{n}@example.com") for n in range(3)]
    list_id = api.new_list("VIP")
    for customer_id in ids:  # joined at 22:13:20, 22:43:20, 23:13:20
        api.join(customer_id, list_id)
        clock.now += 1800

    def count(**params: str) -> Any:
        return api.call("GET", "/v1/listservice/memberCount", params={"listId": list_id, **params})

    assert count().json() == {"listId": list_id, "count": 3}
    assert count(joinListDateSince="2023-11-14T22:43:20").json()["count"] == 2  # inclusive
    assert count(joinListDateTo="2023-11-14T22:43:20").json()["count"] == 2  # inclusive
    assert (
        count(joinListDateSince="2023-11-14T22:13:21", joinListDateTo="2023-11-14T23:13:19").json()["count"]
        == 1
    )
    bad = count(joinListDateSince="2023-11-14T23:13:20Z")
    assert bad.status_code == 400
    assert bad.json()["error_description"].startswith(
        "joinListDateSince: '2023-11-14T23:13:20Z' is not a UTC"
    )
    reversed_window = count(joinListDateSince="2023-11-15T00:00:00", joinListDateTo="2023-11-14T00:00:00")
    assert reversed_window.status_code == 400
    missing = api.call("GET", "/v1/listservice/memberCount")
    assert missing.status_code == 400 and "listId: required" in missing.json()["error_description"]
    assert api.call("GET", "/v1/listservice/memberCount", params={"listId": 77}).status_code == 404


# -- state, faults, request log, admin ---------------------------------------------------------------------------


def test_state_survives_a_restart_and_pages_through_the_admin_route(tmp_path: Path, clock: Clock) -> None:
    journal = tmp_path / "dmhub.jsonl"
    with DmHubSandbox(APP_ID, SECRET, state_path=journal, clock=clock) as first:
        api = Api(first)
        ids = [api.new_customer(f"p{n}@example.com") for n in range(5)]
        list_id = api.new_list("VIP")
        api.join(ids[0], list_id)
        token = api.token

    with DmHubSandbox(APP_ID, SECRET, state_path=journal, clock=clock) as second:
        api = Api(second, token)  # the token issued before the restart still works
        assert api.call("GET", f"/v1/customers/{ids[4]}").json()["email"] == "p4@example.com"
        assert second.members(list_id) == [ids[0]]
        assert api.new_customer("after@example.com") == 6  # ids continue
        assert second.token_requests() == 1

        state = f"{second.url}/_sandbox/state/customers"
        page_one = requests.get(state, params={"offset": 0, "limit": 4}, timeout=TIMEOUT).json()
        page_two = requests.get(
            state, params={"offset": page_one["next_offset"], "limit": 4}, timeout=TIMEOUT
        ).json()

    assert (page_one["total"], page_one["next_offset"], page_two["next_offset"]) == (6, 4, None)
    assert [item["id"] for item in page_one["items"] + page_two["items"]] == [1, 2, 3, 4, 5, 6]
    assert token not in journal.read_text(encoding="utf-8")  # only the token's digest is stored


def test_an_injected_503_answers_once_in_the_application_error_shape(
    sandbox: DmHubSandbox, v2: DmHubSandbox, api: Api
) -> None:
    sandbox.inject(status=503, path_prefix="/v1/lists", retry_after=2)
    v2.inject(status=503)

    faulted = api.call("GET", "/v1/lists")
    recovered = api.call("GET", "/v1/lists")
    v2_faulted = requests.get(f"{v2.url}/v2/oauth2/token", timeout=TIMEOUT)

    assert faulted.status_code == 503
    assert faulted.headers["Retry-After"] == "2"
    assert faulted.json()["error_code"] == 50300
    assert recovered.status_code == 200
    assert v2_faulted.status_code == 503
    assert v2_faulted.json()["success"] is False and v2_faulted.json()["error"]["code"] == 50300


def test_the_request_log_redacts_every_credential(sandbox: DmHubSandbox, v2: DmHubSandbox) -> None:
    v1_api = Api(sandbox)
    v1_api.call("GET", "/v1/lists")
    token = v2_token(v2)
    requests.get(f"{v2.url}/v1/lists", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)

    v1_log = sandbox.requests
    v2_log = requests.get(f"{v2.url}/_sandbox/requests", timeout=TIMEOUT)

    assert v1_log[0].query["appid"] == v1_log[0].query["secret"] == ["***"]
    assert v1_log[0].query["grant_type"] == ["client_credentials"]
    assert v1_log[1].query["access_token"] == ["***"]
    logged = v2_log.json()["requests"]
    assert logged[0]["query"]["app_id"] == logged[0]["query"]["secret"] == ["***"]
    assert logged[1]["headers"]["authorization"] == "***"
    for secret_value in (SECRET, APP_ID, token, v1_api.token):
        assert secret_value not in v2_log.text
        assert secret_value not in str([record.to_dict() for record in v1_log])


def test_admin_routes_show_customers_lists_and_events(sandbox: DmHubSandbox, api: Api) -> None:
    customer_id = api.new_customer("admin@example.com")
    list_id = api.new_list("VIP")
    api.join(customer_id, list_id)
    api.call("POST", "/v1/customerevents", json={"customerId": customer_id, "event": "open"})
    admin = f"{sandbox.url}/_sandbox"

    customers = requests.get(f"{admin}/customers", timeout=TIMEOUT).json()["customers"]
    lists = requests.get(f"{admin}/lists", timeout=TIMEOUT).json()["lists"]
    events = requests.get(f"{admin}/events", timeout=TIMEOUT).json()["events"]

    assert customers[0]["email"] == "admin@example.com"
    assert [item["identityValue"] for item in customers[0]["identities"]] == ["admin@example.com"]
    assert customers[0]["lists"] == [list_id]
    assert lists == [{**sandbox.lists()[0], "members": 1}] and lists[0]["name"] == "VIP"
    assert [event["event"] for event in events] == ["open"]
    assert requests.post(f"{admin}/reset", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{admin}/customers", timeout=TIMEOUT).json() == {"customers": []}
    assert sandbox.token_requests() == 0


def test_runs_standalone_as_a_module() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forwarder_local.sandboxes.dmhub",
            "--port",
            "0",
            "--app-id",
            APP_ID,
            "--secret",
            SECRET,
            "--api-version",
            "v2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" on ", 1)[1].split()[0]
        token = requests.get(
            f"{url}/v2/oauth2/token",
            params={"app_id": APP_ID, "secret": SECRET, "grant_type": "client_credentials"},
            timeout=TIMEOUT,
        ).json()["access_token"]
        created = requests.post(
            f"{url}/v1/lists",
            json={"name": "cli"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
        )
        assert created.status_code == 201
        assert requests.get(f"{url}/_sandbox/lists", timeout=TIMEOUT).json()["lists"][0]["name"] == "cli"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
