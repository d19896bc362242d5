"""A hook's body: JSON, URL-encoded form fields, or multipart form fields (no files). Form fields become a
flat record: a field sent once is a string, a field sent more than once (or named ``name[]``) a list."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import parse_qsl

from forwarder.contract import ContractError, read_json

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
#: Form fields one body may hold (a browser form has tens); more is refused, not parsed.
MAX_FIELDS = 500
_UTF8 = {"utf-8", "utf8", "us-ascii", "ascii"}


@dataclass(frozen=True, slots=True)
class HookBody:
    """``json``: the parsed document; ``form``: the fields, in order, as (name, value) pairs."""

    kind: str
    document: Any = None
    fields: tuple[tuple[str, str], ...] = ()


def read_body(raw: bytes, content_type: str | None, max_bytes: int) -> HookBody:
    """Parse a hook's body by its Content-Type. Raises ContractError (4xx) saying what to fix."""
    if len(raw) > max_bytes:
        raise ContractError(
            413,
            "BODY_TOO_LARGE",
            f"the body is {len(raw)} bytes; the limit is {max_bytes} bytes: send fewer or shorter fields",
        )
    media_type, charset, boundary = _content_type(content_type)
    if media_type in (FORM, MULTIPART) and charset not in _UTF8:
        raise ContractError(
            415,
            "UNSUPPORTED_CHARSET",
            f"charset '{charset[:40]}' is not supported; send the form as UTF-8 (accept-charset=\"UTF-8\")",
        )
    if media_type == JSON or media_type.endswith("+json"):
        return HookBody("json", document=_json(raw))
    if media_type == FORM:
        return HookBody("form", fields=_urlencoded(raw))
    if media_type == MULTIPART:
        return HookBody("form", fields=_multipart(raw, boundary))
    shown = f"'{media_type[:60]}'" if media_type else "missing"
    raise ContractError(
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        f"Content-Type {shown} is not supported; send application/json, application/x-www-form-urlencoded "
        "or multipart/form-data",
    )


def _content_type(header: str | None) -> tuple[str, str, str]:
    """(media type, charset, boundary) of a Content-Type header (parameters may be quoted)."""
    media_type = (header or "").split(";", 1)[0].strip().lower()
    if not header or ";" not in header:
        return media_type, "utf-8", ""
    message = Message()
    message["content-type"] = header
    charset, boundary = message.get_param("charset"), message.get_param("boundary")
    return (
        media_type,
        (charset.strip() if isinstance(charset, str) and charset.strip() else "utf-8").lower(),
        boundary if isinstance(boundary, str) else "",
    )


def form_record(fields: tuple[tuple[str, str], ...]) -> dict[str, str | list[str]]:
    """Form fields as a flat record: repeated fields (or ``name[]``) become lists, in the order sent."""
    record: dict[str, str | list[str]] = {}
    for name, value in fields:
        listed = name.endswith("[]")
        key = name[:-2] if listed else name
        if not key:
            continue  # an unnamed control: browsers do not send them
        current = record.get(key)
        if current is None:
            record[key] = [value] if listed else value
        elif isinstance(current, list):
            current.append(value)
        else:
            record[key] = [current, value]
    return record


def _json(raw: bytes) -> Any:
    return read_json(raw, "the body is empty; send the form's fields")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError(
            400, "INVALID_TEXT", f"{what} is not valid UTF-8; send the form as UTF-8"
        ) from None


def _urlencoded(raw: bytes) -> tuple[tuple[str, str], ...]:
    text = _text(raw, "the body")
    try:
        pairs = parse_qsl(
            text, keep_blank_values=True, encoding="utf-8", errors="strict", max_num_fields=MAX_FIELDS
        )
    except UnicodeDecodeError:
        raise ContractError(
            400, "INVALID_TEXT", "a percent-encoded field is not valid UTF-8; send the form as UTF-8"
        ) from None
    except ValueError:  # more than max_num_fields
        raise ContractError(
            400, "TOO_MANY_FIELDS", f"the form has more than {MAX_FIELDS} fields; send fewer"
        ) from None
    return tuple(pairs)


def _multipart(raw: bytes, boundary: str) -> tuple[tuple[str, str], ...]:
    if not boundary:
        raise ContractError(
            400, "INVALID_MULTIPART", "multipart/form-data needs a boundary parameter in its Content-Type"
        )
    # Deferred: only multipart bodies pay for importing the parser (~15 ms of a cold start).
    from multipart import MultipartError, MultipartSegment, ParserLimitReached, PushMultipartParser

    fields: list[tuple[str, str]] = []
    segment: MultipartSegment | None = None
    chunks: list[bytes] = []
    try:
        with PushMultipartParser(
            boundary, content_length=len(raw), max_segment_count=MAX_FIELDS, strict=True
        ) as parser:
            for event in [*parser.parse(raw), *parser.parse(b"")]:
                if isinstance(event, MultipartSegment):
                    if event.filename is not None:
                        raise ContractError(
                            415,
                            "FILE_NOT_ACCEPTED",
                            f"field '{event.name[:64]}' is a file; hooks take form fields only: remove the file "
                            "input",
                            attribute=f"data.{event.name[:64]}",
                        )
                    segment, chunks = event, []
                elif event:
                    chunks.append(bytes(event))
                elif segment is not None:
                    fields.append((segment.name, _text(b"".join(chunks), f"field '{segment.name[:64]}'")))
                    segment = None
    except ParserLimitReached as error:
        raise ContractError(
            400, "TOO_MANY_FIELDS", f"the form is too large to read ({str(error)[:120]}); send fewer fields"
        ) from None
    except MultipartError as error:
        raise ContractError(
            400,
            "INVALID_MULTIPART",
            f"the multipart body cannot be read ({str(error)[:120]}); let the browser or an HTTP library "
            "encode the form",
        ) from None
    return tuple(fields)
