"""The flows' CloudWatch metrics, as the Lambda handlers write them: Embedded Metric Format documents on
stdout, which CloudWatch Logs turns into metrics. Captured here from the handlers run in-process on the
canonical events, on the same local parts as tests/integration/test_handlers.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from forwarder.observability import (
    DELIVERY_LATENCY,
    RECORDS_REJECTED,
    REQUESTS_ACCEPTED,
    REQUESTS_REFUSED,
    count_refused,
)
from forwarder_local.poller import sqs_event
from tests.conftest import load_event
from tests.integration.test_handlers import World, invoke, sandbox, world

__all__ = ["sandbox", "world"]  # fixtures shared with test_handlers


@pytest.fixture
def emf(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Metrics on (tests run with them off), and a reader of the EMF documents written since the last read."""
    from forwarder.observability import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    capsys.readouterr()

    def documents() -> list[dict[str, Any]]:
        found = []
        for line in capsys.readouterr().out.splitlines():
            try:
                document = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(document, dict) and "_aws" in document:
                found.append(document)
        return found

    yield documents
    metrics.clear_metrics()


def series(documents: list[dict[str, Any]], name: str) -> list[tuple[dict[str, str], list[float]]]:
    """(dimensions, values) of each document that carries metric ``name``, as CloudWatch would read them."""
    found = []
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            if any(metric["Name"] == name for metric in directive["Metrics"]):
                assert directive["Namespace"] == "Forwarder"
                (dimension_names,) = directive["Dimensions"]
                values = document[name]
                found.append(
                    (
                        {key: document[key] for key in dimension_names},
                        values if isinstance(values, list) else [values],
                    )
                )
    return found


def test_ingest_counts_an_accepted_request(world: World, emf: Any) -> None:
    # when a signed request is accepted
    assert invoke("ingest", load_event("api_post_contacts.json"))["statusCode"] == 202
    # then one RequestsAccepted is written, with the service as its only dimension
    assert series(emf(), REQUESTS_ACCEPTED) == [({"service": "forwarder"}, [1.0])]


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (load_event("api_post_contacts_nested.json"), "NESTED_ATTRIBUTE"),
        (
            {
                **load_event("api_post_contacts.json"),
                "requestContext": {
                    **load_event("api_post_contacts.json")["requestContext"],
                    "identity": {
                        "accessKey": "AKIASOMEONEELSE00000",
                        "userArn": "arn:aws:iam::000000000000:user/someone-else",
                    },
                },
            },
            "ACCESS_DENIED",
        ),
    ],
    ids=["nested-data", "unknown-caller"],
)
def test_ingest_counts_a_refusal_by_its_code_and_nothing_of_the_request(
    world: World, emf: Any, event: dict[str, Any], code: str
) -> None:
    # when a request is refused
    response = invoke("ingest", event)
    assert json.loads(response["body"])["code"] == code
    # then RequestsRefused is counted under the answer's code, and nothing is counted as accepted
    documents = emf()
    assert series(documents, REQUESTS_REFUSED) == [({"code": code, "service": "forwarder"}, [1.0])]
    assert series(documents, REQUESTS_ACCEPTED) == []
    # and the metrics carry no group key, client or record value (their dimensions stay bounded)
    written = json.dumps(documents)
    for value in ("demo", "jane@example.com", "someone-else", "AKIASOMEONEELSE00000"):
        assert value not in written


def test_a_refusal_code_outside_the_vocabulary_is_counted_as_other(emf: Any) -> None:
    # a message passed by mistake instead of a code must not become a new dimension value per request
    count_refused("group key 'acme' does not exist")
    assert series(emf(), REQUESTS_REFUSED) == [({"code": "OTHER", "service": "forwarder"}, [1.0])]


def test_validate_counts_rejections_per_integration(world: World, emf: Any) -> None:
    # given the canonical ingest batch: one record maps, the other has no e-mail (required by ExpertSender)
    assert invoke("validate", load_event("sqs_ingest.json")) == {"batchItemFailures": []}
    # then one RecordsRejected is counted for the integration that rejected it
    assert series(emf(), RECORDS_REJECTED) == [
        ({"integration": "expertsender", "service": "forwarder"}, [1.0])
    ]


def test_validate_counts_nothing_when_the_rejects_trail_cannot_be_written(
    world: World, emf: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forwarder.ports.queues import QueueError
    from forwarder_local.stores import EmbeddedQueues

    # given a rejects trail that refuses writes: the record is retried, and counted when it is rejected then
    send = EmbeddedQueues.send

    def refuse_rejects(self: EmbeddedQueues, queue: str, messages: Any) -> Any:
        if queue == "rejects":
            raise QueueError("rejects trail unavailable")
        return send(self, queue, messages)

    monkeypatch.setattr(EmbeddedQueues, "send", refuse_rejects)
    response = invoke("validate", load_event("sqs_ingest.json"))
    assert len(response["batchItemFailures"]) == 1
    assert series(emf(), RECORDS_REJECTED) == []


def test_deliver_reports_the_latency_from_acceptance_to_delivery_per_integration(
    world: World, emf: Any
) -> None:
    # given a delivery of a request accepted 90 seconds ago
    body = json.loads(load_event("sqs_delivery.json")["Records"][0]["body"])
    accepted = datetime.now(UTC) - timedelta(seconds=90)
    body["received_at"] = accepted.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    world.store.send("delivery", json.dumps(body), group_id="customer-jane")
    event = sqs_event(world.store.queue_arn("delivery"), world.store.receive("delivery", max_messages=10))
    # when it is delivered
    assert invoke("deliver", event) == {"batchItemFailures": []}
    # then its latency is reported in seconds for its integration, counted from acceptance, not from now
    documents = emf()
    [(dimensions, [latency])] = series(documents, DELIVERY_LATENCY)
    assert dimensions == {"integration": "expertsender", "service": "forwarder"}
    assert 90 <= latency < 90 + 600
    # and the outcome is counted under the dimensions the dashboard and the alarms search
    assert series(documents, "DeliveriesDelivered") == [
        ({"integration": "expertsender", "service": "forwarder"}, [1.0])
    ]
    unit = next(
        metric["Unit"]
        for document in documents
        for directive in document["_aws"]["CloudWatchMetrics"]
        for metric in directive["Metrics"]
        if metric["Name"] == DELIVERY_LATENCY
    )
    assert unit == "Seconds"


def test_deliver_reports_no_latency_for_a_delivery_that_will_be_retried(world: World, emf: Any) -> None:
    # given the vendor failing the request
    world.sandbox.inject(status=503, times=1)
    body = load_event("sqs_delivery.json")["Records"][0]["body"]
    world.store.send("delivery", body, group_id="customer-jane")
    event = sqs_event(world.store.queue_arn("delivery"), world.store.receive("delivery", max_messages=10))
    # when deliver reports it failed, then no latency is reported (it is not delivered yet)
    assert len(invoke("deliver", event)["batchItemFailures"]) == 1
    assert series(emf(), DELIVERY_LATENCY) == []


def test_sources_count_producer_records_queued_and_refused_by_code(tmp_path: Any, emf: Any) -> None:
    from tests.integration.test_sources_handler import PRODUCER_EVENT, producer_message
    from tests.integration.test_sources_handler import World as SourcesWorld
    from tests.integration.test_sources_handler import invoke as handle

    world = SourcesWorld(tmp_path)
    try:
        # given the canonical producer batch (two records queued), then a message of an unknown producer
        assert handle(PRODUCER_EVENT) == {"batchItemFailures": []}
        unknown = producer_message(
            {"group_key": "demo", "data": {"email": "x@example.com"}},
            source="nobody",
            action="upsert_contact",
        )
        assert handle(unknown) == {"batchItemFailures": []}
    finally:
        world.store.close()
    # then the queued ones count as accepted, the refused one under its code, as at the API
    documents = emf()
    assert series(documents, REQUESTS_ACCEPTED) == [({"service": "forwarder"}, [1.0, 1.0])]
    assert series(documents, REQUESTS_REFUSED) == [
        ({"code": "UNKNOWN_SOURCE", "service": "forwarder"}, [1.0])
    ]


def test_the_outcomes_of_one_integration_share_one_document(emf: Any) -> None:
    from collections import Counter

    from forwarder.observability import emit_counts

    emit_counts(Counter({("dmhub", "delivered"): 3, ("dmhub", "dead_lettered"): 1, ("carecloud", "held"): 2}))
    documents = emf()
    assert len(documents) == 2
    assert series(documents, "DeliveriesDelivered") == [
        ({"integration": "dmhub", "service": "forwarder"}, [3.0])
    ]
    assert series(documents, "DeliveriesDeadLettered") == [
        ({"integration": "dmhub", "service": "forwarder"}, [1.0])
    ]
    assert series(documents, "DeliveriesHeld") == [
        ({"integration": "carecloud", "service": "forwarder"}, [2.0])
    ]


def test_every_outcome_deliver_returns_is_one_the_dashboard_graphs() -> None:
    # the outcomes are the literals deliver's code returns and counts: each must be in DELIVERY_OUTCOMES
    import re
    from pathlib import Path

    from forwarder.flows import deliver
    from forwarder.observability import DELIVERY_OUTCOMES

    source = Path(deliver.__file__).read_text()
    returned = set(re.findall(r'return \(?"([a-z_]+)", ', source))
    returned |= set(re.findall(r'\("([a-z_]+)", 0\)', source))
    returned |= set(re.findall(r'counts\[\(item\.delivery\.integration, "([a-z_]+)"\)\]', source))
    assert returned, "the pattern found deliver's outcomes"
    assert returned <= set(DELIVERY_OUTCOMES), returned - set(DELIVERY_OUTCOMES)
