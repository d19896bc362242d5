"""The CRM CareCloud sandbox behaves like CareCloud's customer-interface API (the published spec), over real HTTP."""

from __future__ import annotations

import base64
import copy
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from forwarder_local.sandboxes.carecloud import (
    BASE_PATH,
    BRNO_STORE_ID,
    FAVOURITE_FLAVOUR_PROPERTY,
    FORWARDER_SOURCE_ID,
    FROZEN_YOGHURT_INTEREST_ID,
    HQ_STORE_CODE,
    HQ_STORE_ID,
    ICE_CREAM_INTEREST_ID,
    LOYALTY_TIER_PROPERTY,
    SCOOPS_PER_WEEK_PROPERTY,
    SORBET_INTEREST_ID,
    WEBSHOP_SOURCE_ID,
    WEDDING_DATE_PROPERTY,
    CareCloudSandbox,
)

APP_ID = "82de12eb8b138791e678fd11c3"
DEVICE_ID = "forwarder-integration-1"
USER = "customer_interface"
TIMEOUT = 5
SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "carecloud" / "openapi.yaml"
SPEC_SERVER = "https://sandbox.crmcarecloud.com/webservice/rest-api/customer-interface/v1.0"
DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")

JANE: dict[str, Any] = {
    "gender": 2,
    "first_name": "Jane",
    "last_name": "Doe",
    "birthdate": "1990-05-17",
    "email": "jane@example.com",
    "phone": "420777123456",
    "language_id": "en",
    "store_id": HQ_STORE_ID,
    "address": {
        "address1": "Old Town Square",
        "address2": "35",
        "zip": "11000",
        "city": "Prague",
        "country_code": "cz",
    },
    "consents": [{"consent_id": "marketing", "consent_value": 1}],
}


def token_body(device_id: str = DEVICE_ID, application_id: str = APP_ID) -> dict[str, Any]:
    return {
        "device": {
            "device_id": device_id,
            "device_system": "Linux",
            "device_name": "Forwarder",
            "device_type": "server",
        },
        "setup": {"language_id": "en", "allowed_gps": False, "allowed_notifications": False},
        "external_application_id": application_id,
    }


def customer_body(**personal: Any) -> dict[str, Any]:
    information = {**copy.deepcopy(JANE), **personal}
    return {
        "customer": {"personal_information": {k: v for k, v in information.items() if v is not ...}},
        "customer_source": {"customer_source_id": FORWARDER_SOURCE_ID, "external_id": "crm-42"},
        "autologin": False,
    }


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


class Api:
    """A client of one sandbox: its base URL and, once :meth:`login` ran, a token in every request."""

    def __init__(self, sandbox: CareCloudSandbox) -> None:
        self.sandbox = sandbox
        self.base = sandbox.url + BASE_PATH
        self.headers: dict[str, str] = {}

    def issue_token(self, device_id: str = DEVICE_ID) -> str:
        headers = basic(USER, "") if self.sandbox.auth_scheme == "basic" else {}
        answer = requests.post(
            f"{self.base}/tokens", json=token_body(device_id), headers=headers, timeout=TIMEOUT
        )
        assert answer.status_code == 201, answer.text
        token: str = answer.json()["data"]["token_id"]
        return token

    def auth(self, token: str) -> dict[str, str]:
        if self.sandbox.auth_scheme == "basic":
            return basic(USER, token)
        return {"Authorization": f"Bearer {token}"}

    def login(self, device_id: str = DEVICE_ID) -> str:
        token = self.issue_token(device_id)
        self.headers = self.auth(token)
        return token

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=TIMEOUT, **kwargs)

    def create(self, body: dict[str, Any] | None = None) -> str:
        answer = self.call("POST", "/customers", json=body or customer_body())
        assert answer.status_code == 201, answer.text
        customer_id: str = answer.json()["data"]["customer_id"]
        return customer_id


def problems(answer: requests.Response) -> list[tuple[str, str]]:
    """``(name, reason)`` of every invalid parameter of a 400 answer."""
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "about:blank" and error["exception"] and error["title"] and error["detail"]
    return [(item["name"], item["reason"]) for item in error["error_data"]["invalid_params"]]


@pytest.fixture
def sandbox() -> Iterator[CareCloudSandbox]:
    with CareCloudSandbox(external_application_id=APP_ID) as running:
        yield running


@pytest.fixture
def basic_sandbox() -> Iterator[CareCloudSandbox]:
    with CareCloudSandbox(user=USER, external_application_id=APP_ID, auth_scheme="basic") as running:
        yield running


@pytest.fixture
def api(sandbox: CareCloudSandbox) -> Api:
    client = Api(sandbox)
    client.login()
    return client


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    with SPEC_PATH.open(encoding="utf-8") as handle:
        return OpenAPI.from_dict(yaml.load(handle, Loader=yaml.CSafeLoader))


# -- tokens ------------------------------------------------------------------------------------------------


def test_bearer_token_needs_no_credentials_and_then_opens_the_api(sandbox: CareCloudSandbox) -> None:
    client = Api(sandbox)

    created = requests.post(f"{client.base}/tokens", json=token_body(), timeout=TIMEOUT)
    token = created.json()["data"]["token_id"]
    stores = requests.get(
        f"{client.base}/stores", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    without = requests.get(f"{client.base}/stores", timeout=TIMEOUT)

    assert created.status_code == 201
    assert re.fullmatch(r"[0-9a-f]{72}", token)
    assert stores.status_code == 200
    assert without.status_code == 401
    assert without.json()["error"]["exception"] == "unauthorized_exception"
    assert without.json()["error"]["error_data"] == {}
    assert sandbox.token_requests() == 1


def test_basic_scheme_takes_the_user_for_a_token_and_user_colon_token_afterwards(
    basic_sandbox: CareCloudSandbox,
) -> None:
    client = Api(basic_sandbox)
    tokens = f"{client.base}/tokens"

    anonymous = requests.post(tokens, json=token_body(), timeout=TIMEOUT)
    stranger = requests.post(tokens, json=token_body(), headers=basic("someone_else", ""), timeout=TIMEOUT)
    seed_style = requests.post(tokens, json=token_body(), headers=basic(USER, " "), timeout=TIMEOUT)
    token = seed_style.json()["data"]["token_id"]
    stores = requests.get(f"{client.base}/stores", headers=basic(USER, token), timeout=TIMEOUT)
    user_only = requests.get(f"{client.base}/stores", headers=basic(USER, ""), timeout=TIMEOUT)

    assert (anonymous.status_code, stranger.status_code) == (401, 401)
    assert seed_style.status_code == 201  # the seed's example encodes "customer_interface: "
    assert stores.status_code == 200
    assert user_only.status_code == 401
    assert basic_sandbox.token_requests() == 1


def test_the_other_scheme_is_refused_with_401(
    sandbox: CareCloudSandbox, basic_sandbox: CareCloudSandbox
) -> None:
    bearer_token = Api(sandbox).issue_token()
    basic_token = Api(basic_sandbox).issue_token()

    basic_on_bearer = requests.get(
        f"{sandbox.url}{BASE_PATH}/stores", headers=basic(USER, bearer_token), timeout=TIMEOUT
    )
    bearer_on_basic = requests.get(
        f"{basic_sandbox.url}{BASE_PATH}/stores",
        headers={"Authorization": f"Bearer {basic_token}"},
        timeout=TIMEOUT,
    )
    bearer_token_request_on_basic = requests.post(
        f"{basic_sandbox.url}{BASE_PATH}/tokens",
        json=token_body(),
        headers={"Authorization": "Bearer x"},
        timeout=TIMEOUT,
    )

    assert basic_on_bearer.status_code == 401
    assert "Bearer" in basic_on_bearer.json()["error"]["detail"]
    assert bearer_on_basic.status_code == 401
    assert "Basic" in bearer_on_basic.json()["error"]["detail"]
    assert bearer_token_request_on_basic.status_code == 401


def test_token_request_is_validated_and_a_foreign_application_is_forbidden(sandbox: CareCloudSandbox) -> None:
    tokens = f"{sandbox.url}{BASE_PATH}/tokens"
    incomplete = token_body()
    del incomplete["device"]["device_id"]
    incomplete["setup"]["allowed_gps"] = "no"
    del incomplete["external_application_id"]

    invalid = requests.post(tokens, json=incomplete, timeout=TIMEOUT)
    foreign = requests.post(tokens, json=token_body(application_id="another-app"), timeout=TIMEOUT)
    not_json = requests.post(
        tokens, data=b"{device", headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )

    assert problems(invalid) == [
        ("device.device_id", "required"),
        ("setup.allowed_gps", "invalid_value_format"),
        ("external_application_id", "required"),
    ]
    assert foreign.status_code == 403
    assert foreign.json()["error"]["exception"] == "external_application_not_allowed_exception"
    assert problems(not_json) == [("body", "invalid_value_format")]
    assert sandbox.token_requests() == 0


def test_a_new_token_for_the_same_device_replaces_the_old_one(sandbox: CareCloudSandbox) -> None:
    client = Api(sandbox)
    first = client.issue_token(DEVICE_ID)
    other_device = client.issue_token("another-device")
    second = client.issue_token(DEVICE_ID)

    old = client.call("GET", "/stores", headers=client.auth(first))
    new = client.call("GET", "/stores", headers=client.auth(second))
    other = client.call("GET", "/stores", headers=client.auth(other_device))

    assert first != second
    assert old.status_code == 401
    assert "replaced" in old.json()["error"]["detail"]
    assert (new.status_code, other.status_code) == (200, 200)
    assert sandbox.token_requests() == 3


def test_expired_tokens_stop_working_by_python_call_and_by_admin_route(sandbox: CareCloudSandbox) -> None:
    client = Api(sandbox)
    first = client.issue_token()

    sandbox.expire_tokens()
    after_python = client.call("GET", "/stores", headers=client.auth(first))
    second = client.issue_token()
    expired = requests.post(f"{sandbox.url}/_sandbox/tokens/expire", timeout=TIMEOUT)
    after_admin = client.call("GET", "/stores", headers=client.auth(second))
    third = client.issue_token()

    assert after_python.status_code == 401
    assert expired.status_code == 200
    assert after_admin.status_code == 401
    assert client.call("GET", "/stores", headers=client.auth(third)).status_code == 200


def test_connection_test_needs_no_token(sandbox: CareCloudSandbox) -> None:
    answer = requests.get(
        f"{sandbox.url}{BASE_PATH}/tests/connection", params={"test_string": "taco cat!"}, timeout=TIMEOUT
    )

    assert answer.status_code == 200
    assert answer.json() == {"data": {"test_string": "!tac ocat"}}


# -- reference lists ---------------------------------------------------------------------------------------


def test_reference_lists_are_seeded_and_paged_by_count_and_offset(api: Api) -> None:
    first_store = api.call("GET", "/stores", params={"count": 1}).json()["data"]
    second_store = api.call("GET", "/stores", params={"count": 1, "offset": 1}).json()["data"]
    interests = api.call("GET", "/interests", params={"count": 2}).json()["data"]
    by_name = api.call("GET", "/interests", params={"sort_field": "name", "sort_direction": "DESC"}).json()
    last_property = api.call("GET", "/customer-properties", params={"offset": 3}).json()["data"]
    sources = api.call("GET", "/customer-sources").json()["data"]

    assert first_store["total_items"] == second_store["total_items"] == 2
    hq = first_store["stores"][0]
    assert (hq["store_id"], hq["store_code"], hq["name"]) == (HQ_STORE_ID, HQ_STORE_CODE, "Ice Cream HQ")
    assert hq["store_address"]["city"] == "Prague"
    assert [store["store_id"] for store in second_store["stores"]] == [BRNO_STORE_ID]
    assert [i["interest_id"] for i in interests["interests"]] == [ICE_CREAM_INTEREST_ID, SORBET_INTEREST_ID]
    assert interests["total_items"] == 3
    assert [i["name"] for i in by_name["data"]["interests"]] == ["Sorbet", "Ice cream", "Frozen yoghurt"]
    assert [p["property_id"] for p in last_property["customer_properties"]] == [SCOOPS_PER_WEEK_PROPERTY]
    assert last_property["customer_properties"][0]["data_type"] == "integer"
    assert last_property["total_items"] == 4
    assert {(s["customer_source_id"], s["name"]) for s in sources["customer_sources"]} == {
        (FORWARDER_SOURCE_ID, "Forwarder"),
        (WEBSHOP_SOURCE_ID, "Webshop registration"),
    }
    assert [s["store_id"] for s in api.sandbox.stores()] == [HQ_STORE_ID, BRNO_STORE_ID]


def test_bad_paging_parameters_are_400_with_the_parameter_named(api: Api) -> None:
    zero = api.call("GET", "/stores", params={"count": 0})
    words = api.call("GET", "/interests", params={"offset": "first"})
    unknown = api.call("GET", "/stores", params={"colour": "blue"})
    sort = api.call("GET", "/interests", params={"sort_field": "colour", "sort_direction": "UP"})

    assert problems(zero) == [("count", "not_allowed_value")]
    assert problems(words) == [("offset", "invalid_value_format")]
    assert problems(unknown) == [("colour", "not_allowed_value")]
    assert problems(sort) == [("sort_field", "not_allowed_value"), ("sort_direction", "not_allowed_value")]


# -- customers ---------------------------------------------------------------------------------------------


def test_created_customer_is_read_back_by_id_and_found_by_email_and_phone(api: Api) -> None:
    created = api.call("POST", "/customers", json=customer_body())
    customer_id = created.json()["data"]["customer_id"]

    by_id = api.call("GET", f"/customers/{customer_id}")
    by_email = api.call("GET", "/customers", params={"email": "JANE@example.com"})
    by_phone = api.call("GET", "/customers", params={"phone": "420777123456"})
    by_source = api.call("GET", "/customers", params={"customer_source_id": WEBSHOP_SOURCE_ID})
    nobody = api.call("GET", "/customers", params={"email": "nobody@example.com"})

    assert created.status_code == 201
    assert re.fullmatch(r"[0-9a-f]{26}", customer_id)
    customer = by_id.json()["data"]
    assert customer["customer_id"] == customer_id
    assert customer["state"] == 1
    assert DATETIME.fullmatch(customer["last_change"])
    information = customer["personal_information"]
    assert information["salutation"] == "Dear Mrs. Doe"  # generated: the POST did not set one
    assert {k: v for k, v in information.items() if k not in ("salutation", "consents")} == {
        k: v for k, v in JANE.items() if k != "consents"
    }
    assert [(c["consent_id"], c["consent_value"]) for c in information["consents"]] == [("marketing", 1)]
    assert DATETIME.fullmatch(information["consents"][0]["last_change"])
    assert by_email.json()["data"] == {"customers": [customer], "total_items": 1}
    assert by_phone.json()["data"]["customers"] == [customer]
    assert by_source.json()["data"] == {"customers": [], "total_items": 0}
    assert nobody.json()["data"] == {"customers": [], "total_items": 0}
    stored = api.sandbox.find(email="jane@example.com")
    assert stored is not None
    assert stored["customer_source_records"][0]["external_id"] == "crm-42"
    assert stored["password_set"] is False


def test_an_unknown_customer_is_404_with_the_resource_named(api: Api) -> None:
    answer = api.call("GET", "/customers/0123456789abcdef0123456789")

    assert answer.status_code == 404
    assert answer.json()["error"]["error_data"] == {
        "resource_name": "customers",
        "resource_id": "0123456789abcdef0123456789",
    }


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


PI = "customer.personal_information"


@pytest.mark.parametrize(
    ("mutate", "name", "reason"),
    [
        (_without("customer"), "customer", "required"),
        (_without("customer_source"), "customer_source", "required"),
        (_without("autologin"), "autologin", "required"),
        (_set("autologin", "yes"), "autologin", "invalid_value_format"),
        (_without(f"{PI}.language_id"), f"{PI}.language_id", "required"),
        (_set(f"{PI}.language_id", ""), f"{PI}.language_id", "empty"),
        (_set(f"{PI}.email", "Jane@Example.com"), f"{PI}.email", "invalid_value_format"),
        (_set(f"{PI}.email", "jane.example.com"), f"{PI}.email", "invalid_value_format"),
        (_set(f"{PI}.phone", "+420 777 123 456"), f"{PI}.phone", "invalid_value_format"),
        (_set(f"{PI}.gender", 7), f"{PI}.gender", "not_allowed_value"),
        (_set(f"{PI}.gender", "2"), f"{PI}.gender", "invalid_value_format"),
        (_set(f"{PI}.birthdate", "17.05.1990"), f"{PI}.birthdate", "invalid_value_format"),
        (_set(f"{PI}.birthdate", "1990-02-30"), f"{PI}.birthdate", "invalid_value_format"),
        (_set(f"{PI}.store_id", "no-such-store"), f"{PI}.store_id", "not_found"),
        (_set(f"{PI}.store_id", ""), f"{PI}.store_id", "empty"),
        (_set(f"{PI}.address", {"zip": 11000}), f"{PI}.address.zip", "invalid_value_format"),
        (
            _set(f"{PI}.address", {"country_code": "CZE"}),
            f"{PI}.address.country_code",
            "invalid_value_format",
        ),
        (_set(f"{PI}.agreement", {"agreement_gtc": 3}), f"{PI}.agreement.agreement_gtc", "not_allowed_value"),
        (_set(f"{PI}.consents", [{"consent_id": "x"}]), f"{PI}.consents[0].consent_value", "required"),
        (_set(f"{PI}.nickname", "JD"), f"{PI}.nickname", "not_allowed_value"),
        (_set(f"{PI}.photo_url", "https://x"), f"{PI}.photo_url", "not_allowed_value"),
        (_set("customer.customer_id", "abc"), "customer.customer_id", "not_allowed_value"),
        (_set("customer_sources", []), "customer_sources", "not_allowed_value"),  # the seed's shape
        (
            _set("customer_source.customer_source_id", "nope"),
            "customer_source.customer_source_id",
            "not_found",
        ),
        (_set("autologin", True), "password", "required"),
        (_set("password", "secret"), "password", "invalid_value_format"),
        (_set("referral_code", "FRIEND2024"), "referral_code", "not_found"),
        (
            _set("property_records", [{"property_id": "shoe_size", "property_value": "42"}]),
            "property_records[0].property_id",
            "not_found",
        ),
        (
            _set(
                "property_records", [{"property_id": WEDDING_DATE_PROPERTY, "property_value": "13.08.2001"}]
            ),
            "property_records[0].property_value",
            "invalid_value_format",
        ),
    ],
)
def test_each_invalid_customer_field_is_named_with_its_reason(
    api: Api, mutate: Callable[[dict[str, Any]], None], name: str, reason: str
) -> None:
    body = customer_body()
    mutate(body)

    answer = api.call("POST", "/customers", json=body)

    assert problems(answer) == [(name, reason)]
    assert api.sandbox.customers() == []


def test_every_problem_of_a_customer_is_listed_at_once_and_passwords_are_never_echoed(api: Api) -> None:
    body = customer_body(email="JANE@EXAMPLE.COM", phone="0777", gender=0, language_id=...)
    body["password"] = "weak"

    answer = api.call("POST", "/customers", json=body)

    assert sorted(problems(answer)) == [
        (f"{PI}.email", "invalid_value_format"),
        (f"{PI}.gender", "not_allowed_value"),
        (f"{PI}.language_id", "required"),
        (f"{PI}.phone", "invalid_value_format"),
        ("password", "invalid_value_format"),
    ]
    invalid = {item["name"]: item for item in answer.json()["error"]["error_data"]["invalid_params"]}
    assert invalid[f"{PI}.email"]["value"] == "JANE@EXAMPLE.COM"
    assert invalid["password"]["value"] == "***"
    assert "weak" not in answer.text


def test_gender_null_means_not_set_and_is_never_answered_as_null(api: Api) -> None:
    customer_id = api.create(customer_body(gender=None))

    information = api.call("GET", f"/customers/{customer_id}").json()["data"]["personal_information"]

    assert "gender" not in information
    assert information["salutation"] == "Dear Jane Doe"


def test_an_email_already_used_by_another_customer_is_already_exists(api: Api) -> None:
    api.create()

    duplicate = api.call("POST", "/customers", json=customer_body(phone="420600000001"))

    assert problems(duplicate) == [(f"{PI}.email", "already_exists")]
    assert len(api.sandbox.customers()) == 1


def test_put_replaces_the_whole_customer_so_omitted_fields_are_gone(api: Api) -> None:
    customer_id = api.create()
    read = api.call("GET", f"/customers/{customer_id}").json()["data"]["personal_information"]

    replaced = api.call(
        "PUT",
        f"/customers/{customer_id}",
        json={"customer": {"personal_information": {"language_id": "cs", "last_name": "Smith", "gender": 2}}},
    )
    after = api.call("GET", f"/customers/{customer_id}").json()["data"]["personal_information"]

    assert replaced.status_code == 204
    assert replaced.content == b""
    assert read["first_name"] == "Jane" and read["email"] == "jane@example.com"
    assert after == {
        "salutation": "Dear Mrs. Smith",
        "gender": 2,
        "last_name": "Smith",
        "language_id": "cs",
        "store_id": HQ_STORE_ID,  # the spec: store_id can be changed, not removed
    }
    assert (
        api.call("GET", "/customers", params={"email": "jane@example.com"}).json()["data"]["total_items"] == 0
    )


def test_put_of_what_was_read_must_drop_read_only_fields(api: Api) -> None:
    customer_id = api.create()
    read = api.call("GET", f"/customers/{customer_id}").json()["data"]

    echoed = api.call("PUT", f"/customers/{customer_id}", json={"customer": read})
    information = copy.deepcopy(read["personal_information"])
    for consent in information["consents"]:
        del consent["last_change"]
    information["store_id"] = BRNO_STORE_ID
    merged = api.call(
        "PUT", f"/customers/{customer_id}", json={"customer": {"personal_information": information}}
    )

    assert sorted(problems(echoed)) == [
        ("customer.customer_id", "not_allowed_value"),
        ("customer.last_change", "not_allowed_value"),
        ("customer.personal_information.consents[0].last_change", "not_allowed_value"),
        ("customer.state", "not_allowed_value"),
    ]
    assert merged.status_code == 204
    stored = api.sandbox.find(customer_id=customer_id)
    assert stored is not None
    assert stored["personal_information"]["store_id"] == BRNO_STORE_ID
    assert stored["personal_information"]["first_name"] == "Jane"


def test_put_is_validated_like_post_and_cannot_take_another_customers_email(api: Api) -> None:
    jane = api.create()
    john = api.create(customer_body(email="john@example.com", first_name="John", phone=...))

    stolen = api.call(
        "PUT",
        f"/customers/{john}",
        json={"customer": {"personal_information": {"language_id": "en", "email": "jane@example.com"}}},
    )
    removed_store = api.call(
        "PUT",
        f"/customers/{john}",
        json={
            "customer": {"personal_information": {"language_id": "en", "store_id": ""}},
            "autologin": False,
        },
    )
    missing = api.call(
        "PUT", "/customers/0123456789abcdef0123456789", json={"customer": {"personal_information": {}}}
    )

    assert problems(stolen) == [(f"{PI}.email", "already_exists")]
    assert problems(removed_store) == [("autologin", "not_allowed_value"), (f"{PI}.store_id", "empty")]
    assert missing.status_code == 404
    found = api.sandbox.find(customer_id=john)
    assert found is not None and found["personal_information"]["email"] == "john@example.com"
    assert api.sandbox.find(email="jane@example.com") == api.sandbox.find(customer_id=jane)


# -- property and interest records -------------------------------------------------------------------------


def test_property_record_is_created_replaced_and_listed(api: Api) -> None:
    customer_id = api.create()
    records = f"/customers/{customer_id}/property-records"

    first = api.call(
        "POST",
        records,
        json={"property_record": {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "gold"}},
    )
    again = api.call(
        "POST",
        records,
        json={"property_record": {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "vip"}},
    )
    unknown = api.call(
        "POST", records, json={"property_record": {"property_id": "shoe", "property_value": "42"}}
    )
    wrong_type = api.call(
        "POST",
        records,
        json={"property_record": {"property_id": SCOOPS_PER_WEEK_PROPERTY, "property_value": "3"}},
    )
    listed = api.call("GET", records)

    assert first.status_code == again.status_code == 201
    assert first.json() == {"data": {"property_record_id": f"{LOYALTY_TIER_PROPERTY}:{customer_id}"}}
    assert problems(unknown) == [("property_record.property_id", "not_found")]
    assert problems(wrong_type) == [("property_record.property_value", "invalid_value_format")]
    assert listed.status_code == 200
    (record,) = listed.json()["data"]["property_records"]
    assert (record["property_id"], record["property_name"], record["property_value"]) == (
        LOYALTY_TIER_PROPERTY,
        "Loyalty tier",
        "vip",
    )
    assert listed.json()["data"]["total_items"] == 1
    assert api.sandbox.property_records(customer_id) == [record]


def test_batch_with_error_processing_1_saves_nothing_and_reports_the_first_error(api: Api) -> None:
    customer_id = api.create()

    answer = api.call(
        "POST",
        f"/customers/{customer_id}/property-records/batch",
        json={
            "property_records": [
                {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "gold"},
                {"property_id": SCOOPS_PER_WEEK_PROPERTY, "property_value": "many"},
                {"property_id": "shoe_size", "property_value": "42"},
            ],
            "error_processing": 1,
        },
    )

    assert problems(answer) == [("property_records[1].property_value", "invalid_value_format")]
    assert api.sandbox.property_records(customer_id) == []


def test_batch_with_error_processing_2_saves_the_valid_records_and_reports_the_others(api: Api) -> None:
    customer_id = api.create()
    batch = f"/customers/{customer_id}/property-records/batch"

    partial = api.call(
        "POST",
        batch,
        json={
            "property_records": [
                {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "gold"},
                {"property_id": SCOOPS_PER_WEEK_PROPERTY, "property_value": "many"},
                {"property_id": WEDDING_DATE_PROPERTY, "property_value": "2001-08-13"},
                {"property_id": "shoe_size", "property_value": "42"},
            ],
            "error_processing": 2,
        },
    )
    complete = api.call(
        "POST",
        batch,
        json={
            "property_records": [{"property_id": FAVOURITE_FLAVOUR_PROPERTY, "property_value": "pistachio"}]
        },
    )
    too_many = api.call(
        "POST",
        batch,
        json={"property_records": [{"property_id": LOYALTY_TIER_PROPERTY, "property_value": "x"}] * 1001},
    )
    bad_mode = api.call("POST", batch, json={"property_records": [], "error_processing": 3})

    assert problems(partial) == [
        ("property_records[1].property_value", "invalid_value_format"),
        ("property_records[3].property_id", "not_found"),
    ]
    assert "2 of 4" in partial.json()["error"]["detail"]
    assert (complete.status_code, complete.content) == (204, b"")
    assert problems(too_many) == [("property_records", "not_allowed_value")]
    assert problems(bad_mode) == [("error_processing", "not_allowed_value"), ("property_records", "empty")]
    saved = {r["property_id"]: r["property_value"] for r in api.sandbox.property_records(customer_id)}
    assert saved == {
        LOYALTY_TIER_PROPERTY: "gold",
        WEDDING_DATE_PROPERTY: "2001-08-13",
        FAVOURITE_FLAVOUR_PROPERTY: "pistachio",
    }


def test_property_records_in_post_and_put_customers_are_saved_with_the_customer(api: Api) -> None:
    body = customer_body()
    body["property_records"] = [{"property_id": WEDDING_DATE_PROPERTY, "property_value": "2001-08-13"}]
    customer_id = api.create(body)

    put = api.call(
        "PUT",
        f"/customers/{customer_id}",
        json={
            "customer": {"personal_information": {"language_id": "en"}},
            "property_records": [{"property_id": SCOOPS_PER_WEEK_PROPERTY, "property_value": 4}],
        },
    )

    assert put.status_code == 204
    saved = {r["property_id"]: r["property_value"] for r in api.sandbox.property_records(customer_id)}
    assert saved == {WEDDING_DATE_PROPERTY: "2001-08-13", SCOOPS_PER_WEEK_PROPERTY: 4}


def test_interest_records_are_added_once_each(api: Api) -> None:
    customer_id = api.create()
    records = f"/customers/{customer_id}/interest-records"

    def add(interest_id: str, owner: str = customer_id) -> requests.Response:
        return api.call(
            "POST", records, json={"interest_record": {"interest_id": interest_id, "customer_id": owner}}
        )

    first = add(ICE_CREAM_INTEREST_ID)
    second = add(FROZEN_YOGHURT_INTEREST_ID)
    twice = add(ICE_CREAM_INTEREST_ID)
    unknown = add("no-such-interest")
    someone_else = add(SORBET_INTEREST_ID, owner="0123456789abcdef0123456789")
    listed = api.call("GET", records)

    assert first.status_code == second.status_code == 201
    assert re.fullmatch(r"[0-9a-f]{26}", first.json()["data"]["interest_record_id"])
    assert problems(twice) == [("interest_record.interest_id", "relation_already_exists")]
    assert problems(unknown) == [("interest_record.interest_id", "not_found")]
    assert problems(someone_else) == [("interest_record.customer_id", "not_allowed_value")]
    data = listed.json()["data"]
    assert [r["interest_id"] for r in data["interest_records"]] == [
        ICE_CREAM_INTEREST_ID,
        FROZEN_YOGHURT_INTEREST_ID,
    ]
    assert data["total_items"] == 2
    assert data["interest_records"][0]["interest_record_id"] == first.json()["data"]["interest_record_id"]
    assert api.sandbox.interest_records(customer_id) == data["interest_records"]


def test_records_of_an_unknown_customer_are_404(api: Api) -> None:
    path = "/customers/0123456789abcdef0123456789"

    properties = api.call("GET", f"{path}/property-records")
    interests = api.call(
        "POST", f"{path}/interest-records", json={"interest_record": {"interest_id": ICE_CREAM_INTEREST_ID}}
    )

    assert (properties.status_code, interests.status_code) == (404, 404)


# -- routing, faults, log, admin, persistence --------------------------------------------------------------


def test_unknown_routes_are_404_and_wrong_methods_405(sandbox: CareCloudSandbox) -> None:
    base = f"{sandbox.url}{BASE_PATH}"

    unknown = requests.get(f"{base}/purchases", timeout=TIMEOUT)
    outside = requests.get(f"{sandbox.url}/customers", timeout=TIMEOUT)
    delete = requests.delete(f"{base}/customers", timeout=TIMEOUT)
    get_tokens = requests.get(f"{base}/tokens", timeout=TIMEOUT)

    assert (unknown.status_code, outside.status_code) == (404, 404)
    assert unknown.json()["error"]["exception"] == "not_found_exception"
    assert (delete.status_code, delete.headers["Allow"]) == (405, "GET, POST")
    assert delete.json()["error"]["error_data"] == {"http_method": "DELETE"}
    assert (get_tokens.status_code, get_tokens.headers["Allow"]) == (405, "POST")


def test_an_injected_503_answers_once_in_the_vendors_error_shape(api: Api) -> None:
    api.sandbox.inject(status=503, method="POST", path_prefix=f"{BASE_PATH}/customers")

    failed = api.call("POST", "/customers", json=customer_body())
    retried = api.call("POST", "/customers", json=customer_body())

    assert failed.status_code == 503
    assert failed.json()["error"]["exception"] == "service_unavailable_exception"
    assert retried.status_code == 201
    assert [r.status for r in api.sandbox.requests][-2:] == [503, 201]
    assert len(api.sandbox.customers()) == 1


def test_the_request_log_redacts_credentials(
    sandbox: CareCloudSandbox, basic_sandbox: CareCloudSandbox
) -> None:
    bearer_client, basic_client = Api(sandbox), Api(basic_sandbox)
    bearer_token, basic_token = bearer_client.login(), basic_client.login()
    body = customer_body()
    body.update(autologin=True, password="Sundae2024x")
    assert bearer_client.call("POST", "/customers", json=body).status_code == 201
    assert basic_client.call("GET", "/stores").status_code == 200

    logged = requests.get(f"{sandbox.url}/_sandbox/requests", timeout=TIMEOUT)
    basic_logged = [record.to_dict() for record in basic_sandbox.requests]

    records = logged.json()["requests"]
    assert [(r["method"], r["status"]) for r in records] == [("POST", 201), ("POST", 201)]
    assert records[1]["headers"]["authorization"] == "***"
    assert records[1]["body"]["password"] == "***"
    assert records[1]["body"]["customer"]["personal_information"]["email"] == "jane@example.com"
    assert basic_logged[1]["headers"]["authorization"] == "***"
    for secret in (bearer_token, "Sundae2024x"):
        assert secret not in logged.text
    assert basic_token not in str(basic_logged)


def test_admin_route_shows_customers_with_their_records(api: Api) -> None:
    customer_id = api.create()
    api.call(
        "POST",
        f"/customers/{customer_id}/interest-records",
        json={"interest_record": {"interest_id": SORBET_INTEREST_ID, "customer_id": customer_id}},
    )

    shown = requests.get(f"{api.sandbox.url}/_sandbox/customers", timeout=TIMEOUT)

    (customer,) = shown.json()["customers"]
    assert customer["customer_id"] == customer_id
    assert customer["personal_information"]["email"] == "jane@example.com"
    assert customer["customer_source_records"][0]["customer_source_id"] == FORWARDER_SOURCE_ID
    assert [r["interest_id"] for r in customer["interest_records"]] == [SORBET_INTEREST_ID]
    assert customer["property_records"] == []
    assert shown.json() == {"customers": api.sandbox.customers()}


def test_customers_and_tokens_survive_a_restart_and_the_state_can_be_paged(tmp_path: Path) -> None:
    journal = tmp_path / "carecloud.jsonl"
    with CareCloudSandbox(external_application_id=APP_ID, state_path=journal) as first:
        client = Api(first)
        token = client.login()
        ids = [
            client.create(customer_body(email=f"fan{n}@example.com", phone=f"42060000000{n}"))
            for n in range(3)
        ]
        client.call(
            "POST",
            f"/customers/{ids[0]}/property-records",
            json={"property_record": {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "gold"}},
        )

    with CareCloudSandbox(external_application_id=APP_ID, state_path=journal) as second:
        client = Api(second)
        client.headers = client.auth(token)
        read = client.call("GET", f"/customers/{ids[1]}")
        duplicate = client.call("POST", "/customers", json=customer_body(email="fan2@example.com"))
        page_one = requests.get(
            f"{second.url}/_sandbox/state/customers", params={"offset": 0, "limit": 2}, timeout=TIMEOUT
        ).json()
        page_two = requests.get(
            f"{second.url}/_sandbox/state/customers", params={"offset": 2, "limit": 2}, timeout=TIMEOUT
        ).json()
        tokens = requests.get(f"{second.url}/_sandbox/state/tokens", timeout=TIMEOUT).json()

        assert read.status_code == 200
        assert read.json()["data"]["personal_information"]["email"] == "fan1@example.com"
        assert problems(duplicate) == [(f"{PI}.email", "already_exists")]
        assert [c["customer_id"] for c in page_one["items"]] == ids[:2]
        assert (page_one["total"], page_one["next_offset"]) == (3, 2)
        assert [c["customer_id"] for c in page_two["items"]] == ids[2:]
        assert page_two["next_offset"] is None
        assert [t["token_id"] for t in tokens["items"]] == [token]
        assert second.token_requests() == 1
        assert [r["property_value"] for r in second.property_records(ids[0])] == ["gold"]
        assert len(second.stores()) == 2  # seeded once, not twice


def test_runs_standalone_as_a_module() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "forwarder_local.sandboxes.carecloud",
            "--port",
            "0",
            "--external-application-id",
            APP_ID,
            "--auth-scheme",
            "basic",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split()[0]
        created = requests.post(
            f"{url}{BASE_PATH}/tokens", json=token_body(), headers=basic(USER, ""), timeout=TIMEOUT
        )
        assert created.status_code == 201
        token = created.json()["data"]["token_id"]
        stores = requests.get(f"{url}{BASE_PATH}/stores", headers=basic(USER, token), timeout=TIMEOUT)
        assert stores.json()["data"]["total_items"] == 2
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# -- conformance with the published spec -------------------------------------------------------------------


def conforms(spec: OpenAPI, sandbox: CareCloudSandbox, answer: requests.Response) -> None:
    """Validate one exchange against the spec, with its URL moved onto the spec's server."""
    prepared = answer.request.copy()
    assert prepared.url is not None
    prepared.url = prepared.url.replace(sandbox.url + BASE_PATH, SPEC_SERVER, 1)
    request = RequestsOpenAPIRequest(prepared)
    spec.validate_request(request)
    spec.validate_response(request, RequestsOpenAPIResponse(answer))


def test_documented_customer_responses_conform_to_the_spec(spec: OpenAPI, api: Api) -> None:
    body = customer_body(salutation="Dear Jane", pre_nominals="Dr.")
    body["customer"]["personal_information"]["agreement"] = {"agreement_gtc": 1}
    body["property_records"] = [{"property_id": WEDDING_DATE_PROPERTY, "property_value": "2001-08-13"}]
    created = api.call("POST", "/customers", json=body)
    read = api.call("GET", f"/customers/{created.json()['data']['customer_id']}")
    minimal = api.call(
        "POST", "/customers", json=customer_body(email="min@example.com", gender=..., phone=...)
    )
    minimal_read = api.call("GET", f"/customers/{minimal.json()['data']['customer_id']}")

    for answer in (created, read, minimal, minimal_read):
        assert answer.status_code in (200, 201), answer.text
        conforms(spec, api.sandbox, answer)


def test_other_documented_responses_conform_to_the_spec(spec: OpenAPI, sandbox: CareCloudSandbox) -> None:
    client = Api(sandbox)
    token_answer = requests.post(f"{client.base}/tokens", json=token_body(), timeout=TIMEOUT)
    client.headers = client.auth(token_answer.json()["data"]["token_id"])
    customer_id = client.create()
    records = f"/customers/{customer_id}"
    answers = [
        token_answer,
        client.call("GET", "/stores"),
        client.call("GET", "/customer-sources"),
        client.call("GET", "/interests"),
        client.call("GET", "/customer-properties"),
        client.call("GET", "/customers", params={"email": "jane@example.com"}),
        client.call(
            "POST",
            f"{records}/property-records",
            json={"property_record": {"property_id": LOYALTY_TIER_PROPERTY, "property_value": "gold"}},
        ),
        client.call("GET", f"{records}/property-records"),
        client.call(
            "POST",
            f"{records}/interest-records",
            json={"interest_record": {"interest_id": SORBET_INTEREST_ID, "customer_id": customer_id}},
        ),
        client.call("GET", f"{records}/interest-records"),
        client.call(
            "PUT",
            records,
            json={"customer": {"personal_information": {"language_id": "en", "email": "jane@example.com"}}},
        ),
        client.call("POST", "/customers", json=customer_body()),  # 400 already_exists
        client.call("GET", "/customers/0123456789abcdef0123456789"),  # 404
        client.call("GET", "/stores", headers={"Authorization": "Bearer expired"}),  # 401
    ]

    assert [answer.status_code for answer in answers] == [
        201,
        200,
        200,
        200,
        200,
        200,
        201,
        200,
        201,
        200,
        204,
        400,
        404,
        401,
    ]
    for answer in answers:
        conforms(spec, sandbox, answer)
