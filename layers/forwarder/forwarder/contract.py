"""The public contract: the request envelope, flat data, and the three actions (seed 002)."""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict

#: The front door's limits (a vendor's own field rules are checked later, per integration).
MAX_ATTRIBUTES = 200
MAX_ATTRIBUTE_NAME = 128
MAX_VALUE_CHARS = 10_000
MAX_LIST_ITEMS = 100

# A flat value: string, number, boolean, null, or a list of those.
Scalar = str | int | float | bool | None
FlatValue = Scalar | list[Scalar]
FlatData = dict[str, FlatValue]


class Action(enum.StrEnum):
    """What a record asks for; each maps to one route and to one flow of an integration's config."""

    UPSERT_CONTACT = "upsert_contact"
    DELETE_CONTACT = "delete_contact"
    EVENT = "event"

    @property
    def flow(self) -> str:
        """The config section that configures this action for an integration."""
        return {"upsert_contact": "contacts", "delete_contact": "delete", "event": "events"}[self.value]


ROUTES: dict[tuple[str, str], Action] = {
    ("POST", "/v1/contacts"): Action.UPSERT_CONTACT,
    ("DELETE", "/v1/contacts"): Action.DELETE_CONTACT,
    ("POST", "/v1/events"): Action.EVENT,
}

#: The status route (SigV4, GET): a request's status per integration, for the client that sent it. The
#: embedded gateway, api.py and template.yaml read it here.
STATUS_RESOURCE = "/v1/requests/{request_id}"
STATUS_METHOD = "GET"
_STATUS_PATH_PREFIX = "/v1/requests/"


def status_request_id(path: str) -> str | None:
    """The request id when ``path`` is the status route's (one non-empty segment after the prefix)."""
    if not path.startswith(_STATUS_PATH_PREFIX):
        return None
    rest = path[len(_STATUS_PATH_PREFIX) :]
    return rest if rest and "/" not in rest else None


class ContractError(Exception):
    """A request the contract refuses. ``status`` is the HTTP status, ``code`` a stable machine-readable name,
    ``message`` says what to fix; ``attribute`` names the offending attribute when there is one."""

    def __init__(self, status: int, code: str, message: str, attribute: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.attribute = attribute

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.attribute is not None:
            body["attribute"] = self.attribute
        return body


class Envelope(BaseModel):
    """A checked request body: ``{"data": {...flat...}, "group_key": "..."}``."""

    model_config = ConfigDict(frozen=True)

    group_key: str
    data: FlatData


def _type_name(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f]")


def _check_name(name: str) -> None:
    if not name or _CONTROL_CHARACTERS.search(name):
        raise ContractError(
            400,
            "INVALID_ATTRIBUTE_NAME",
            f"attribute name {json.dumps(name)} is empty or holds control characters; use a plain name",
            attribute=f"data.{name}",
        )
    if len(name) > MAX_ATTRIBUTE_NAME:
        raise ContractError(
            400,
            "ATTRIBUTE_NAME_TOO_LONG",
            f"attribute name '{name[:40]}...' has {len(name)} characters; at most {MAX_ATTRIBUTE_NAME}",
            attribute=f"data.{name}",
        )


def _check_length(value: Any, where: str) -> None:
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise ContractError(
            400,
            "VALUE_TOO_LONG",
            f"attribute '{where}' has {len(value)} characters; at most {MAX_VALUE_CHARS}",
            attribute=where,
        )


def check_flat(data: dict[str, Any]) -> FlatData:
    """Return ``data`` when every value is a scalar or a list of scalars, within the front door's limits;
    otherwise say what to fix, naming the attribute."""
    if len(data) > MAX_ATTRIBUTES:
        raise ContractError(
            400,
            "TOO_MANY_ATTRIBUTES",
            f"'data' has {len(data)} attributes; at most {MAX_ATTRIBUTES}: send only what the integrations map",
            attribute="data",
        )
    for name, value in data.items():
        _check_name(name)
        if not _encodable(name) or any(
            isinstance(item, str) and not _encodable(item)
            for item in (value if isinstance(value, list) else [value])
        ):
            raise ContractError(
                400,
                "INVALID_TEXT",
                f"attribute 'data.{name}' holds an unpaired UTF-16 surrogate; send valid Unicode text",
                attribute=f"data.{name}",
            )
        if isinstance(value, list):
            if len(value) > MAX_LIST_ITEMS:
                raise ContractError(
                    400,
                    "LIST_TOO_LONG",
                    f"attribute 'data.{name}' holds {len(value)} items; at most {MAX_LIST_ITEMS}",
                    attribute=f"data.{name}",
                )
            for index, item in enumerate(value):
                _check_length(item, f"data.{name}[{index}]")
                if isinstance(item, dict | list):
                    raise ContractError(
                        400,
                        "NESTED_ATTRIBUTE",
                        f"attribute 'data.{name}[{index}]' is {_type_name(item)}; data must be flat: lists may "
                        "hold only strings, numbers, booleans or nulls",
                        attribute=f"data.{name}[{index}]",
                    )
        elif isinstance(value, dict):
            raise ContractError(
                400,
                "NESTED_ATTRIBUTE",
                f"attribute 'data.{name}' is an object; data must be flat: every value is a string, number, "
                "boolean, null or a list of those",
                attribute=f"data.{name}",
            )
        else:
            _check_length(value, f"data.{name}")
    return data


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON value; send a number, null or a string")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJson(f"the number {text[:20]}... is too large to forward")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (\ud800) cannot be stored or forwarded
        return False
    return True


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _utf8(raw: bytes) -> str:
    """The body as text: it must be UTF-8 (RFC 8259); a leading byte order mark is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractError(
            400,
            "INVALID_ENCODING",
            f"the body is not UTF-8 text (an invalid byte at offset {error.start}); send JSON encoded as UTF-8",
        ) from None
    return text.removeprefix("\ufeff")


def read_json(raw: bytes, empty: str) -> Any:
    """A request body as JSON: UTF-8 text, no NaN/Infinity, no number too large to forward, not nested deeper
    than the parser follows. Raises ContractError (400) saying what to fix; ``empty`` is the message for an
    empty body."""
    if not raw.strip():
        raise ContractError(400, "EMPTY_BODY", empty)
    text = _utf8(raw)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ContractError(
            400, "NESTED_TOO_DEEP", "the body is nested too deeply; data must be flat"
        ) from None
    except _NotJson as error:
        raise ContractError(400, "INVALID_JSON", f"the body is not valid JSON: {error}") from None
    except json.JSONDecodeError as error:
        raise ContractError(
            400, "INVALID_JSON", f"the body is not valid JSON at line {error.lineno} column {error.colno}"
        ) from None
    except ValueError:  # an integer of more digits than Python converts
        raise ContractError(400, "INVALID_JSON", "the body holds a number too large to forward") from None


def parse_envelope(body: bytes | str | None, content_type: str | None, max_bytes: int) -> Envelope:
    """Check a raw request body against the contract. Raises ContractError saying what to fix."""
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type and media_type != "application/json" and not media_type.endswith("+json"):
            raise ContractError(
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                f"Content-Type '{media_type}' is not supported; send the body as application/json",
            )
        charset = _charset(content_type)
        if charset is not None and charset not in ("utf-8", "utf8"):
            raise ContractError(
                415,
                "UNSUPPORTED_CHARSET",
                f"charset '{charset[:40]}' is not supported; send the body as UTF-8 (charset=utf-8)",
            )
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else (body or b"")
    if len(raw) > max_bytes:
        raise ContractError(
            413,
            "BODY_TOO_LARGE",
            f"the body is {len(raw)} bytes; the limit is {max_bytes} bytes: send fewer or shorter attributes",
        )
    document = read_json(raw, 'the body is empty; send {"data": {...}, "group_key": "..."}')
    if not isinstance(document, dict):
        raise ContractError(
            400, "INVALID_ENVELOPE", 'the body must be a JSON object: {"data": {...}, "group_key": "..."}'
        )
    group_key = document.get("group_key")
    if group_key is None:
        raise ContractError(400, "MISSING_GROUP_KEY", "'group_key' is required", attribute="group_key")
    if not isinstance(group_key, str) or not group_key.strip():
        raise ContractError(
            400, "INVALID_GROUP_KEY", "'group_key' must be a non-empty string", attribute="group_key"
        )
    unknown = sorted(set(document) - {"data", "group_key"})
    if unknown:
        raise ContractError(
            400,
            "UNKNOWN_FIELD",
            f"unknown top-level field '{unknown[0]}'; put record attributes inside 'data'",
            attribute=unknown[0],
        )
    data = document.get("data")
    if data is None:
        raise ContractError(400, "MISSING_DATA", "'data' is required and must be an object", attribute="data")
    if not isinstance(data, dict):
        raise ContractError(
            400, "INVALID_DATA", f"'data' must be an object, not {_type_name(data)}", attribute="data"
        )
    if not data:
        raise ContractError(400, "EMPTY_DATA", "'data' has no attributes", attribute="data")
    return Envelope.model_construct(
        group_key=group_key, data=check_flat(data)
    )  # checked above: no second pass
