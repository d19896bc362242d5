"""The reason category on deliver's retry, wait and dead-letter lines: one word per cause, whatever the
vendor said (timeouts and credential failures have no vendor status to tell them apart)."""

from __future__ import annotations

import pytest

from forwarder.flows.deliver import reason_category
from forwarder.integrations.base import NOT_ATTEMPTED, Outcome, Verdict


@pytest.mark.parametrize(
    ("outcome", "category"),
    [
        (Outcome.delivered(200), "delivered"),
        (Outcome(Verdict.SUPERSEDED, "superseded: a later delete"), "superseded"),
        (Outcome.rejected("bad e-mail", status=400), "vendor_rejected"),
        (Outcome.rejected("field 'email' is required"), "invalid_for_vendor"),
        (Outcome.refused_token("token refused", status=401), "credentials"),
        (Outcome.retry("credentials unavailable: no secret"), "credentials"),
        (Outcome.held("no usable CRM CareCloud token: refused"), "credentials"),
        (Outcome.retry(NOT_ATTEMPTED), "out_of_time"),
        (Outcome.retry("the delivery log is unavailable: throttled"), "store_unavailable"),
        (Outcome.held("rate limited: at most 5 requests/s to X", retry_after=1), "rate_limited"),
        (Outcome.held("X is down (the circuit is open); waiting for it", retry_after=60), "vendor_down"),
        (Outcome.unavailable("throttled", status=429), "throttled"),
        (Outcome.unavailable("timeout talking to the vendor (ReadTimeout)", ambiguous=True), "no_answer"),
        (Outcome.unavailable("gateway timeout", status=504), "no_answer"),
        (Outcome.unavailable("server error", status=503), "vendor_error"),
        (Outcome.unavailable("could not connect to the vendor (ConnectTimeout)"), "unreachable"),
    ],
)
def test_each_cause_has_its_category(outcome: Outcome, category: str) -> None:
    assert reason_category(outcome) == category
