"""The public contract: what a caller sending a body to /v1/contacts or /v1/events is told (seed 002)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forwarder.contract import ContractError, Envelope, parse_envelope

LIMIT = 10_000
JSON = "application/json"


def send(document: Any, content_type: str | None = JSON, max_bytes: int = LIMIT) -> Envelope:
    body = document if isinstance(document, str | bytes) else json.dumps(document)
    return parse_envelope(body, content_type, max_bytes)


def refused(document: Any, content_type: str | None = JSON, max_bytes: int = LIMIT) -> ContractError:
    with pytest.raises(ContractError) as caught:
        send(document, content_type, max_bytes)
    return caught.value


def test_a_flat_envelope_is_accepted_with_its_values_and_their_types_unchanged() -> None:
    # given a body with every kind of flat value
    data = {"email": "jane@example.com", "age": 41, "score": 9.5, "vip": True, "note": None, "tags": ["a", 1]}

    # when it is parsed with a JSON content type that carries a charset
    envelope = send({"group_key": "brand-pl", "data": data}, "application/json; charset=utf-8")

    # then the record is exactly what was sent: no value coerced into another type
    assert envelope.group_key == "brand-pl"
    assert envelope.data == data
    assert [type(envelope.data[name]) for name in data] == [str, int, float, bool, type(None), list]
    assert envelope.data["tags"] == ["a", 1] and isinstance(envelope.data["tags"][1], int)


def test_a_json_suffix_media_type_and_a_missing_content_type_are_accepted() -> None:
    document = {"group_key": "g", "data": {"email": "a@b.pl"}}

    assert send(document, "application/vnd.forwarder+json").data == {"email": "a@b.pl"}
    assert send(document, None).data == {"email": "a@b.pl"}


def test_lists_of_scalars_are_flat() -> None:
    # given lists holding strings, numbers, booleans and nulls, and an empty list
    data = {"tags": ["vip", "newsletter"], "mixed": [1, 2.5, False, None, "x"], "none": []}

    # when / then they are accepted as they are
    assert send({"group_key": "g", "data": data}).data == data


def test_a_nested_object_is_refused_naming_the_attribute() -> None:
    # given an attribute whose value is an object
    error = refused({"group_key": "g", "data": {"email": "a@b.pl", "x": {"y": 1}}})

    # then the caller is told which attribute breaks flatness
    assert (error.status, error.code, error.attribute) == (400, "NESTED_ATTRIBUTE", "data.x")
    assert "'data.x'" in error.message and "flat" in error.message
    assert error.body() == {"code": "NESTED_ATTRIBUTE", "message": error.message, "attribute": "data.x"}


def test_an_object_inside_a_list_is_refused_naming_the_list_item() -> None:
    error = refused({"group_key": "g", "data": {"tags": ["ok", {"bad": True}, "ok"]}})

    assert (error.status, error.code, error.attribute) == (400, "NESTED_ATTRIBUTE", "data.tags[1]")
    assert "'data.tags[1]' is an object" in error.message


def test_a_list_inside_a_list_is_refused_naming_the_list_item() -> None:
    error = refused({"group_key": "g", "data": {"matrix": [[1, 2]]}})

    assert (error.status, error.attribute) == (400, "data.matrix[0]")
    assert "is a list" in error.message


def test_a_body_that_is_not_json_is_refused_with_where_it_breaks() -> None:
    error = refused('{"group_key": "g",\n "data": {"email": }}')

    assert (error.status, error.code) == (400, "INVALID_JSON")
    assert "line 2" in error.message


def test_a_body_that_is_not_utf8_is_refused_as_invalid_encoding() -> None:
    error = refused(b'{"group_key": "\xff\xfe", "data": {}}')

    assert (error.status, error.code) == (400, "INVALID_ENCODING")
    assert "UTF-8" in error.message


def test_an_empty_body_is_refused() -> None:
    assert (refused(b"  ").status, refused(b"").code) == (400, "EMPTY_BODY")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "TEXT/XML"])
def test_a_non_json_content_type_is_refused_with_415(content_type: str) -> None:
    # given a well-formed body sent with another media type
    error = refused({"group_key": "g", "data": {"a": 1}}, content_type)

    # then the answer is 415 and names the media type it got
    assert (error.status, error.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert content_type.lower() in error.message


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_parsed() -> None:
    # given a body one byte over the limit (and not even JSON: size is checked first)
    body = b"x" * 101

    error = refused(body, max_bytes=100)

    assert (error.status, error.code) == (413, "BODY_TOO_LARGE")
    assert "101 bytes" in error.message and "100 bytes" in error.message


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    document = json.dumps({"group_key": "g", "data": {"a": "x"}})

    assert send(document, max_bytes=len(document.encode())).data == {"a": "x"}


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    # given 30 two-byte characters: 30 characters but 60 bytes of value
    document = json.dumps({"group_key": "g", "data": {"name": "ż" * 30}}, ensure_ascii=False)

    error = refused(document, max_bytes=len(document))

    assert error.status == 413


@pytest.mark.parametrize(
    ("document", "code"),
    [
        ({"data": {"a": 1}}, "MISSING_GROUP_KEY"),
        ({"group_key": None, "data": {"a": 1}}, "MISSING_GROUP_KEY"),
        ({"group_key": "", "data": {"a": 1}}, "INVALID_GROUP_KEY"),
        ({"group_key": "   ", "data": {"a": 1}}, "INVALID_GROUP_KEY"),
        ({"group_key": 123, "data": {"a": 1}}, "INVALID_GROUP_KEY"),
        ({"group_key": ["g"], "data": {"a": 1}}, "INVALID_GROUP_KEY"),
    ],
)
def test_a_missing_empty_or_non_string_group_key_is_refused_naming_group_key(
    document: dict[str, Any], code: str
) -> None:
    error = refused(document)

    assert (error.status, error.code, error.attribute) == (400, code, "group_key")
    assert "'group_key'" in error.message


@pytest.mark.parametrize("data", [["a", "b"], "text", 5, True])
def test_data_that_is_not_an_object_is_refused_naming_data(data: Any) -> None:
    error = refused({"group_key": "g", "data": data})

    assert (error.status, error.code, error.attribute) == (400, "INVALID_DATA", "data")


def test_missing_and_empty_data_are_refused() -> None:
    missing = refused({"group_key": "g"})
    empty = refused({"group_key": "g", "data": {}})

    assert (missing.status, missing.code, missing.attribute) == (400, "MISSING_DATA", "data")
    assert (empty.status, empty.code, empty.attribute) == (400, "EMPTY_DATA", "data")


def test_an_unknown_top_level_field_is_refused_and_the_caller_is_told_to_put_it_in_data() -> None:
    # given an attribute put next to data instead of inside it
    error = refused({"group_key": "g", "data": {"a": 1}, "email": "a@b.pl"})

    assert (error.status, error.code, error.attribute) == (400, "UNKNOWN_FIELD", "email")
    assert "'email'" in error.message and "inside 'data'" in error.message


@pytest.mark.parametrize("document", [["g", {"a": 1}], "just a string", 42, None])
def test_a_json_body_that_is_not_an_object_is_refused(document: Any) -> None:
    error = refused(json.dumps(document))

    assert (error.status, error.code) == (400, "INVALID_ENVELOPE")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused_not_turned_into_null(constant: str) -> None:
    body = '{"data": {"score": ' + constant + '}, "group_key": "demo"}'
    with pytest.raises(ContractError) as refused:
        parse_envelope(body, "application/json", 10_000)
    assert refused.value.status == 400
    assert constant.lstrip("-") in refused.value.message


def test_an_unpaired_surrogate_is_refused_naming_the_attribute() -> None:
    body = '{"data": {"name": "\\ud800x", "ok": "fine"}, "group_key": "demo"}'
    with pytest.raises(ContractError) as refused:
        parse_envelope(body, "application/json", 10_000)
    assert refused.value.status == 400
    assert refused.value.attribute == "data.name"


@pytest.mark.parametrize("number", ["1e999", "-1e999", "9" * 5000])
def test_numbers_that_cannot_be_forwarded_faithfully_are_refused(number: str) -> None:
    body = '{"data": {"score": ' + number + '}, "group_key": "demo"}'
    with pytest.raises(ContractError) as refused:
        parse_envelope(body, "application/json", 100_000)
    assert refused.value.status == 400
    assert "too large" in refused.value.message
