"""The mapping engine: declarative rules turn a flat record into an integration's fields."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from forwarder.mapping import (
    DynamicMapping,
    ListMapping,
    MappingError,
    MappingRule,
    StringMapping,
    TransformValueError,
    as_text,
    compile_mapping,
    compile_transform,
)

RULES: TypeAdapter[Any] = TypeAdapter(list[MappingRule])


def mapper(*rules: dict[str, Any]) -> Any:
    """Validate rules as a config document would give them, and compile them."""
    return compile_mapping(RULES.validate_python(list(rules)))


def transform(spec: Any, value: Any) -> Any:
    return compile_transform(spec)(value)


# --- kinds --------------------------------------------------------------------------------------------------


def test_a_string_rule_copies_one_attribute_to_one_field_and_skips_absent_ones() -> None:
    # given rules for e-mail and first name
    mapped = mapper(
        {"kind": "string", "from": "email", "to": "email"},
        {"kind": "string", "from": "first_name", "to": "firstName"},
        {"kind": "string", "from": "last_name", "to": "lastName"},
    )

    # when a record has an e-mail, an empty first name and no last name
    out = mapped({"email": "jane@example.com", "first_name": "", "other": "ignored"})

    # then only the e-mail is mapped: empty and absent attributes produce no field
    assert out == {"email": "jane@example.com"}


def test_a_string_rule_with_a_constant_value_always_sets_the_field() -> None:
    mapped = mapper({"kind": "string", "value": "web", "to": "source"})

    assert mapped({"anything": 1}) == {"source": "web"}


def test_a_string_rule_refuses_a_list_attribute() -> None:
    mapped = mapper({"kind": "string", "from": "tags", "to": "tag"})

    with pytest.raises(MappingError) as caught:
        mapped({"tags": ["a", "b"]})

    assert caught.value.errors == ["attribute 'tags' is a list; field 'tag' takes a single value"]


def test_a_list_rule_maps_an_array_and_runs_transforms_on_each_item_dropping_empty_ones() -> None:
    mapped = mapper({"kind": "list", "from": "tags", "to": "lists", "transforms": ["trim", "lower"]})

    assert mapped({"tags": [" VIP ", "News", "  ", None]}) == {"lists": ["vip", "news"]}


def test_a_list_rule_turns_a_single_value_into_a_one_item_list() -> None:
    mapped = mapper({"kind": "list", "from": "tag", "to": "lists"})

    assert mapped({"tag": "vip"}) == {"lists": ["vip"]}
    assert mapped({"tag": None}) == {}
    assert mapped({}) == {}


def test_a_dynamic_rule_gathers_several_attributes_into_one_object_under_renamed_keys() -> None:
    mapped = mapper(
        {"kind": "dynamic", "to": "customAttributes", "fields": {"city": "City", "tier": "Tier", "x": "X"}}
    )

    out = mapped({"city": "Oslo", "tier": "gold", "email": "a@b.pl"})

    assert out == {"customAttributes": {"City": "Oslo", "Tier": "gold"}}


def test_two_dynamic_rules_to_the_same_field_merge_into_one_object() -> None:
    # given two dynamic rules targeting the same field, one with a transform
    mapped = mapper(
        {"kind": "dynamic", "to": "attributes", "fields": {"city": "City"}, "transforms": ["upper"]},
        {"kind": "dynamic", "to": "attributes", "fields": {"tier": "Tier", "tags": "Tags"}},
    )

    # when a record has attributes for both
    out = mapped({"city": "oslo", "tier": "gold", "tags": ["a", "b"]})

    # then there is one object holding all keys, each transformed by its own rule only
    assert out == {"attributes": {"City": "OSLO", "Tier": "gold", "Tags": ["a", "b"]}}


def test_a_dynamic_rule_with_no_attribute_present_produces_no_field() -> None:
    mapped = mapper({"kind": "dynamic", "to": "attributes", "fields": {"city": "City"}})

    assert mapped({"city": "", "email": "a@b.pl"}) == {}


# --- required and error collection -----------------------------------------------------------------------------


def test_every_problem_of_a_record_is_reported_at_once() -> None:
    # given required rules of every kind and a phone transform
    mapped = mapper(
        {"kind": "string", "from": "email", "to": "email", "required": True},
        {"kind": "string", "from": "phone", "to": "phone", "transforms": ["phone"]},
        {"kind": "list", "from": "tags", "to": "lists", "required": True},
        {"kind": "dynamic", "to": "attrs", "fields": {"city": "City", "zip": "Zip"}, "required": True},
        {"kind": "string", "from": "first_name", "to": "firstName"},
    )

    # when a record lacks all of the required attributes and has a bad phone
    with pytest.raises(MappingError) as caught:
        mapped({"phone": "call me", "first_name": "Jane", "email": ""})

    # then one error lists each problem, in rule order
    assert caught.value.errors == [
        "attribute 'email' is required (it maps to 'email')",
        "attribute 'phone': 'call me' is not a phone number",
        "attribute 'tags' is required (it maps to 'lists')",
        "none of the attributes city, zip is present (they map to 'attrs')",
    ]
    assert str(caught.value) == "; ".join(caught.value.errors)


def test_a_required_attribute_that_becomes_empty_after_transforms_is_missing() -> None:
    mapped = mapper(
        {"kind": "string", "from": "email", "to": "email", "transforms": ["trim"], "required": True}
    )

    with pytest.raises(MappingError) as caught:
        mapped({"email": "   "})

    assert caught.value.errors == ["attribute 'email' is required (it maps to 'email')"]


def test_a_bad_item_of_a_list_is_named_by_its_index() -> None:
    mapped = mapper({"kind": "list", "from": "phones", "to": "phones", "transforms": ["phone"]})

    with pytest.raises(MappingError) as caught:
        mapped({"phones": ["+48600100200", "nope"]})

    assert caught.value.errors == ["attribute 'phones[1]': 'nope' is not a phone number"]


# --- transforms --------------------------------------------------------------------------------------------------


def test_trim_lower_upper_change_strings_and_leave_other_values_alone() -> None:
    assert transform("trim", "  Jane \t") == "Jane"
    assert transform("lower", "JaNe@Example.COM") == "jane@example.com"
    assert transform("upper", "pl") == "PL"
    assert [transform(name, 7) for name in ("trim", "lower", "upper")] == [7, 7, 7]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, "true"), (False, "false"), (42, "42"), (3.0, "3"), (2.5, "2.5"), ("x", "x"), (None, None)],
)
def test_string_renders_values_as_text(value: Any, expected: Any) -> None:
    assert transform("string", value) == expected


def test_empty_to_null_turns_blank_strings_into_null() -> None:
    assert transform("empty_to_null", "  ") is None
    assert transform("empty_to_null", "") is None
    assert transform("empty_to_null", " x ") == " x "
    assert transform("empty_to_null", 0) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+48 600-100-200", "+48600100200"),
        ("(600) 100.200", "600100200"),
        ("0048600100200", "+48600100200"),
        (48600100200, "48600100200"),
    ],
)
def test_phone_without_a_default_prefix_strips_separators_and_turns_00_into_plus(
    value: Any, expected: str
) -> None:
    assert transform("phone", value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("600 100 200", "+48600100200"),
        ("0600100200", "+48600100200"),  # a national trunk 0 is dropped before the prefix
        ("0049301234567", "+49301234567"),  # an international 00 number keeps its own country code
        ("+44 20 7946 0958", "+442079460958"),
        # the country code typed without its "+" (11 digits and more: longer than a national number)
        ("48600100200", "+48600100200"),  # before: +4848600100200
        (48600100200, "+48600100200"),
        ("486001002", "+48486001002"),  # 9 digits: a national number that happens to start with 48
    ],
)
def test_phone_with_a_default_prefix_adds_it_only_to_national_numbers(value: Any, expected: str) -> None:
    assert transform({"phone": {"default_prefix": "+48"}}, value) == expected


def test_phone_refuses_text_that_is_not_a_number() -> None:
    with pytest.raises(TransformValueError, match="'call me' is not a phone number"):
        transform("phone", "call me")


def test_phone_default_prefix_must_look_like_a_country_code() -> None:
    with pytest.raises(ValidationError):
        compile_transform({"phone": {"default_prefix": "48"}})


@pytest.mark.parametrize(
    ("options", "value", "expected"),
    [
        ({}, "1990-05-17", "1990-05-17T00:00:00.000Z"),
        ({}, "1990-05-17T02:30:00.123456+02:00", "1990-05-17T00:30:00.123Z"),
        ({"input": "iso8601", "output": "date"}, "1990-05-17T23:59:00", "1990-05-17"),
        ({"input": "%d.%m.%Y", "output": "iso8601"}, "17.05.1990", "1990-05-17T00:00:00.000Z"),
        ({"input": "%d.%m.%Y", "output": "%Y/%m/%d"}, " 17.05.1990 ", "1990/05/17"),
        ({"input": "unix"}, 0, "1970-01-01T00:00:00.000Z"),
        ({"input": "unix"}, "1700000000", "2023-11-14T22:13:20.000Z"),
        ({"input": "unix", "output": "date"}, 1700000000.5, "2023-11-14"),
        ({}, "0999-01-02", "0999-01-02T00:00:00.000Z"),  # the year keeps its four digits
    ],
)
def test_date_converts_between_input_and_output_formats(
    options: dict[str, str], value: Any, expected: str
) -> None:
    assert transform({"date": options}, value) == expected


@pytest.mark.parametrize(
    ("options", "value", "message"),
    [
        ({}, "17/05/1990", "is not a date in ISO 8601"),
        ({"input": "%d.%m.%Y"}, "1990-05-17", "is not a date in the format '%d.%m.%Y'"),
        ({"input": "unix"}, "yesterday", "is not a unix timestamp"),
        ({"input": "unix"}, 10**20, "is not a unix timestamp"),  # out of range, not a crash
        ({"input": "unix"}, "1e20", "is not a unix timestamp"),
        ({}, "9999-12-31T23:59:59-05:00", "out of the supported date range"),
        ({}, True, "is not a date"),
    ],
)
def test_date_refuses_values_it_cannot_read_with_a_transform_error(
    options: dict[str, str], value: Any, message: str
) -> None:
    with pytest.raises(TransformValueError, match=message):
        transform({"date": options}, value)


def test_an_unreadable_date_is_a_mapping_error_not_a_crash() -> None:
    mapped = mapper(
        {"kind": "string", "from": "born", "to": "dateOfBirth", "transforms": [{"date": {"input": "unix"}}]}
    )

    with pytest.raises(MappingError) as caught:
        mapped({"born": 1e300})

    assert caught.value.errors == ["attribute 'born': '1e+300' is not a unix timestamp"]


def test_default_fills_missing_and_empty_values_only() -> None:
    fill = compile_transform({"default": "pl"})

    assert [fill(None), fill(""), fill("de"), fill(0)] == ["pl", "pl", "de", 0]


def test_a_default_makes_a_missing_attribute_present() -> None:
    mapped = mapper(
        {
            "kind": "string",
            "from": "lang",
            "to": "language",
            "transforms": [{"default": "pl"}],
            "required": True,
        }
    )

    assert mapped({}) == {"language": "pl"}


def test_map_translates_known_values_and_passes_others_through() -> None:
    translate = compile_transform({"map": {"m": "Male", "f": "Female", 1: "one"}})

    assert [translate("m"), translate("f"), translate("x"), translate(1)] == ["Male", "Female", "x", "one"]


def test_map_with_boolean_keys_matches_boolean_values() -> None:
    # given a map written in YAML as {true: "True", false: "False"} (keys load as booleans)
    translate = compile_transform({"map": {True: "True", False: "False"}})

    # then a boolean attribute, and its text form from a web form, both translate
    assert [translate(True), translate(False), translate("true")] == ["True", "False", "True"]


def test_map_ignores_case_and_surrounding_spaces_when_no_key_matches_exactly() -> None:
    # given a map written with lower-case keys
    translate = compile_transform({"map": {"m": "Male", "f": "Female"}})

    # then "M" and " f " from a web form translate too (before: "M" passed through and the vendor refused it)
    assert [translate("M"), translate(" f "), translate("F")] == ["Male", "Female", "Female"]


def test_map_prefers_the_exact_key_when_keys_differ_only_in_case() -> None:
    translate = compile_transform({"map": {"a": "lower", "A": "upper"}})

    assert [translate("a"), translate("A")] == ["lower", "upper"]


def test_as_text_writes_lists_and_booleans_as_the_string_transform_does() -> None:
    assert as_text(["a", None, "b"]) == "a,b"  # before: "a,,b"
    assert as_text([True, False, 1.0, 2.5]) == "true,false,1,2.5"  # before: "True,False,1.0,2.5"
    assert as_text(True) == "true"
    assert as_text(3.0) == "3"
    assert as_text("Oslo") == "Oslo"


def test_truncate_cuts_strings_to_the_length() -> None:
    cut = compile_transform({"truncate": 3})

    assert [cut("abcdef"), cut("ab"), cut(12345)] == ["abc", "ab", 12345]


def test_transforms_run_in_the_order_given() -> None:
    trim_then_default = mapper(
        {"kind": "string", "from": "x", "to": "x", "transforms": ["trim", "empty_to_null", {"default": "d"}]}
    )
    default_then_trim = mapper(
        {"kind": "string", "from": "x", "to": "x", "transforms": [{"default": "d"}, "trim"]}
    )

    assert trim_then_default({"x": "   "}) == {"x": "d"}
    assert default_then_trim({"x": "   "}) == {}


# --- rule validation ------------------------------------------------------------------------------------------


def test_an_unknown_transform_is_refused_when_the_rule_is_validated_naming_it() -> None:
    with pytest.raises(ValidationError) as caught:
        StringMapping.model_validate(
            {"kind": "string", "from": "email", "to": "email", "transforms": ["trim", "lowercase"]}
        )

    message = str(caught.value)
    assert "transforms[1]: unknown transform 'lowercase'" in message
    assert "lower" in message.split("known:")[1]


def test_an_unknown_parameterised_transform_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError, match="unknown transform 'slugify'"):
        ListMapping.model_validate(
            {"kind": "list", "from": "tags", "to": "lists", "transforms": [{"slugify": {}}]}
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"truncate": 0}, "'truncate' takes a positive integer length"),
        ({"map": {}}, "'map' takes a non-empty object"),
        ({"default": ["a"]}, "'default' takes a single"),
        ({"trim": None, "lower": None}, "object with one key"),
    ],
)
def test_bad_transform_options_are_refused_at_rule_validation(spec: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DynamicMapping.model_validate(
            {"kind": "dynamic", "to": "attrs", "fields": {"a": "A"}, "transforms": [spec]}
        )


def test_a_string_rule_needs_exactly_one_of_from_and_value() -> None:
    with pytest.raises(ValidationError, match="give the attribute to read"):
        StringMapping.model_validate({"kind": "string", "to": "email"})
    with pytest.raises(ValidationError, match="not both"):
        StringMapping.model_validate({"kind": "string", "to": "email", "from": "email", "value": "x"})


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        RULES.validate_python([{"kind": "nested", "from": "a", "to": "b"}])
