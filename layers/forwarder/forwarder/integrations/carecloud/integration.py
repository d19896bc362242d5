"""CRM CareCloud, customer interface (seed 001; request shapes from CareCloud's published OpenAPI spec).

* contacts -> ``upsert_customer``. The customer is looked up by e-mail (or phone): ``GET /customers?email=``.
  * New: ``POST /customers`` ``{"customer": {"personal_information": {...}}, "customer_source": {...},
    "autologin": false}``. The seed shows ``personal_information`` and ``customer_sources`` at the top level;
    the current spec (which every request is tested against) nests them as above, so the spec's shape is sent.
  * Existing (a customer who exists is not a failure): ``GET /customers/{id}``, merge the record's fields into
    what CareCloud holds, ``PUT /customers/{id}``. PUT replaces the whole customer, so every field the record
    does not carry is sent back as it was: nothing the record is silent about is lost.
  * Then ``additional_properties`` (a dynamic mapping: attribute -> property id) as property records
    (``POST /customers/{id}/property-records/batch``: each property updated, the others kept), and ``interests``
    (a list mapping of interest ids) as interest records (``POST /customers/{id}/interest-records``; one the
    customer has already is fine).
  * ``store`` (setting) may be a store's id, code or name: resolved once through ``GET /stores``.
* Tokens: ``POST /tokens`` with the device, setup and ``external_application_id`` of the spec. ``auth_scheme``
  bearer (current spec): no auth on ``/tokens``, then ``Authorization: Bearer <token_id>``; basic (the seed's,
  deprecated): ``Basic <user>:`` for ``/tokens``, then ``Basic <user>:<token_id>``. A token does not expire; a
  new one for the same device replaces it, so the device id is one stable value per integration.
* Secret: ``external_application_id`` (and ``user`` for basic, default ``customer_interface``); the forwarder
  keeps ``token_id`` beside them.
* Errors: a 400's ``invalid_params`` become the rejection's errors; 401 renews the token once; 429 and 5xx
  are retried.
"""

from __future__ import annotations

import base64
import builtins
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from forwarder.integrations.base import (
    NO_CONTEXT,
    NOT_ATTEMPTED,
    ActionSpec,
    Budget,
    FieldSpec,
    Integration,
    Outcome,
    ReadBack,
    RecordContext,
    RecordInvalid,
    TokenError,
    parse_retry_after,
    sent_unanswered,
    unreadable,
)
from forwarder.mapping import TransformValueError, convert_date
from forwarder.ports.locks import LockPort

if TYPE_CHECKING:
    import requests

# The spec's e-mail pattern (PersonalInformation.email), so a record CareCloud would refuse is rejected early.
_EMAIL = re.compile(
    r"^[-a-z0-9!#$%&'*+\\/=?^_`{|}~]+(\.[-a-z0-9!#$%&'*+\\/=?^_`{|}~]+)*@"
    r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])$"
)
_PHONE = re.compile(r"^[1-9][0-9]*$")
_GENDERS = {
    "1": 1,
    "m": 1,
    "male": 1,
    "2": 2,
    "f": 2,
    "female": 2,
    "3": 3,
    "miss": 3,
    "4": 4,
    "5": 5,
    "other": 5,
}
_AGREEMENT_VALUES = {"0": 0, "false": 0, "no": 0, "1": 1, "true": 1, "yes": 1, "2": 2, "": 2}
_ADDRESS = ("address1", "address2", "address3", "zip", "city", "country_code")
_AGREEMENTS = ("agreement_gtc", "agreement_profiling", "agreement_marketing_communication")
# Fields of a customer CareCloud computes; sending them back in a PUT is refused (readOnly in the spec).
_READ_ONLY = ("photo_url",)


class CareCloudSettings(BaseModel):
    """Per group key settings of the CareCloud integration (no credentials here: they are in the secret)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="https://<project>/webservice/rest-api/customer-interface/v1.0",
    )
    auth_scheme: Literal["bearer", "basic"] = "bearer"
    customer_source_id: str = Field(min_length=1, description="the customer source new customers get")
    language_id: str = Field("en", min_length=2, max_length=5)
    store: str | None = Field(None, description="registration store: its store_id, store_code or name")
    match_by: Literal["email", "phone"] = "email"
    device_id: str = Field(
        "forwarder",
        min_length=1,
        description="one stable device id: a new token replaces the device's old one",
    )
    accept_language: str = "en"
    timeout_seconds: float = Field(10.0, gt=0, le=20)


_CUSTOMER_FIELDS = {
    "email": FieldSpec("email", "string", "e-mail address (lower case)"),
    "phone": FieldSpec("phone", "string", "phone with its international prefix, digits only (420123456789)"),
    "first_name": FieldSpec("first_name", "string", "first name"),
    "last_name": FieldSpec("last_name", "string", "last name"),
    "gender": FieldSpec("gender", "string", "male / female / miss / other (or 1-5)"),
    "birthdate": FieldSpec("birthdate", "string", "date of birth, ISO 8601 (sent as YYYY-MM-DD)"),
    "language_id": FieldSpec(
        "language_id", "string", "ISO 639-1 language (default: the language_id setting)"
    ),
    "external_id": FieldSpec("external_id", "string", "the customer's id in your system (customer source)"),
    **{name: FieldSpec(name, "string", f"address: {name}") for name in _ADDRESS},
    **{
        name: FieldSpec(name, "string", f"consent {name}: yes / no / not set (1 / 0 / 2)")
        for name in _AGREEMENTS
    },
    "consents": FieldSpec(
        "consents", "dynamic", "consents: {attribute: consent id}; values yes / no / not set"
    ),
    "additional_properties": FieldSpec(
        "additional_properties", "dynamic", "customer properties: {attribute: property id}"
    ),
    "interests": FieldSpec("interests", "list", "interest ids the customer has"),
}


class _Stores:
    """Store name / code / id -> store_id per project, resolved once per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_project: dict[str, dict[str, str]] = {}

    def get(self, project: str) -> dict[str, str] | None:
        with self._lock:
            return self._by_project.get(project)

    def put(self, project: str, stores: dict[str, str]) -> None:
        with self._lock:
            self._by_project[project] = stores

    def clear(self) -> None:
        with self._lock:
            self._by_project.clear()


STORES = _Stores()


class CareCloudError(Exception):
    """A CareCloud call failed; ``outcome`` is how the deliver flow reads it. Never holds the token."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


class _OutOfTime(Exception):
    pass


class CareCloud(Integration):
    type: ClassVar[str] = "carecloud"
    title: ClassVar[str] = "CRM CareCloud"
    settings_model: ClassVar[builtins.type[BaseModel]] = CareCloudSettings
    secret_keys: ClassVar[tuple[str, ...]] = ("external_application_id",)
    uses_tokens: ClassVar[bool] = True
    actions: ClassVar[dict[str, ActionSpec]] = {
        "upsert_customer": ActionSpec(
            "upsert_customer",
            frozenset({"contacts"}),
            _CUSTOMER_FIELDS,
            "find by e-mail or phone; POST /customers or read-merge-PUT; then property and interest records",
        ),
    }
    default_actions: ClassVar[dict[str, str]] = {"contacts": "upsert_customer"}

    # --- tokens -----------------------------------------------------------------------------------------------

    def token(self, credentials: dict[str, Any]) -> str | None:
        token = credentials.get("token_id")
        return str(token) if token else None

    def fetch_token(
        self, settings: BaseModel, credentials: dict[str, Any], http: requests.Session
    ) -> dict[str, Any]:
        assert isinstance(settings, CareCloudSettings)
        headers = {"Accept": "application/json", "Accept-Language": settings.accept_language}
        if settings.auth_scheme == "basic":
            headers["Authorization"] = _basic(f"{_user(credentials)}:")
        body = {
            "device": {
                "device_id": settings.device_id,
                "device_system": "server",
                "device_name": "Forwarder",
                "device_type": "forwarder",
            },
            "setup": {
                "language_id": settings.language_id,
                "allowed_gps": False,
                "allowed_notifications": False,
            },
            "external_application_id": str(credentials["external_application_id"]),
        }
        import requests  # deferred: importing requests costs cold starts that send nothing

        try:
            response = http.post(
                f"{_base_url(settings, credentials)}/tokens",
                json=body,
                headers=headers,
                timeout=(3.05, settings.timeout_seconds),
            )
        except requests.RequestException as error:
            raise TokenError(f"CareCloud token call POST /tokens failed: {type(error).__name__}") from None
        if response.status_code not in (200, 201):
            raise TokenError(f"CareCloud refused a token (POST /tokens: {_summary(response)})")
        try:
            token = str(response.json()["data"]["token_id"])
        except (ValueError, KeyError, TypeError):
            raise TokenError("CareCloud answered POST /tokens without a token_id") from None
        return {"token_id": token}

    # --- config checks ----------------------------------------------------------------------------------------

    def check_config(
        self, settings: BaseModel, flows: dict[str, tuple[str, list[Any]]]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(settings, CareCloudSettings)
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if "contacts" in flows:
            _, rules = flows["contacts"]
            if not any(rule.to == settings.match_by for rule in rules):
                problems.append(
                    (
                        ("contacts", "mapping"),
                        f"settings.match_by is {settings.match_by} but no mapping fills '{settings.match_by}': "
                        "every record would be rejected",
                    )
                )
        return problems

    def customer_key(self, operation: str, payload: dict[str, Any], settings: BaseModel) -> str | None:
        assert isinstance(settings, CareCloudSettings)
        value = payload.get("personal_information", {}).get(settings.match_by)
        return f"{settings.match_by}:{value}" if value else None

    def identities(self, operation: str, payload: dict[str, Any]) -> list[str]:
        personal = payload.get("personal_information", {})
        found = [f"email:{personal['email']}"] if personal.get("email") else []
        return found + ([f"phone:{personal['phone']}"] if personal.get("phone") else [])

    # --- validate: mapped fields -> vendor payload ------------------------------------------------------------

    def prepare(
        self,
        operation: str,
        mapped: dict[str, Any],
        settings: BaseModel,
        context: RecordContext = NO_CONTEXT,
    ) -> dict[str, Any]:
        assert isinstance(settings, CareCloudSettings)
        errors: list[str] = []
        personal: dict[str, Any] = {}
        for name in ("first_name", "last_name", "language_id"):
            if name in mapped:
                personal[name] = str(mapped[name]).strip()
        if "email" in mapped:
            personal["email"] = str(mapped["email"]).strip().lower()
            if not _EMAIL.match(personal["email"]):
                errors.append(
                    f"field 'email': '{personal['email']}' is not an e-mail address CareCloud accepts"
                )
        if "phone" in mapped:
            personal["phone"] = str(mapped["phone"]).strip().lstrip("+")
            if not _PHONE.match(personal["phone"]):
                errors.append(
                    f"field 'phone': '{mapped['phone']}' must be digits with the international prefix "
                    "(add the 'phone' transform)"
                )
        if "gender" in mapped:
            gender = _GENDERS.get(str(mapped["gender"]).strip().lower())
            if gender is None:
                errors.append(f"field 'gender': '{mapped['gender']}' is not male, female, miss or other")
            personal["gender"] = gender
        if "birthdate" in mapped:
            try:
                personal["birthdate"] = convert_date(str(mapped["birthdate"]).strip(), "iso8601", "date")
            except TransformValueError as error:
                errors.append(f"field 'birthdate': {error} (add a 'date' transform)")
        address = {name: str(mapped[name]).strip() for name in _ADDRESS if name in mapped}
        if address:
            personal["address"] = address
        agreement = {name: _agreement(name, mapped[name], errors) for name in _AGREEMENTS if name in mapped}
        if agreement:
            personal["agreement"] = agreement
        consents = [
            {
                "consent_id": str(consent_id),
                "consent_value": _agreement(f"consents.{consent_id}", value, errors),
            }
            for consent_id, value in (mapped.get("consents") or {}).items()
        ]
        if consents:
            personal["consents"] = consents
        if not personal.get(settings.match_by):
            errors.append(
                f"field '{settings.match_by}' is required: the integration finds customers by {settings.match_by}"
            )
        if errors:
            raise RecordInvalid(errors)
        payload: dict[str, Any] = {"personal_information": personal}
        if "external_id" in mapped:
            payload["external_id"] = str(mapped["external_id"]).strip()
        properties = [
            {"property_id": property_id, "property_value": value}
            for property_id, value in (mapped.get("additional_properties") or {}).items()
        ]
        if properties:
            payload["property_records"] = properties
        interests = sorted({str(item).strip() for item in mapped.get("interests", []) if str(item).strip()})
        if interests:
            payload["interests"] = interests
        return payload

    # --- deliver ----------------------------------------------------------------------------------------------

    def batch_size(self, operation: str, settings: BaseModel) -> int:
        return 50

    def requests_for(self, operation: str, count: int, settings: BaseModel) -> int:
        return 3 * count  # look-up, create or read-and-write, property records

    def confirm(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
    ) -> list[ReadBack]:
        """Reads an unanswered upsert back: the customer found by ``match_by`` holds every personal field it
        carried, every property record and every interest."""
        assert isinstance(settings, CareCloudSettings)
        token = self.token(credentials)
        if not token:
            return [None] * len(payloads)
        api = _Api(settings, credentials, token, http, budget or Budget())
        answers: list[ReadBack] = []
        for payload in payloads:
            try:
                answers.append(self._applied(api, settings, payload))
            except _OutOfTime:
                answers.append(unreadable(self.title, "no time left", out_of_time=True))
            except CareCloudError as error:
                answers.append(
                    unreadable(self.title, error.outcome.reason, status=error.outcome.vendor_status)
                )
            except (KeyError, TypeError, ValueError):
                answers.append(None)
        return answers

    def _applied(self, api: _Api, settings: CareCloudSettings, payload: dict[str, Any]) -> bool:
        personal = payload["personal_information"]
        customer_id = self._find(api, settings, personal)
        if customer_id is None or not self._holds_personal(api, customer_id, personal):
            return False
        return self._holds_records(api, customer_id, payload)

    @staticmethod
    def _holds_personal(api: _Api, customer_id: str, personal: dict[str, Any]) -> bool:
        """CareCloud holds every personal field the record carries."""
        stored = ((api.call("GET", f"/customers/{customer_id}") or {}).get("data") or {}).get(
            "personal_information"
        ) or {}
        for name, value in personal.items():
            if name in ("address", "agreement"):
                held = stored.get(name) or {}
                if any(held.get(key) != item for key, item in value.items()):
                    return False
            elif name == "consents":
                held = {
                    str(item.get("consent_id")): item.get("consent_value") for item in stored.get(name) or []
                }
                if any(held.get(str(item["consent_id"])) != item["consent_value"] for item in value):
                    return False
            elif stored.get(name) != value:
                return False
        return True

    @staticmethod
    def _holds_records(api: _Api, customer_id: str, payload: dict[str, Any]) -> bool:
        """CareCloud holds every property record and interest the record carries."""
        if payload.get("property_records"):
            records = (api.call("GET", f"/customers/{customer_id}/property-records") or {}).get("data") or {}
            held = {
                item.get("property_id"): item.get("property_value")
                for item in records.get("property_records") or []
            }
            if any(
                held.get(item["property_id"]) != item["property_value"]
                for item in payload["property_records"]
            ):
                return False
        if payload.get("interests"):
            records = (api.call("GET", f"/customers/{customer_id}/interest-records") or {}).get("data") or {}
            held_interests = {item.get("interest_id") for item in records.get("interest_records") or []}
            if not set(payload["interests"]) <= held_interests:
                return False
        return True

    def deliver(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
        locks: LockPort | None = None,
        retried: Sequence[bool] | None = None,
    ) -> list[Outcome]:
        assert isinstance(settings, CareCloudSettings)
        self.check_credentials(credentials)
        token = self.token(credentials)
        if not token:
            return [Outcome.refused_token("no CareCloud token is stored yet")] * len(payloads)
        api = _Api(settings, credentials, token, http, budget or Budget())
        outcomes: list[Outcome] = []
        for index, payload in enumerate(payloads):
            try:
                outcomes.append(self._upsert(api, settings, payload, bool(retried and retried[index])))
            except CareCloudError as error:
                outcomes.append(error.outcome)
                if error.outcome.token_refused:  # the rest would be refused too
                    outcomes.extend([error.outcome] * (len(payloads) - index - 1))
                    break
            except _OutOfTime:
                outcomes.extend([Outcome.retry(NOT_ATTEMPTED)] * (len(payloads) - index))
                break
        return outcomes

    def _upsert(
        self, api: _Api, settings: CareCloudSettings, payload: dict[str, Any], retried: bool = False
    ) -> Outcome:
        personal = dict(payload["personal_information"])
        customer_id = self._find(api, settings, personal)
        if customer_id is not None and retried and self._holds_personal(api, customer_id, personal):
            pass  # an earlier attempt wrote the customer: only what is left (its records) is done now
        elif customer_id is None:
            # The settings' language and registration store apply to new customers only: an update keeps
            # what CareCloud holds for a field the record does not carry.
            created = {"language_id": settings.language_id, **personal}
            if settings.store:
                created["store_id"] = self._store_id(api, settings)
            body: dict[str, Any] = {
                "customer": {"personal_information": created},
                "customer_source": {"customer_source_id": settings.customer_source_id},
                "autologin": False,
            }
            if payload.get("external_id"):
                body["customer_source"]["external_id"] = payload["external_id"]
            try:
                answer = api.call("POST", "/customers", body, expect=(201, 200))
                customer_id = str(answer["data"]["customer_id"])
            except CareCloudError as error:
                # Created by someone else meanwhile (a retried request, a parallel delivery): update it.
                if not _says(error, "already_exists"):
                    raise
                customer_id = self._find(api, settings, personal)
                if customer_id is None:
                    raise
                self._update(api, customer_id, personal)
            except (KeyError, TypeError):
                raise CareCloudError(
                    Outcome.retry("CareCloud answered POST /customers without a customer_id")
                ) from None
        else:
            self._update(api, customer_id, personal)
        if payload.get("property_records"):
            api.call(
                "POST",
                f"/customers/{customer_id}/property-records/batch",
                {"property_records": payload["property_records"], "error_processing": 1},
                expect=(204, 200, 201),
            )
        for interest_id in payload.get("interests", []):
            try:
                api.call(
                    "POST",
                    f"/customers/{customer_id}/interest-records",
                    {"interest_record": {"interest_id": interest_id, "customer_id": customer_id}},
                    expect=(201, 200),
                )
            except CareCloudError as error:
                if not _says(error, "relation_already_exists"):
                    raise
        return Outcome.delivered(200)

    @staticmethod
    def _find(api: _Api, settings: CareCloudSettings, personal: dict[str, Any]) -> str | None:
        value = personal.get(settings.match_by)
        if not value:
            return None
        found = api.call("GET", "/customers", params={settings.match_by: value, "count": 2})
        customers = ((found or {}).get("data") or {}).get("customers") or []
        for customer in customers:
            stored = (customer.get("personal_information") or {}).get(settings.match_by)
            if stored is not None and str(stored).lower() == str(value).lower():
                return str(customer["customer_id"])
        return None

    @staticmethod
    def _update(api: _Api, customer_id: str, personal: dict[str, Any]) -> None:
        """Read the customer, lay the record's fields over it, write the whole of it back."""
        current = api.call("GET", f"/customers/{customer_id}")
        stored = dict(((current or {}).get("data") or {}).get("personal_information") or {})
        merged = {key: value for key, value in stored.items() if key not in _READ_ONLY and value is not None}
        for key, value in personal.items():
            if key == "address" and isinstance(merged.get("address"), dict):
                merged["address"] = {**merged["address"], **value}
            elif key == "agreement" and isinstance(merged.get("agreement"), dict):
                merged["agreement"] = {**merged["agreement"], **value}
            elif key == "consents" and isinstance(merged.get("consents"), list):
                by_id = {
                    str(item.get("consent_id")): item for item in merged["consents"] if isinstance(item, dict)
                }
                for item in value:
                    by_id[str(item["consent_id"])] = item
                merged["consents"] = [
                    {"consent_id": item["consent_id"], "consent_value": item["consent_value"]}
                    for item in by_id.values()
                ]
            else:
                merged[key] = value
        if isinstance(merged.get("consents"), list):
            merged["consents"] = [
                {"consent_id": item["consent_id"], "consent_value": item["consent_value"]}
                for item in merged["consents"]
                if isinstance(item, dict) and "consent_id" in item
            ]
        api.call(
            "PUT",
            f"/customers/{customer_id}",
            {"customer": {"personal_information": merged}},
            expect=(204, 200),
        )

    @staticmethod
    def _store_id(api: _Api, settings: CareCloudSettings) -> str:
        assert settings.store is not None
        known = STORES.get(api.base_url)
        if known is None or settings.store.lower() not in known:
            known = {}
            offset = 0
            while True:
                page = api.call("GET", "/stores", params={"count": 100, "offset": offset})
                data = (page or {}).get("data") or {}
                stores = data.get("stores") or []
                for store in stores:
                    for key in ("store_id", "store_code", "name"):
                        if store.get(key):
                            known.setdefault(str(store[key]).lower(), str(store["store_id"]))
                offset += len(stores)
                if not stores or offset >= int(data.get("total_items") or 0):
                    break
            STORES.put(api.base_url, known)
        store_id = known.get(settings.store.lower())
        if store_id is None:
            raise CareCloudError(
                Outcome.retry(
                    f"CareCloud has no store with the id, code or name '{settings.store}' (settings.store)"
                )
            )
        return store_id


class _Api:
    """Calls with the token; failures become CareCloudError carrying the outcome."""

    def __init__(
        self,
        settings: CareCloudSettings,
        credentials: dict[str, Any],
        token: str,
        http: requests.Session,
        budget: Budget,
    ) -> None:
        self.base_url = _base_url(settings, credentials)
        self.settings = settings
        self.http = http
        self.budget = budget
        authorization = (
            f"Bearer {token}" if settings.auth_scheme == "bearer" else _basic(f"{_user(credentials)}:{token}")
        )
        self.headers = {
            "Authorization": authorization,
            "Accept": "application/json",
            "Accept-Language": settings.accept_language,
        }

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        route = f"{method} {re.sub(r'/customers/[^/]+', '/customers/{id}', path)}"
        if not self.budget.allows(3.05 + self.settings.timeout_seconds):
            raise _OutOfTime(route)
        import requests  # deferred: importing requests costs cold starts that send nothing

        try:
            response = self.http.request(
                method,
                f"{self.base_url}{path}",
                json=body,
                params=params,
                headers=self.headers,
                timeout=(3.05, self.settings.timeout_seconds),
            )
        except requests.RequestException as error:
            raise CareCloudError(
                Outcome.unavailable(
                    f"no answer from CareCloud to {route} ({type(error).__name__})",
                    ambiguous=sent_unanswered(error),
                )
            ) from None
        if response.status_code in expect:
            if response.status_code == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise CareCloudError(
                    Outcome.retry(f"CareCloud answered {route} with a body that is not JSON")
                ) from None
        raise CareCloudError(_classify(response, route))


def _classify(response: requests.Response, route: str) -> Outcome:
    status = response.status_code
    reason = f"CareCloud answered {route} with {_summary(response)}"
    if status == 401:
        return Outcome.refused_token(f"{reason} (the token is renewed once)", status=status)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if status >= 500 or status == 408:
        return Outcome.unavailable(reason, retry_after=retry_after, status=status)
    if status == 429:
        return Outcome.retry(reason, retry_after=retry_after, status=status)
    if status in (403, 404, 405):
        return Outcome.retry(f"{reason}; check the integration's base_url and permissions", status=status)
    return Outcome.rejected(reason, _invalid_params(response), status=status)


def _error_body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _summary(response: requests.Response) -> str:
    error = _error_body(response)
    title = str(error.get("title") or response.reason or "")
    detail = str(error.get("detail") or "")
    text = f"HTTP {response.status_code} {title}".strip()
    if detail and detail != title:
        text += f": {detail}"
    return text[:300]


def _invalid_params(response: requests.Response) -> list[str]:
    data = _error_body(response).get("error_data") or {}
    params = data.get("invalid_params") if isinstance(data, dict) else None
    found: list[str] = []
    for item in params or []:
        if isinstance(item, dict):
            message = f"{item.get('name')}: {item.get('reason')}"
            if item.get("message"):
                message += f" ({item['message']})"
            found.append(message)
    return found


def _says(error: CareCloudError, reason: str) -> bool:
    """The 400 names ``reason`` for one of its invalid parameters."""
    return any(message.split(": ", 1)[-1].startswith(reason) for message in error.outcome.errors)


def _agreement(name: str, value: Any, errors: list[str]) -> int:
    key = str(value).strip().lower() if not isinstance(value, bool) else ("1" if value else "0")
    found = _AGREEMENT_VALUES.get(key)
    if found is None:
        errors.append(f"field '{name}': '{value}' is not yes, no or not set (1, 0, 2)")
        return 2
    return found


def _base_url(settings: CareCloudSettings, credentials: dict[str, Any]) -> str:
    return str(credentials.get("base_url") or settings.base_url).rstrip("/")


def _user(credentials: dict[str, Any]) -> str:
    return str(credentials.get("user") or "customer_interface")


def _basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
