"""ExpertSender CDP customers API (seed 004).

* contacts -> ``upsert_customer``: ``POST /customers`` ``{"mode", "matchBy", "data": [customer, ...]}``,
  several customers per request (``batch_size``). A 400 for a batch is split: customers the vendor's
  ``errors`` name by index (``data[i]...``) are rejected with those errors, the rest are sent again; when the
  errors name no index, each customer is sent alone so each gets its own verdict.
* delete -> ``delete_customer``: ``DELETE /customers/{email|phone|crmId|id}/{value}?withAnonymization=...``;
  a 404 means the customer is already absent, which is the effect a delete asks for: delivered.
* The secret holds ``api_key`` (and may hold ``base_url``, a connection override used by the embedded stack).
* A 401/403 is retried, not rejected: the record is fine, the credentials are not, and once the secret is
  fixed the retries (or a replay from the DLQ) deliver it.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

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
    classify_transport_error,
    parse_retry_after,
    unreadable,
)
from forwarder.mapping import TransformValueError, as_text, convert_date
from forwarder.ports.locks import LockPort

if TYPE_CHECKING:
    import requests

MATCH_FIELD = {"Email": "email", "PhoneNumber": "phone", "CrmId": "crmId"}
#: ExpertSender's ids (consents, messages) are 32-bit signed integers.
INT32_MAX = 2**31 - 1
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9]{3,20}$")
_INDEX = re.compile(r"data\[(\d+)\]")
_CUSTOMER_MISSING = re.compile(r"\bno customer\b|\bcustomer\b[^.]*\bnot (been )?found\b", re.IGNORECASE)
_GENDERS = {
    "male": "Male",
    "female": "Female",
    "notspecified": "NotSpecified",
    "not_specified": "NotSpecified",
}
_CONSENT_VALUES = {"true": "True", "false": "False", "awaitingconfirmation": "AwaitingConfirmation"}
_TRUTHY = {"1", "yes", "y", "on"}
_FALSY = {"0", "no", "n", "off"}


class ExpertSenderSettings(BaseModel):
    """Per group key settings of the ExpertSender integration (no credentials here: they are in the secret)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field("https://api.ecdp.app", pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    mode: Literal["Add", "Update", "AddOrUpdate"] = "AddOrUpdate"
    match_by: Literal["Email", "PhoneNumber", "CrmId"] = "Email"
    batch_size: int = Field(100, ge=1, le=1000, description="customers per POST /customers")
    delete_by: Literal["email", "phone", "crmId", "id"] = "email"
    with_anonymization: bool = False
    consents_force: bool | None = None
    confirmation_message_id: int | None = Field(
        None, ge=1, le=INT32_MAX, description="ExpertSender message id"
    )
    timeout_seconds: float = Field(
        10.0, gt=0, le=20, description="read timeout; with connecting it must fit the 30 s deliver invocation"
    )


_CUSTOMER_FIELDS = {
    "email": FieldSpec("email", "string", "customer e-mail address"),
    "phone": FieldSpec("phone", "string", "phone number, digits with an optional leading +, no spaces"),
    "crmId": FieldSpec("crmId", "string", "the customer's id in your CRM"),
    "firstName": FieldSpec("firstName", "string", "first name"),
    "lastName": FieldSpec("lastName", "string", "last name"),
    "dateOfBirth": FieldSpec("dateOfBirth", "string", "date of birth, ISO 8601 (sent as a UTC date-time)"),
    "gender": FieldSpec("gender", "string", "Male, Female or NotSpecified (case-insensitive)"),
    "customAttributes": FieldSpec("customAttributes", "dynamic", "customer attributes: {attribute: name}"),
    "consents": FieldSpec(
        "consents", "dynamic", "consents: {attribute: consent id}; values true/false/AwaitingConfirmation"
    ),
}
_DELETE_FIELDS = {
    name: FieldSpec(name, "string", f"the customer's {name}") for name in ("email", "phone", "crmId", "id")
}


def _problem(response: requests.Response) -> tuple[str, list[str]]:
    """The vendor's problem-details body as (summary, errors); tolerant of non-JSON bodies."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip().replace("\n", " ")[:200]
        return (f"HTTP {response.status_code}" + (f": {text}" if text else "")), []
    title = str(body.get("title") or response.reason or "")
    detail = str(body.get("detail") or "")
    summary = f"HTTP {response.status_code} {title}".strip()
    if detail and detail != title:
        summary += f": {detail}"
    substatus = body.get("substatus")
    if substatus:
        summary += f" ({substatus})"
    raw_errors = body.get("errors") or []
    if isinstance(raw_errors, dict):  # ASP.NET style {"field": ["message", ...]}
        errors = [f"{key}: {message}" for key, messages in raw_errors.items() for message in messages]
    else:
        errors = [str(error) for error in raw_errors]
    return summary, errors


def _holds(stored: dict[str, Any], sent: dict[str, Any]) -> bool:
    """The stored customer already holds every field the upsert sent (what applying it again would write)."""
    for name, value in sent.items():
        if name == "customAttributes":
            have = {item.get("name"): item.get("value") for item in stored.get("customAttributes") or []}
            if any(have.get(item["name"]) != item["value"] for item in value):
                return False
        elif name == "consentsData":
            have = {
                item.get("id"): item.get("value")
                for item in (stored.get("consentsData") or {}).get("consents", [])
            }
            if any(have.get(item["id"]) != item["value"] for item in value.get("consents", [])):
                return False
        elif name == "email":
            if str(stored.get("email") or "").lower() != str(value).lower():
                return False
        elif name == "dateOfBirth":
            if not stored.get(name) or str(stored[name])[:10] != str(value)[:10]:
                return False
        elif stored.get(name) != value:
            return False
    return True


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _customer_not_found(response: requests.Response) -> bool:
    """A 404 about the customer (problem details naming it), as opposed to a wrong route or host."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    if str(body.get("substatus", "")).startswith("Customer"):
        return True
    return bool(_CUSTOMER_MISSING.search(f"{body.get('detail', '')}"))


class ExpertSender(Integration):
    type: ClassVar[str] = "expertsender"
    title: ClassVar[str] = "ExpertSender CDP"
    settings_model: ClassVar[builtins.type[BaseModel]] = ExpertSenderSettings
    secret_keys: ClassVar[tuple[str, ...]] = ("api_key",)
    actions: ClassVar[dict[str, ActionSpec]] = {
        "upsert_customer": ActionSpec(
            "upsert_customer",
            frozenset({"contacts"}),
            _CUSTOMER_FIELDS,
            "POST /customers with the configured mode and matchBy",
            batchable=True,
        ),
        "delete_customer": ActionSpec(
            "delete_customer",
            frozenset({"delete"}),
            _DELETE_FIELDS,
            "DELETE /customers/{delete_by}/{value}, optionally anonymising",
        ),
    }
    default_actions: ClassVar[dict[str, str]] = {"contacts": "upsert_customer", "delete": "delete_customer"}

    def check_config(
        self, settings: BaseModel, flows: dict[str, tuple[str, list[Any]]]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(settings, ExpertSenderSettings)
        problems: list[tuple[tuple[str | int, ...], str]] = []
        if "contacts" in flows:
            _, rules = flows["contacts"]
            match_field = MATCH_FIELD[settings.match_by]
            if not any(rule.to == match_field for rule in rules):
                problems.append(
                    (
                        ("contacts", "mapping"),
                        f"settings.match_by is {settings.match_by} but no mapping fills '{match_field}': "
                        "every record would be rejected",
                    )
                )
            for index, rule in enumerate(rules):
                if rule.to == "consents":
                    for attribute, consent_id in rule.fields.items():
                        if not str(consent_id).isascii() or not str(consent_id).isdigit():
                            problems.append(
                                (
                                    ("contacts", "mapping", index, "fields", attribute),
                                    f"consents are renamed to numeric consent ids, not '{consent_id}'",
                                )
                            )
                        elif not 1 <= int(str(consent_id)) <= INT32_MAX:
                            problems.append(
                                (
                                    ("contacts", "mapping", index, "fields", attribute),
                                    f"consent id {consent_id} is out of range: ExpertSender's ids are 1 to "
                                    f"{INT32_MAX}",
                                )
                            )
        if "delete" in flows:
            _, rules = flows["delete"]
            contacts_rules = flows.get("contacts", ("", []))[1]
            stored = next((rule for rule in contacts_rules if rule.to == settings.delete_by), None)
            for index, rule in enumerate(rules):
                if (
                    stored is not None
                    and rule.to == settings.delete_by
                    and rule.transforms != stored.transforms
                ):
                    problems.append(
                        (
                            ("delete", "mapping", index, "transforms"),
                            f"'{settings.delete_by}' must be normalised as contacts normalises it "
                            f"(transforms {stored.transforms}), or deletes will miss the stored customer",
                        )
                    )
            if not any(rule.to == settings.delete_by for rule in rules):
                problems.append(
                    (
                        ("delete", "mapping"),
                        f"settings.delete_by is {settings.delete_by} but no mapping fills '{settings.delete_by}': "
                        "every delete would be rejected",
                    )
                )
            if "contacts" in flows and settings.delete_by != MATCH_FIELD[settings.match_by]:
                problems.append(
                    (
                        ("settings", "delete_by"),
                        f"delete_by is {settings.delete_by} but customers are matched by {settings.match_by}: "
                        f"deletes must name customers as upserts do ('{MATCH_FIELD[settings.match_by]}'), or a "
                        "customer's delete and upsert could overtake each other",
                    )
                )
        return problems

    def customer_key(self, operation: str, payload: dict[str, Any], settings: BaseModel) -> str | None:
        assert isinstance(settings, ExpertSenderSettings)
        found = self.identities(operation, payload)
        if operation == "delete_customer":
            return found[0]
        prefix = f"{MATCH_FIELD[settings.match_by]}:"
        return next((identity for identity in found if identity.startswith(prefix)), None)

    def identities(self, operation: str, payload: dict[str, Any]) -> list[str]:
        if operation == "delete_customer":
            by, value = str(payload["by"]), str(payload["value"])
            return [f"{by}:{value.lower() if by == 'email' else value}"]
        customer = payload.get("customer", {})
        found = [f"email:{str(customer['email']).lower()}"] if customer.get("email") else []
        return found + [f"{name}:{customer[name]}" for name in ("phone", "crmId") if customer.get(name)]

    # --- validate: mapped fields -> vendor payload ---------------------------------------------------------

    def prepare(
        self,
        operation: str,
        mapped: dict[str, Any],
        settings: BaseModel,
        context: RecordContext = NO_CONTEXT,
    ) -> dict[str, Any]:
        assert isinstance(settings, ExpertSenderSettings)
        if operation == "delete_customer":
            return self._prepare_delete(mapped, settings)
        return {"customer": self._prepare_customer(mapped, settings)}

    def _prepare_delete(self, mapped: dict[str, Any], settings: ExpertSenderSettings) -> dict[str, Any]:
        value = mapped.get(settings.delete_by)
        if value is None or str(value).strip() == "":
            raise RecordInvalid(
                [f"field '{settings.delete_by}' is required to delete a customer (delete_by)"]
            )
        text = str(value).strip()
        if settings.delete_by == "id" and not text.isdigit():
            raise RecordInvalid(["field 'id' is not an integer customer id"])
        if settings.delete_by == "phone" and not _PHONE.match(text):
            raise RecordInvalid(
                [
                    "field 'phone' must be digits with an optional leading +, as stored (add the 'phone' transform)"
                ]
            )
        return {"by": settings.delete_by, "value": text}

    def _prepare_customer(self, mapped: dict[str, Any], settings: ExpertSenderSettings) -> dict[str, Any]:
        errors: list[str] = []
        customer: dict[str, Any] = {}
        for name in ("email", "phone", "crmId", "firstName", "lastName"):
            if name in mapped:
                customer[name] = str(mapped[name]).strip()
        if "email" in customer and not _EMAIL.match(customer["email"]):
            errors.append(f"field 'email': '{customer['email']}' is not a valid e-mail address")
        if "phone" in customer and not _PHONE.match(customer["phone"]):
            errors.append(
                f"field 'phone': '{customer['phone']}' must be digits with an optional leading +, no spaces "
                "(add the 'phone' transform to normalise)"
            )
        if "dateOfBirth" in mapped:
            customer["dateOfBirth"] = self._date_time(mapped["dateOfBirth"], errors)
        if "gender" in mapped:
            gender = _GENDERS.get(str(mapped["gender"]).strip().lower().replace(" ", ""))
            if gender is None:
                errors.append(
                    f"field 'gender': '{mapped['gender']}' is not one of Male, Female, NotSpecified"
                )
            customer["gender"] = gender
        attributes = mapped.get("customAttributes")
        if attributes:
            customer["customAttributes"] = [
                {"name": name, "value": self._attribute_value(value)} for name, value in attributes.items()
            ]
        consents = mapped.get("consents")
        if consents:
            consents_data = self._consents(consents, settings, errors)
            if consents_data:
                customer["consentsData"] = consents_data
        match_field = MATCH_FIELD[settings.match_by]
        if not customer.get(match_field):
            errors.append(
                f"field '{match_field}' is required: the integration matches customers by {settings.match_by}"
            )
        if errors:
            raise RecordInvalid(errors)
        return customer

    @staticmethod
    def _date_time(value: Any, errors: list[str]) -> str | None:
        try:
            return convert_date(str(value).strip())
        except TransformValueError as error:
            errors.append(f"field 'dateOfBirth': {error} (add a 'date' transform)")
            return None

    @staticmethod
    def _attribute_value(value: Any) -> str:
        return as_text(value)

    @staticmethod
    def _consents(
        consents: dict[str, Any], settings: ExpertSenderSettings, errors: list[str]
    ) -> dict[str, Any] | None:
        items: list[dict[str, Any]] = []
        for key, value in consents.items():
            try:
                consent_id = int(key)
            except ValueError:
                errors.append(
                    f"consent '{key}': the mapping must rename the attribute to a numeric consent id"
                )
                continue
            if isinstance(value, bool):
                status = "True" if value else "False"
            else:
                text = str(value).strip().lower()
                status = _CONSENT_VALUES.get(text) or (
                    "True" if text in _TRUTHY else "False" if text in _FALSY else ""
                )
            if not status:
                errors.append(f"consent {consent_id}: '{value}' is not true, false or AwaitingConfirmation")
                continue
            items.append({"id": consent_id, "value": status})
        if not items:
            return None
        data: dict[str, Any] = {"consents": items}
        if settings.consents_force is not None:
            data["force"] = settings.consents_force
        if settings.confirmation_message_id is not None:
            data["confirmationMessageId"] = settings.confirmation_message_id
        return data

    # --- confirm: an attempt that got no answer ---------------------------------------------------------------

    def confirm(
        self,
        operation: str,
        payloads: Sequence[dict[str, Any]],
        settings: BaseModel,
        credentials: dict[str, Any],
        http: requests.Session,
        budget: Budget | None = None,
    ) -> list[ReadBack]:
        """Reads each customer back (``GET /customers/{matchBy}/{value}``): applied when every field the
        upsert carried already holds its value. A delete is sent again (a second one finds no customer: 404,
        delivered), so it needs no read."""
        assert isinstance(settings, ExpertSenderSettings)
        if operation != "upsert_customer":
            return [None] * len(payloads)
        base_url = str(credentials.get("base_url") or settings.base_url).rstrip("/")
        headers = {"x-api-key": str(credentials["api_key"]), "Accept": "application/json"}
        field = MATCH_FIELD[settings.match_by]
        segment = "crmid" if field == "crmId" else field
        answers: list[ReadBack] = []
        for payload in payloads:
            customer = payload["customer"]
            if not customer.get(field):
                answers.append(None)
                continue
            if not (budget or Budget()).allows(3.05 + settings.timeout_seconds):
                answers.append(unreadable(self.title, "no time left", out_of_time=True))
                continue
            import requests  # deferred: importing requests costs cold starts that send nothing

            try:
                response = http.get(
                    f"{base_url}/customers/{segment}/{quote(str(customer[field]), safe='')}",
                    headers=headers,
                    timeout=(3.05, settings.timeout_seconds),
                )
            except requests.RequestException as error:
                answers.append(unreadable(self.title, type(error).__name__))
                continue
            if response.status_code == 404 and _customer_not_found(response):
                answers.append(False)
                continue
            stored = _json_object(response) if response.status_code == 200 else None
            if stored is None:
                answers.append(
                    unreadable(self.title, f"HTTP {response.status_code}", status=response.status_code)
                )
            else:
                answers.append(_holds(stored.get("data") or {}, customer))
        return answers

    # --- deliver -------------------------------------------------------------------------------------------

    def batch_size(self, operation: str, settings: BaseModel) -> int:
        assert isinstance(settings, ExpertSenderSettings)
        return settings.batch_size if operation == "upsert_customer" else 1

    def requests_for(self, operation: str, count: int, settings: BaseModel) -> int:
        return 1 if operation == "upsert_customer" else count  # one POST per batch; a DELETE per customer

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
        assert isinstance(settings, ExpertSenderSettings)
        self.check_credentials(credentials)
        base_url = str(credentials.get("base_url") or settings.base_url).rstrip("/")
        headers = {"x-api-key": str(credentials["api_key"]), "Accept": "application/json"}
        if operation == "delete_customer":
            return [
                self._delete(payload, base_url, headers, settings, http, budget or Budget())
                for payload in payloads
            ]
        customers = [payload["customer"] for payload in payloads]
        return self._post_customers(customers, base_url, headers, settings, http, budget or Budget())

    def _post_customers(
        self,
        customers: list[dict[str, Any]],
        base_url: str,
        headers: dict[str, str],
        settings: ExpertSenderSettings,
        http: requests.Session,
        budget: Budget,
    ) -> list[Outcome]:
        if not budget.allows(3.05 + settings.timeout_seconds):
            return [Outcome.retry(NOT_ATTEMPTED)] * len(customers)
        body = {"mode": settings.mode, "matchBy": settings.match_by, "data": customers}
        import requests  # deferred: importing requests costs cold starts that send nothing

        try:
            response = http.post(
                f"{base_url}/customers", json=body, headers=headers, timeout=(3.05, settings.timeout_seconds)
            )
        except requests.RequestException as error:
            return [classify_transport_error(error)] * len(customers)
        if response.status_code in (404, 405):  # the route itself is wrong: no record's fault
            summary, _ = _problem(response)
            return [
                Outcome.retry(
                    f"ExpertSender answered {summary} to POST /customers; check the integration's base_url",
                    status=response.status_code,
                )
            ] * len(customers)
        if response.status_code == 413 and len(customers) > 1:  # too large together: halve until it fits
            half = len(customers) // 2
            return self._post_customers(customers[:half], base_url, headers, settings, http, budget) + (
                self._post_customers(customers[half:], base_url, headers, settings, http, budget)
            )
        if response.status_code != 400 or len(customers) == 1:
            return [self._classify(response)] * len(customers)
        # A 400 for a batch: reject the customers the vendor names, send the rest again.
        summary, errors = _problem(response)
        by_index: dict[int, list[str]] = {}
        for message in errors:
            match = _INDEX.search(message)
            if match and int(match.group(1)) < len(customers):
                by_index.setdefault(int(match.group(1)), []).append(message)
        outcomes: list[Outcome | None] = [None] * len(customers)
        if by_index:
            for index, its_errors in by_index.items():
                outcomes[index] = Outcome.rejected(f"ExpertSender {summary}", its_errors, status=400)
            rest = [index for index in range(len(customers)) if outcomes[index] is None]
            if rest:
                again = self._post_customers(
                    [customers[i] for i in rest], base_url, headers, settings, http, budget
                )
                for index, outcome in zip(rest, again, strict=True):
                    outcomes[index] = outcome
        else:
            for index, customer in enumerate(customers):
                outcomes[index] = self._post_customers([customer], base_url, headers, settings, http, budget)[
                    0
                ]
        return [outcome for outcome in outcomes if outcome is not None]

    def _delete(
        self,
        payload: dict[str, Any],
        base_url: str,
        headers: dict[str, str],
        settings: ExpertSenderSettings,
        http: requests.Session,
        budget: Budget,
    ) -> Outcome:
        if not budget.allows(3.05 + settings.timeout_seconds):
            return Outcome.retry(NOT_ATTEMPTED)
        segment = (
            "crmid" if payload["by"] == "crmId" else payload["by"]
        )  # seed 004 spells DELETE .../crmid/{crmId}
        url = f"{base_url}/customers/{segment}/{quote(str(payload['value']), safe='')}"
        params = {"withAnonymization": "true" if settings.with_anonymization else "false"}
        import requests  # deferred: importing requests costs cold starts that send nothing

        try:
            response = http.delete(
                url, params=params, headers=headers, timeout=(3.05, settings.timeout_seconds)
            )
        except requests.RequestException as error:
            return classify_transport_error(error)
        if response.status_code == 404:
            if _customer_not_found(response):
                return Outcome.delivered(404)  # already absent: the effect a delete asks for
            summary, _ = _problem(response)
            return Outcome.retry(
                f"ExpertSender answered {summary} to DELETE /customers/{segment}/...; not a missing customer: "
                "check the integration's base_url",
                status=404,
            )
        return self._classify(response)

    @staticmethod
    def _classify(response: requests.Response) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome.delivered(status)
        summary, errors = _problem(response)
        if status == 429:
            return Outcome.retry(
                f"ExpertSender throttled the request ({summary})",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                status=status,
            )
        if status >= 500 or status == 408:
            return Outcome.unavailable(
                f"ExpertSender is unavailable ({summary})",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                status=status,
            )
        if status in (401, 403):
            return Outcome.retry(
                f"ExpertSender refused the API key ({summary}); check the integration's secret", status=status
            )
        return Outcome.rejected(f"ExpertSender {summary}", errors, status=status)
