"""When a delivery is retried: the vendor's Retry-After, and capped exponential backoff with jitter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from forwarder.flows.deliver import backoff_seconds
from forwarder.integrations.base import parse_retry_after

NOW = datetime(2025, 3, 14, 12, 0, 0, tzinfo=UTC)


# --- Retry-After ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0", 0.0), (" 120 ", 120.0), ("3600", 3600.0)])
def test_retry_after_in_seconds_is_read_as_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header, NOW) == seconds


def test_retry_after_as_an_http_date_is_the_time_until_that_date() -> None:
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)  # e.g. "Fri, 14 Mar 2025 12:01:30 GMT"

    assert parse_retry_after(header, NOW) == 90.0


def test_retry_after_as_an_http_date_with_an_offset_is_converted() -> None:
    # 13:02:00 at +01:00 is 12:02:00 UTC: two minutes from now
    assert parse_retry_after("Fri, 14 Mar 2025 13:02:00 +0100", NOW) == 120.0


def test_retry_after_in_the_past_means_now() -> None:
    header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)

    assert parse_retry_after(header, NOW) == 0.0


def test_retry_after_defaults_to_the_current_time() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)

    waited = parse_retry_after(header)

    assert waited is not None and 55.0 <= waited <= 60.0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5", "Friday"])
def test_retry_after_that_is_missing_or_unreadable_is_none(header: str | None) -> None:
    assert parse_retry_after(header, NOW) is None


# --- backoff -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("base", "cap"), [(2.0, 60.0), (1.0, 900.0), (5.0, 30.0)])
def test_backoff_stays_within_half_the_base_and_the_capped_exponential(base: float, cap: float) -> None:
    rng = random.Random(1234)
    for attempt in range(1, 16):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        draws = [backoff_seconds(attempt, base, cap, rng) for _ in range(500)]

        assert all(base / 2 <= draw <= ceiling for draw in draws), attempt
        assert max(draws) <= cap
        # full jitter: the draws spread over the interval rather than sitting at one end
        assert max(draws) - min(draws) > 0.8 * (ceiling - base / 2)


def test_backoff_grows_with_attempts_until_the_cap() -> None:
    base, cap = 2.0, 60.0
    # the same random draw for every attempt isolates the effect of the attempt number
    delays = [backoff_seconds(attempt, base, cap, random.Random(7)) for attempt in range(1, 10)]

    growing = delays[:5]  # 2, 4, 8, 16, 32: below the cap
    assert growing == sorted(growing) and len(set(growing)) == len(growing)
    assert delays[5:] == [delays[5]] * 4  # 64 and beyond are capped at 60: the same draw, the same delay
    assert max(delays) <= cap


def test_average_backoff_grows_with_attempts() -> None:
    rng = random.Random(99)
    means = [
        sum(backoff_seconds(attempt, 1.0, 1000.0, rng) for _ in range(2000)) / 2000 for attempt in range(1, 8)
    ]

    assert means == sorted(means)
    assert means[-1] > 10 * means[0]


def test_backoff_never_exceeds_a_cap_below_half_the_base() -> None:
    rng = random.Random(3)

    draws = [backoff_seconds(attempt, 10.0, 3.0, rng) for attempt in range(1, 6) for _ in range(100)]

    assert all(draw == 3.0 for draw in draws)


def test_backoff_without_a_generator_uses_the_module_random() -> None:
    draws = [backoff_seconds(3, 1.0, 100.0) for _ in range(200)]

    assert all(0.5 <= draw <= 4.0 for draw in draws)
    assert len(set(draws)) > 1
