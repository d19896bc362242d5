"""The CRM CareCloud integration against the CareCloud sandbox, a real local HTTP server of the vendor API.

Every test runs its deliveries in both authentication schemes where the scheme does not matter, and every
request a test causes is replayed, after the test, against CareCloud's published OpenAPI spec with
openapi-core: a request shape that drifts from the spec fails the suite.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest
from openapi_core.exceptions import OpenAPIError

from forwarder.integrations.base import Outcome, RecordInvalid, TokenError, Verdict
from forwarder.integrations.carecloud.integration import STORES, CareCloud, CareCloudSettings
from forwarder_local.sandboxes.carecloud import (
    BASE_PATH,
    BRNO_STORE_ID,
    FAVOURITE_FLAVOUR_PROPERTY,
    FORWARDER_SOURCE_ID,
    HQ_STORE_CODE,
    HQ_STORE_ID,
    ICE_CREAM_INTEREST_ID,
    LOYALTY_TIER_PROPERTY,
    SCOOPS_PER_WEEK_PROPERTY,
    SORBET_INTEREST_ID,
    WEBSHOP_SOURCE_ID,
    WEDDING_DATE_PROPERTY,
    AuthScheme,
    CareCloudSandbox,
)

UPSERT = "upsert_customer"
APP_ID = "forwarder-" + secrets.token_hex(8)
SCHEMES: tuple[AuthScheme, ...] = ("bearer", "basic")
SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "carecloud" / "openapi.yaml"
SPEC_SERVER = "https://sandbox.crmcarecloud.com/webservice/rest-api/customer-interface/v1.0"
#: What stands in for the redacted Authorization header when a logged request is replayed onto the spec.
DUMMY_AUTHORIZATION = {"bearer": "Bearer x", "basic": "Basic " + base64.b64encode(b"user:x").decode()}
#: Headers of the transport, not of the API, left out of a replay.
TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding", "user-agent"})
HQ_STORE_NAME = "Ice Cream HQ"

JANE: dict[str, Any] = {
    "email": "Jane.Doe@Example.com",
    "phone": "+420777123456",
    "first_name": "Jane",
    "last_name": "Doe",
    "gender": "female",
    "birthdate": "1990-05-17T08:30:00+02:00",
    "address1": "Old Town Square",
    "zip": "11000",
    "city": "Prague",
    "country_code": "cz",
    "agreement_gtc": "yes",
    "agreement_marketing_communication": "no",
    "external_id": "crm-42",
}


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def settings(**overrides: Any) -> CareCloudSettings:
    """The group key's settings; the base_url is the secret's (``credentials["base_url"]`` wins)."""
    values: dict[str, Any] = {
        "base_url": "https://project.crmcarecloud.example/webservice/rest-api/customer-interface/v1.0",
        "customer_source_id": FORWARDER_SOURCE_ID,
        **overrides,
    }
    return CareCloudSettings(**values)


def prepare(record: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """What validate makes of a mapped record."""
    return CareCloud().prepare(UPSERT, record, settings(**overrides))


# --- the rig: a sandbox, the integration, its credentials and what went over the wire ---------------------


@dataclass
class Vendor:
    """One started CareCloud sandbox and the integration's view of it."""

    sandbox: CareCloudSandbox
    http: requests.Session
    credentials: dict[str, Any]
    integration: CareCloud = field(default_factory=CareCloud)
    #: Every request the integration sent, as it went over the wire (Authorization included).
    sent: list[requests.PreparedRequest] = field(default_factory=list)
    #: Base paths the integration was pointed at; a replay moves each onto the spec's server.
    base_paths: set[str] = field(default_factory=lambda: {BASE_PATH})

    def __post_init__(self) -> None:
        self.http.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.sent.append(response.request)

    @property
    def scheme(self) -> str:
        return self.sandbox.auth_scheme

    def settings(self, **overrides: Any) -> CareCloudSettings:
        return settings(auth_scheme=self.scheme, **overrides)

    def login(self, **settings: Any) -> str:
        """Fetch a token as the refresh schedule does and keep it beside the credentials."""
        self.credentials.update(
            self.integration.fetch_token(self.settings(**settings), self.credentials, self.http)
        )
        return str(self.credentials["token_id"])

    def deliver(self, records: list[dict[str, Any]], **settings: Any) -> list[Outcome]:
        """Prepare each record as validate does, then deliver them as one batch as deliver does."""
        parsed = self.settings(**settings)
        payloads = [self.integration.prepare(UPSERT, record, parsed) for record in records]
        return self.integration.deliver(UPSERT, payloads, parsed, self.credentials, self.http)

    def routes(self, since: int = 0) -> list[tuple[str, str, int]]:
        """``(method, route, status)`` of the vendor requests since the ``since``-th, customer ids as {id}."""
        found = []
        for entry in self.sandbox.requests[since:]:
            path = entry.path[len(BASE_PATH) :]
            parts = path.split("/")
            if len(parts) > 2 and parts[1] == "customers":
                parts[2] = "{id}"
            found.append((entry.method, "/".join(parts), entry.status))
        return found


class OtherClient:
    """Another application of the same project (its own device and token), writing customers directly."""

    def __init__(self, sandbox: CareCloudSandbox) -> None:
        self.base = sandbox.url + BASE_PATH
        self.scheme = sandbox.auth_scheme
        body = {
            "device": {
                "device_id": "back-office",
                "device_system": "server",
                "device_name": "Back office",
                "device_type": "server",
            },
            "setup": {"language_id": "en", "allowed_gps": False, "allowed_notifications": False},
            "external_application_id": APP_ID,
        }
        headers = {"Authorization": basic(f"{sandbox.user}:")} if self.scheme == "basic" else {}
        answer = requests.post(f"{self.base}/tokens", json=body, headers=headers, timeout=5)
        assert answer.status_code == 201, answer.text
        token = answer.json()["data"]["token_id"]
        self.headers = {
            "Authorization": f"Bearer {token}"
            if self.scheme == "bearer"
            else basic(f"{sandbox.user}:{token}")
        }

    def create(self, personal: dict[str, Any]) -> str:
        body = {
            "customer": {"personal_information": {"language_id": "en", **personal}},
            "customer_source": {"customer_source_id": WEBSHOP_SOURCE_ID},
            "autologin": False,
        }
        answer = requests.post(f"{self.base}/customers", json=body, headers=self.headers, timeout=5)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["data"]["customer_id"])


def assert_conforms(spec: OpenAPI, vendor: Vendor) -> None:
    """Replay every request the sandbox logged onto the spec's server and validate it with openapi-core."""
    problems: list[str] = []
    for entry in vendor.sandbox.requests:
        base = next((path for path in vendor.base_paths if entry.path.startswith(path + "/")), None)
        if base is None:
            problems.append(f"{entry.method} {entry.path}: under no base path the integration was given")
            continue
        headers = {name: value for name, value in entry.headers.items() if name not in TRANSPORT_HEADERS}
        if "authorization" in headers:  # redacted in the log; a dummy of the same scheme passes security
            headers["authorization"] = DUMMY_AUTHORIZATION[vendor.scheme]
        prepared = requests.Request(
            entry.method,
            SPEC_SERVER + entry.path[len(base) :],
            params=entry.query,
            headers=headers,
            json=entry.body,
        ).prepare()
        try:
            spec.validate_request(RequestsOpenAPIRequest(prepared))
        except OpenAPIError as error:
            causes = getattr(error.__cause__, "schema_errors", None) or [error.__cause__]
            details = "; ".join(str(getattr(cause, "message", cause)) for cause in causes)
            problems.append(f"{entry.method} {entry.path} {entry.body}: {error} ({details})")
    assert not problems, "requests that break the published spec:\n" + "\n".join(problems)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    """The published spec with one erratum: ``PropertyRecord.property_value`` is ``oneOf`` string, number,
    integer, ... and every integer is valid under both ``number`` and ``integer``, so no integer value (which a
    property of data type integer needs) could ever pass. ``integer`` is dropped from the ``oneOf``: ``number``
    still admits integers, and everything else the schema refuses is refused as before."""
    with SPEC_PATH.open(encoding="utf-8") as handle:
        document = yaml.load(handle, Loader=yaml.CSafeLoader)
    branches = document["components"]["schemas"]["PropertyRecord"]["properties"]["property_value"]["oneOf"]
    assert {"type": "integer"} in branches and {"type": "number"} in branches, (
        "the spec changed: drop the erratum"
    )
    branches.remove({"type": "integer"})
    return OpenAPI.from_dict(document)


@pytest.fixture(autouse=True)
def no_cached_stores() -> Iterator[None]:
    STORES.clear()
    yield
    STORES.clear()


StartVendor = Callable[..., Vendor]


@pytest.fixture
def start_vendor(spec: OpenAPI) -> Iterator[StartVendor]:
    """Start sandboxes on demand; after the test, every request each one saw must conform to the spec."""
    started: list[Vendor] = []
    with requests.Session() as http:

        def start(auth_scheme: AuthScheme = "bearer", user: str = "customer_interface") -> Vendor:
            sandbox = CareCloudSandbox(user=user, external_application_id=APP_ID, auth_scheme=auth_scheme)
            sandbox.start()
            credentials: dict[str, Any] = {
                "external_application_id": APP_ID,
                "base_url": sandbox.url + BASE_PATH,
            }
            if user != "customer_interface":
                credentials["user"] = user
            vendor = Vendor(sandbox, http, credentials)
            started.append(vendor)
            return vendor

        try:
            yield start
        finally:
            for vendor in started:
                vendor.sandbox.stop()
    for vendor in started:
        assert_conforms(spec, vendor)


@pytest.fixture(params=SCHEMES)
def carecloud(request: pytest.FixtureRequest, start_vendor: StartVendor) -> Vendor:
    """A sandbox of the scheme of the test's parameter, with a token already fetched."""
    vendor = start_vendor(request.param)
    vendor.login()
    return vendor


# --- tokens -----------------------------------------------------------------------------------------------


def test_bearer_tokens_are_fetched_without_credentials_then_sent_as_bearer(start_vendor: StartVendor) -> None:
    # given a project on the spec's current scheme
    vendor = start_vendor("bearer")

    # when the integration fetches a token and delivers a customer
    token = vendor.login()
    (outcome,) = vendor.deliver([{"email": "jane@example.com"}])

    # then POST /tokens went without an Authorization header and every other call carried the token
    assert outcome.verdict == Verdict.DELIVERED
    assert vendor.sandbox.token_requests() == 1
    token_request, *calls = vendor.sent
    assert urlsplit(token_request.url).path == BASE_PATH + "/tokens"
    assert "Authorization" not in token_request.headers
    assert token_request.headers["Accept-Language"] == "en"
    assert calls and {call.headers["Authorization"] for call in calls} == {f"Bearer {token}"}
    assert "authorization" not in vendor.sandbox.requests[0].headers
    assert vendor.sandbox.find(email="jane@example.com") is not None


@pytest.mark.parametrize("user", ["customer_interface", "icecream_api"])
def test_basic_tokens_take_the_user_then_the_user_and_the_token(start_vendor: StartVendor, user: str) -> None:
    # given a project on the seed's Basic scheme, with the default API user or one of its own
    vendor = start_vendor("basic", user=user)

    # when the integration fetches a token and delivers a customer
    token = vendor.login()
    (outcome,) = vendor.deliver([{"email": "jane@example.com"}])

    # then POST /tokens carried base64("<user>:") and every other call base64("<user>:<token>")
    assert outcome.verdict == Verdict.DELIVERED
    token_request, *calls = vendor.sent
    assert token_request.headers["Authorization"] == basic(f"{user}:")
    assert calls and {call.headers["Authorization"] for call in calls} == {basic(f"{user}:{token}")}
    assert vendor.sandbox.find(email="jane@example.com") is not None


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_wrong_external_application_id_is_a_token_error_that_never_shows_it(
    start_vendor: StartVendor, scheme: AuthScheme
) -> None:
    # given credentials naming an application the project does not know
    vendor = start_vendor(scheme)
    wrong = "not-" + secrets.token_hex(12)
    vendor.credentials["external_application_id"] = wrong

    # when a token is asked for, then the error names CareCloud's answer, never the credential
    with pytest.raises(TokenError) as raised:
        vendor.login()
    message = str(raised.value)
    assert "POST /tokens" in message and "HTTP 403" in message
    assert "not registered" in message
    assert wrong not in message
    assert vendor.sandbox.token_requests() == 0
    assert "token_id" not in vendor.credentials


@pytest.mark.parametrize("how", ["expired", "replaced"])
def test_a_refused_token_refuses_the_whole_batch_without_sending_the_rest(
    carecloud: Vendor, how: str
) -> None:
    # given the stored token stopped working: expired, or replaced by a newer one for the same device
    if how == "expired":
        carecloud.sandbox.expire_tokens()
    else:
        carecloud.integration.fetch_token(carecloud.settings(), carecloud.credentials, carecloud.http)
    before = len(carecloud.sandbox.requests)
    records = [{"email": f"fan{index}@example.com"} for index in range(3)]

    # when a batch of three is delivered
    outcomes = carecloud.deliver(records)

    # then all three wait for a new token, after a single refused request: the rest was not sent
    assert [outcome.token_refused for outcome in outcomes] == [True] * 3
    assert {outcome.verdict for outcome in outcomes} == {Verdict.RETRY}
    assert outcomes[0].vendor_status == 401
    assert [status for *_, status in carecloud.routes(before)] == [401]
    assert carecloud.sandbox.customers() == []

    # and once the token is renewed the same batch is delivered
    carecloud.login()
    assert [outcome.verdict for outcome in carecloud.deliver(records)] == [Verdict.DELIVERED] * 3
    assert len(carecloud.sandbox.customers()) == 3


# --- new customers ----------------------------------------------------------------------------------------


def test_a_new_customer_is_created_with_the_specs_shape(carecloud: Vendor) -> None:
    # when a customer CareCloud does not know is delivered
    record = {
        **JANE,
        "additional_properties": {LOYALTY_TIER_PROPERTY: "gold", WEDDING_DATE_PROPERTY: "2015-06-20"},
        "interests": [ICE_CREAM_INTEREST_ID, SORBET_INTEREST_ID],
    }
    (outcome,) = carecloud.deliver([record], store=HQ_STORE_CODE)

    # then it is delivered: looked up by its e-mail, then created, then its properties and interests
    assert outcome.verdict == Verdict.DELIVERED
    assert carecloud.routes(1) == [
        ("GET", "/customers", 200),
        ("GET", "/stores", 200),
        ("POST", "/customers", 201),
        ("POST", "/customers/{id}/property-records/batch", 204),
        ("POST", "/customers/{id}/interest-records", 201),
        ("POST", "/customers/{id}/interest-records", 201),
    ]
    lookup = carecloud.sandbox.requests[1]
    assert lookup.query["email"] == ["jane.doe@example.com"]

    # and the POST carried the record in the spec's shape: e-mail lower-cased, phone digits only, enums as
    # numbers, the date as YYYY-MM-DD, the store's id, and the configured customer source
    post = carecloud.sandbox.requests[3]
    assert post.body == {
        "customer": {
            "personal_information": {
                "first_name": "Jane",
                "last_name": "Doe",
                "email": "jane.doe@example.com",
                "phone": "420777123456",
                "gender": 2,
                "birthdate": "1990-05-17",
                "address": {
                    "address1": "Old Town Square",
                    "zip": "11000",
                    "city": "Prague",
                    "country_code": "cz",
                },
                "agreement": {"agreement_gtc": 1, "agreement_marketing_communication": 0},
                "language_id": "en",
                "store_id": HQ_STORE_ID,
            }
        },
        "customer_source": {"customer_source_id": FORWARDER_SOURCE_ID, "external_id": "crm-42"},
        "autologin": False,
    }

    # and CareCloud holds the customer with its source, property records and interests
    jane = carecloud.sandbox.find(email="jane.doe@example.com")
    assert jane is not None
    assert jane["personal_information"]["phone"] == "420777123456"
    assert [(r["customer_source_id"], r["external_id"]) for r in jane["customer_source_records"]] == [
        (FORWARDER_SOURCE_ID, "crm-42")
    ]
    properties = {
        r["property_id"]: r["property_value"] for r in carecloud.sandbox.property_records(jane["customer_id"])
    }
    assert properties == {LOYALTY_TIER_PROPERTY: "gold", WEDDING_DATE_PROPERTY: "2015-06-20"}
    interests = {r["interest_id"] for r in carecloud.sandbox.interest_records(jane["customer_id"])}
    assert interests == {ICE_CREAM_INTEREST_ID, SORBET_INTEREST_ID}


@pytest.mark.parametrize("store", [HQ_STORE_CODE, HQ_STORE_NAME, "ice cream hq", HQ_STORE_ID])
def test_the_registration_store_is_resolved_once_per_process_from_its_code_name_or_id(
    carecloud: Vendor, store: str
) -> None:
    # when two customers are delivered, one after the other, with the store named in the settings
    first = carecloud.deliver([{"email": "anna@example.com"}], store=store)
    second = carecloud.deliver([{"email": "ben@example.com"}], store=store)

    # then both registered at the store's id, and GET /stores was called for the first delivery only
    assert [outcome.verdict for outcome in first + second] == [Verdict.DELIVERED] * 2
    for email in ("anna@example.com", "ben@example.com"):
        customer = carecloud.sandbox.find(email=email)
        assert customer is not None and customer["personal_information"]["store_id"] == HQ_STORE_ID
    assert [route for _, route, _ in carecloud.routes()].count("/stores") == 1


def test_an_unknown_store_is_retried_with_a_reason_naming_it(carecloud: Vendor) -> None:
    # when the settings name a store the project does not have
    (outcome,) = carecloud.deliver([{"email": "jane@example.com"}], store="Ice Cream Oslo")

    # then the record waits for the configuration to be fixed; nothing was written
    assert outcome.verdict == Verdict.RETRY
    assert "'Ice Cream Oslo'" in outcome.reason and "settings.store" in outcome.reason
    assert carecloud.routes(1) == [("GET", "/customers", 200), ("GET", "/stores", 200)]
    assert carecloud.sandbox.customers() == []


# --- customers who exist ----------------------------------------------------------------------------------


def test_an_existing_customer_is_updated_and_keeps_every_field_the_record_is_silent_about(
    carecloud: Vendor,
) -> None:
    # given another application registered Jane with her name, birthdate, address, phone and agreement
    customer_id = OtherClient(carecloud.sandbox).create(
        {
            "first_name": "Jane",
            "last_name": "Doe",
            "birthdate": "1990-05-17",
            "email": "jane@example.com",
            "phone": "420777123456",
            "gender": 2,
            "language_id": "cs",
            "store_id": BRNO_STORE_ID,
            "address": {
                "address1": "Old Town Square",
                "city": "Prague",
                "zip": "11000",
                "country_code": "cz",
            },
            "agreement": {"agreement_gtc": 1, "agreement_profiling": 0},
        }
    )
    before = len(carecloud.sandbox.requests)

    # when a record carrying only her e-mail and a new city is delivered, by an integration whose settings
    # register new customers in English at the HQ store
    (outcome,) = carecloud.deliver([{"email": "JANE@example.com", "city": "Brno"}], store=HQ_STORE_CODE)

    # then it is delivered by reading her and writing the whole of her back: no second customer
    assert outcome.verdict == Verdict.DELIVERED
    assert carecloud.routes(before) == [
        ("GET", "/customers", 200),
        ("GET", "/customers/{id}", 200),
        ("PUT", "/customers/{id}", 204),
    ]
    (jane,) = carecloud.sandbox.customers()
    assert jane["customer_id"] == customer_id
    personal = jane["personal_information"]
    assert personal["address"] == {
        "address1": "Old Town Square",
        "zip": "11000",
        "city": "Brno",
        "country_code": "cz",
    }
    assert {
        key: personal.get(key) for key in ("first_name", "last_name", "birthdate", "phone", "gender")
    } == {
        "first_name": "Jane",
        "last_name": "Doe",
        "birthdate": "1990-05-17",
        "phone": "420777123456",
        "gender": 2,
    }
    assert personal["agreement"] == {"agreement_gtc": 1, "agreement_profiling": 0}
    # the settings' language and store are for new customers: hers stay as they were
    assert personal["language_id"] == "cs"
    assert personal["store_id"] == BRNO_STORE_ID
    assert personal["email"] == "jane@example.com"


def test_consents_of_an_existing_customer_are_merged_by_id(carecloud: Vendor) -> None:
    # given a customer who gave consents "newsletter" and "sms"
    OtherClient(carecloud.sandbox).create(
        {
            "email": "jane@example.com",
            "consents": [
                {"consent_id": "newsletter", "consent_value": 1},
                {"consent_id": "sms", "consent_value": 1},
            ],
        }
    )

    # when a record withdraws "sms" and adds "profiling"
    (outcome,) = carecloud.deliver(
        [{"email": "jane@example.com", "consents": {"sms": "no", "profiling": "yes"}}]
    )

    # then "newsletter" is kept, "sms" changed and "profiling" added (no read-only last_change written back)
    assert outcome.verdict == Verdict.DELIVERED
    jane = carecloud.sandbox.find(email="jane@example.com")
    assert jane is not None
    consents = {
        item["consent_id"]: item["consent_value"] for item in jane["personal_information"]["consents"]
    }
    assert consents == {"newsletter": 1, "sms": 0, "profiling": 1}


def test_interests_and_properties_delivered_again_are_fine_and_properties_take_the_new_value(
    carecloud: Vendor,
) -> None:
    # given Jane was delivered with an interest and two properties
    first = {
        "email": "jane@example.com",
        "interests": [ICE_CREAM_INTEREST_ID],
        "additional_properties": {FAVOURITE_FLAVOUR_PROPERTY: "pistachio", SCOOPS_PER_WEEK_PROPERTY: 2},
    }
    assert carecloud.deliver([first])[0].verdict == Verdict.DELIVERED
    before = len(carecloud.sandbox.requests)

    # when she is delivered again with the same interest, one more, and a new value for one property
    again = {
        "email": "jane@example.com",
        "interests": [ICE_CREAM_INTEREST_ID, SORBET_INTEREST_ID],
        "additional_properties": {FAVOURITE_FLAVOUR_PROPERTY: "mango"},
    }
    (outcome,) = carecloud.deliver([again])

    # then it is delivered although CareCloud said she already has the first interest
    assert outcome.verdict == Verdict.DELIVERED
    interest_answers = [
        status for _, route, status in carecloud.routes(before) if route.endswith("interest-records")
    ]
    assert sorted(interest_answers) == [201, 400]
    (jane,) = carecloud.sandbox.customers()
    assert {r["interest_id"] for r in jane["interest_records"]} == {ICE_CREAM_INTEREST_ID, SORBET_INTEREST_ID}
    properties = {r["property_id"]: r["property_value"] for r in jane["property_records"]}
    assert properties == {FAVOURITE_FLAVOUR_PROPERTY: "mango", SCOOPS_PER_WEEK_PROPERTY: 2}


# --- races ------------------------------------------------------------------------------------------------


def test_a_customer_created_by_someone_else_between_lookup_and_post_is_found_and_updated(
    carecloud: Vendor,
) -> None:
    # given another application registers Jane right after the integration looked her up and missed
    other = OtherClient(carecloud.sandbox)
    created: list[str] = []

    def create_after_the_lookup(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        if created or request.method != "GET" or not urlsplit(str(request.url)).path.endswith("/customers"):
            return
        if response.json()["data"]["total_items"] == 0:
            created.append(
                other.create({"email": "jane@example.com", "last_name": "Doe", "phone": "420777123456"})
            )

    carecloud.http.hooks["response"].append(create_after_the_lookup)
    before = len(carecloud.sandbox.requests)

    # when the integration delivers her
    (outcome,) = carecloud.deliver([{"email": "jane@example.com", "first_name": "Jane"}])

    # then its POST is answered already_exists, and it finds her and updates her: delivered, one customer
    assert outcome.verdict == Verdict.DELIVERED
    integration_routes = [route for route in carecloud.routes(before) if route[1] != "/tokens"]
    assert integration_routes == [
        ("GET", "/customers", 200),
        ("POST", "/customers", 201),  # the other application's
        ("POST", "/customers", 400),  # the integration's: already_exists
        ("GET", "/customers", 200),
        ("GET", "/customers/{id}", 200),
        ("PUT", "/customers/{id}", 204),
    ]
    (jane,) = carecloud.sandbox.customers()
    assert jane["customer_id"] == created[0]
    personal = jane["personal_information"]
    assert (personal["first_name"], personal["last_name"], personal["phone"]) == (
        "Jane",
        "Doe",
        "420777123456",
    )


# --- errors -----------------------------------------------------------------------------------------------


def test_a_customer_carecloud_refuses_is_rejected_with_each_invalid_parameter(carecloud: Vendor) -> None:
    # when a record with a language and a country CareCloud does not accept is delivered
    (outcome,) = carecloud.deliver(
        [{"email": "jane@example.com", "language_id": "english", "country_code": "CZE"}]
    )

    # then it is rejected for good, the errors naming each invalid parameter with its reason and message
    assert outcome.verdict == Verdict.REJECTED
    assert outcome.vendor_status == 400
    assert outcome.reason.startswith("CareCloud answered POST /customers with HTTP 400")
    assert len(outcome.errors) == 2
    country, language = sorted(outcome.errors)
    assert country.startswith("customer.personal_information.address.country_code: invalid_value_format (")
    assert "'CZE'" in country
    assert language.startswith("customer.personal_information.language_id: invalid_value_format (")
    assert "'english'" in language
    assert carecloud.sandbox.customers() == []


def test_429_is_retried_after_the_vendors_retry_after_and_then_delivered(carecloud: Vendor) -> None:
    # given CareCloud throttles the next customer look-up for 7 seconds
    carecloud.sandbox.inject(status=429, retry_after=7, method="GET", path_prefix=BASE_PATH + "/customers")

    # when a customer is delivered, then it is retried no sooner than CareCloud asked
    (outcome,) = carecloud.deliver([{"email": "jane@example.com"}])
    assert outcome.verdict == Verdict.RETRY
    assert (outcome.vendor_status, outcome.retry_after) == (429, 7.0)
    assert "429" in outcome.reason
    assert carecloud.sandbox.customers() == []

    # and the retry delivers it
    assert carecloud.deliver([{"email": "jane@example.com"}])[0].verdict == Verdict.DELIVERED
    assert carecloud.sandbox.find(email="jane@example.com") is not None


def test_503_is_retried(carecloud: Vendor) -> None:
    # given CareCloud is unavailable for the next customer creation
    carecloud.sandbox.inject(status=503, method="POST", path_prefix=BASE_PATH + "/customers")

    # when a customer is delivered, then it is retried with CareCloud's answer as the reason
    (outcome,) = carecloud.deliver([{"email": "jane@example.com"}])
    assert outcome.verdict == Verdict.RETRY
    assert outcome.vendor_status == 503
    assert "POST /customers" in outcome.reason and "HTTP 503" in outcome.reason
    assert not outcome.token_refused
    assert carecloud.sandbox.customers() == []


def test_a_wrong_base_url_is_retried_with_a_reason_about_base_url(carecloud: Vendor) -> None:
    # given the integration's base_url names a version of the API the project does not serve
    wrong_path = BASE_PATH.replace("v1.0", "v9.9")
    carecloud.credentials["base_url"] = carecloud.sandbox.url + wrong_path
    carecloud.base_paths.add(wrong_path)

    # when a customer is delivered, then it waits for the configuration to be fixed
    (outcome,) = carecloud.deliver([{"email": "jane@example.com"}])
    assert outcome.verdict == Verdict.RETRY
    assert outcome.vendor_status == 404
    assert "base_url" in outcome.reason
    assert carecloud.sandbox.customers() == []


# --- prepare: records CareCloud would refuse never leave validate -----------------------------------------


@pytest.mark.parametrize(
    ("record", "overrides", "expected"),
    [
        ({"first_name": "Jane"}, {}, "field 'email' is required"),
        ({"email": "jane@localhost"}, {}, "field 'email': 'jane@localhost' is not an e-mail address"),
        ({"email": "jane doe@example.com"}, {}, "is not an e-mail address CareCloud accepts"),
        ({"email": "jane@example.com", "phone": "+420 777 123 456"}, {}, "field 'phone': '+420 777 123 456'"),
        ({"email": "jane@example.com", "phone": "0777123456"}, {}, "field 'phone': '0777123456'"),
        ({"email": "jane@example.com"}, {"match_by": "phone"}, "field 'phone' is required"),
        ({"email": "jane@example.com", "gender": "x"}, {}, "field 'gender': 'x' is not male"),
        ({"email": "jane@example.com", "gender": None}, {}, "field 'gender': 'None' is not male"),
        ({"email": "jane@example.com", "birthdate": "17.05.1990"}, {}, "field 'birthdate'"),
        ({"email": "jane@example.com", "agreement_gtc": "maybe"}, {}, "field 'agreement_gtc': 'maybe'"),
        ({"email": "jane@example.com", "consents": {"sms": "sure"}}, {}, "field 'consents.sms': 'sure'"),
    ],
)
def test_prepare_rejects_what_carecloud_would_refuse(
    record: dict[str, Any], overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(RecordInvalid) as raised:
        prepare(record, **overrides)

    assert any(expected in error for error in raised.value.errors), raised.value.errors


def test_prepare_lists_every_problem_of_a_record_at_once() -> None:
    with pytest.raises(RecordInvalid) as raised:
        prepare({"email": "nobody", "phone": "n/a", "gender": "?", "agreement_profiling": "perhaps"})

    assert [error.split(":")[0] for error in raised.value.errors] == [
        "field 'email'",
        "field 'phone'",
        "field 'gender'",
        "field 'agreement_profiling'",
    ]


@pytest.mark.parametrize(
    ("gender", "number"),
    [("male", 1), ("M", 1), ("Female", 2), ("f", 2), ("miss", 3), ("4", 4), ("other", 5)],
)
def test_prepare_turns_every_known_gender_into_the_specs_number(gender: str, number: int) -> None:
    personal = prepare({"email": "jane@example.com", "gender": gender})["personal_information"]

    assert personal["gender"] == number


def test_prepare_leaves_gender_out_when_the_record_has_none() -> None:
    personal = prepare({"email": "jane@example.com", "first_name": "Jane"})["personal_information"]

    assert "gender" not in personal  # never "gender": null, which the spec's enum refuses


# --- match_by phone ---------------------------------------------------------------------------------------


def test_match_by_phone_finds_the_customer_by_phone_and_updates_her(carecloud: Vendor) -> None:
    # given Jane is registered with her phone and e-mail
    customer_id = OtherClient(carecloud.sandbox).create(
        {"email": "jane@example.com", "phone": "420777123456", "last_name": "Doe"}
    )
    before = len(carecloud.sandbox.requests)

    # when a record carrying her phone (as typed, with its +) and a first name is delivered, matched by phone
    (outcome,) = carecloud.deliver([{"phone": "+420777123456", "first_name": "Jane"}], match_by="phone")

    # then she was looked up by phone and updated, keeping her e-mail
    assert outcome.verdict == Verdict.DELIVERED
    assert carecloud.routes(before) == [
        ("GET", "/customers", 200),
        ("GET", "/customers/{id}", 200),
        ("PUT", "/customers/{id}", 204),
    ]
    assert carecloud.sandbox.requests[before].query["phone"] == ["420777123456"]
    (jane,) = carecloud.sandbox.customers()
    assert jane["customer_id"] == customer_id
    personal = jane["personal_information"]
    assert (personal["first_name"], personal["last_name"], personal["email"]) == (
        "Jane",
        "Doe",
        "jane@example.com",
    )


def test_match_by_phone_creates_a_customer_without_an_email(carecloud: Vendor) -> None:
    # when a phone-only record of someone CareCloud does not know is delivered, matched by phone
    (outcome,) = carecloud.deliver([{"phone": "420601000111", "first_name": "Petr"}], match_by="phone")

    # then a customer with that phone and no e-mail is created
    assert outcome.verdict == Verdict.DELIVERED
    petr = carecloud.sandbox.find(phone="420601000111")
    assert petr is not None and "email" not in petr["personal_information"]


# --- reading back an upsert that got no answer -------------------------------------------------------------------


def test_an_unanswered_upsert_is_read_back_as_applied_only_when_carecloud_holds_all_of_it(
    carecloud: Vendor,
) -> None:
    parsed = carecloud.settings()
    record = {
        "email": "jane@example.com",
        "first_name": "Jane",
        "city": "Brno",
        "additional_properties": {LOYALTY_TIER_PROPERTY: "gold"},
        "interests": [SORBET_INTEREST_ID],
    }
    payload = carecloud.integration.prepare(UPSERT, record, parsed)
    # before it was applied: not there, so it is sent again
    assert carecloud.integration.confirm(
        UPSERT, [payload], parsed, carecloud.credentials, carecloud.http
    ) == [False]
    assert [outcome.verdict for outcome in carecloud.deliver([record])] == [Verdict.DELIVERED]
    # once applied: the customer, the property record and the interest are there, so it is not sent twice
    assert carecloud.integration.confirm(
        UPSERT, [payload], parsed, carecloud.credentials, carecloud.http
    ) == [True]
    # a record carrying anything CareCloud does not hold yet is sent
    newer = carecloud.integration.prepare(UPSERT, {**record, "first_name": "Janet"}, parsed)
    assert carecloud.integration.confirm(UPSERT, [newer], parsed, carecloud.credentials, carecloud.http) == [
        False
    ]
    # a read that fails (CareCloud answers 503) is not "not applied": the delivery waits, still unanswered
    carecloud.sandbox.inject(status=503, method="GET")
    [failed] = carecloud.integration.confirm(UPSERT, [payload], parsed, carecloud.credentials, carecloud.http)
    assert isinstance(failed, Outcome) and failed.verdict is Verdict.RETRY and failed.ambiguous
