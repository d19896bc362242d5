"""What `forwarder trail` shows of a reason without --show-data: what to fix, not the customer's values."""

from __future__ import annotations

import pytest

from forwarder_local.masking import masked


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attribute 'phone': 'abc' is not a phone number", "attribute 'phone': '…' is not a phone number"),
        ("attribute 'last_name': \"O'Brien\" is too long", "attribute 'last_name': '…' is too long"),
        (
            "field 'email': 'jane@example' is not a valid e-mail address",
            "field 'email': '…' is not a valid e-mail address",
        ),
        (
            "HTTP 400 from the vendor: customer jane@example.com exists",
            "HTTP 400 from the vendor: customer … exists",
        ),
        ("HTTP 409: phone +48 600 100 200 is taken", "HTTP 409: phone … is taken"),
        # what says what to fix stays
        (
            "attribute 'email' is required (it maps to 'email')",
            "attribute 'email' is required (it maps to 'email')",
        ),
        ("HTTP 503 after 5 attempts (timeout 30 s)", "HTTP 503 after 5 attempts (timeout 30 s)"),
    ],
)
def test_values_are_masked_and_what_to_fix_stays(text: str, expected: str) -> None:
    assert masked(text) == expected
