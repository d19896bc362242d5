"""``forwarder send --set ATTR=VALUE``: what a typed value becomes."""

from __future__ import annotations

import pytest

from forwarder_local.cli import parse_set_value


@pytest.mark.parametrize("typed", ["48123456789", "0047123", "1.50", "1e3", "00501", '"quoted"'])
def test_numbers_and_other_text_stay_exactly_as_typed(typed: str) -> None:
    # before: 48123456789 became a number, and the phone transform then made it +4848123456789
    assert parse_set_value(typed) == typed


@pytest.mark.parametrize(
    ("typed", "value"),
    [('["vip", "newsletter"]', ["vip", "newsletter"]), ("true", True), ("false", False), ("null", None)],
)
def test_lists_booleans_and_null_are_read_as_json(typed: str, value: object) -> None:
    assert parse_set_value(typed) == value


def test_text_that_only_looks_like_a_list_stays_text() -> None:
    assert parse_set_value("[not json") == "[not json"
