"""Logger and Metrics, set up once. Records hold personal data: log ids and reasons, never data."""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled


class RedactCredentials(logging.Filter):
    """Masks credentials in URLs that HTTP libraries log at DEBUG: DM Hub's v1 calls carry the token in the
    query string (``?access_token=``), and its token call the app secret."""

    _PARAMETER = re.compile(r"(?i)\b(access_token|secret|appid|app_id|token)=[^&\s\"']*")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._PARAMETER.sub(r"\1=***", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# urllib3 logs each request line (with its query string) and each retry (with the URL) at DEBUG.
for _name in ("urllib3.connectionpool", "urllib3.util.retry"):
    logging.getLogger(_name).addFilter(RedactCredentials())


class ForwarderLogger(Logger):
    """Powertools' Logger whose appended keys (the Lambda context, the correlation id) belong to the calling
    thread: the embedded stack runs many invocations at once in one process, and a shared key would put one
    request's id on another's lines. On AWS (one invocation per process at a time) nothing changes."""

    def append_keys(self, **additional_keys: object) -> None:
        self.thread_safe_append_keys(**additional_keys)

    def remove_keys(self, keys: Iterable[str]) -> None:
        self.thread_safe_remove_keys(list(keys))

    def get_current_keys(self) -> dict[str, Any]:
        return {**super().get_current_keys(), **self.thread_safe_get_current_keys()}

    def set_correlation_id(self, value: str | None) -> None:
        self.thread_safe_append_keys(correlation_id=value)

    def get_correlation_id(self) -> str | None:
        found = self.thread_safe_get_current_keys().get("correlation_id")
        return str(found) if found is not None else None


logger = ForwarderLogger(service="forwarder")


@contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Every line logged inside carries the record's ``request_id`` as its correlation id (the id a client
    got in its 202), in this thread only; the previous correlation id is restored after."""
    previous = logger.get_correlation_id()
    logger.set_correlation_id(request_id)
    try:
        yield
    finally:
        logger.set_correlation_id(previous)


# No Tracer: Lambda's active tracing records each invocation without an SDK, and botocore passes the trace
# header on to SQS, so a record's trace still spans the flows. Powertools' Tracer needs the X-Ray SDK, which
# brings a second botocore into the layer and ~200 ms into every cold start (docs/decisions.md).
metrics = Metrics(namespace="Forwarder", service="forwarder")
# An invocation that counted nothing (a batch of duplicates, a refresh with nothing due) is normal here, not
# worth Powertools' UserWarning on stderr at every such flush.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)


# The flows' metrics, in the ``Forwarder`` namespace with the ``service`` dimension. template.yaml's alarms and
# dashboard name them; tests/unit/test_template.py holds the template to these names. Dimensions stay
# bounded: a refusal code (a fixed vocabulary of the code), an integration's name (as many as the config
# has); never a group key, a client or anything from a record.
#: ingest and sources: requests (producers' records) queued; an Idempotency-Key answered again queues nothing.
REQUESTS_ACCEPTED = "RequestsAccepted"
#: ingest and sources: requests refused, by ``code`` (the answer's, or the producer rejection's).
REQUESTS_REFUSED = "RequestsRefused"
#: validate: records rejected for an integration (the mapping or the vendor's field rules), by ``integration``.
RECORDS_REJECTED = "RecordsRejected"
#: deliver: seconds from the request's acceptance (``received_at``) to its delivery, by ``integration``.
DELIVERY_LATENCY = "DeliveryLatency"
#: refresh tokens and deliver: a vendor credential or token that cannot be used or renewed.
CREDENTIAL_PROBLEMS = "CredentialProblems"
#: The dimension value for a rejection that concerns no single integration (e.g. none handles the action).
NO_INTEGRATION = "none"
#: The dimension value for a refusal code outside the code's vocabulary (never expected: a guard on cardinality).
OTHER_CODE = "OTHER"
_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,47}")


def count_accepted() -> None:
    """One ``RequestsAccepted``, flushed with the invocation's metrics (``@metrics.log_metrics``)."""
    if is_metrics_disabled():
        return
    metrics.add_metric(name=REQUESTS_ACCEPTED, unit=MetricUnit.Count, value=1)


def count_refused(code: str) -> None:
    """One ``RequestsRefused`` with the refusal's code as its dimension."""
    if is_metrics_disabled():
        return
    _emit(
        {"code": code if _CODE.fullmatch(code) else OTHER_CODE}, {REQUESTS_REFUSED: [1.0]}, MetricUnit.Count
    )


def emit_rejections(counts: Counter[str]) -> None:
    """``RecordsRejected`` per integration (``NO_INTEGRATION`` for a record no integration could take)."""
    if is_metrics_disabled():
        return
    for integration, count in counts.items():
        _emit({"integration": integration}, {RECORDS_REJECTED: [float(count)]}, MetricUnit.Count)


def emit_latencies(latencies: dict[str, list[float]]) -> None:
    """``DeliveryLatency`` per integration: one value per delivered delivery (CloudWatch keeps the
    distribution, so the dashboard shows percentiles)."""
    if is_metrics_disabled():
        return
    for integration, values in latencies.items():
        if values:
            _emit({"integration": integration}, {DELIVERY_LATENCY: values}, MetricUnit.Seconds)


#: Values of one metric per EMF document: EMF takes up to 100, and Powertools flushes by itself at the 100th.
_VALUES_PER_DOCUMENT = 99


def _emit(dimensions: dict[str, str], values: dict[str, list[float]], unit: MetricUnit) -> None:
    """EMF documents with their own dimensions, written now (the invocation's shared ``metrics`` has only the
    service dimension): the metrics that share the dimensions share a document."""
    longest = max((len(numbers) for numbers in values.values()), default=0)
    for start in range(0, longest, _VALUES_PER_DOCUMENT):
        document = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
        for name, value in dimensions.items():
            document.add_dimension(name=name, value=value)
        for metric, numbers in values.items():
            for number in numbers[start : start + _VALUES_PER_DOCUMENT]:
                document.add_metric(name=metric, unit=unit, value=number)
        document.flush_metrics()


#: What deliver counts per integration (``Deliveries<Outcome>``): each has its graph on the dashboard.
DELIVERY_OUTCOMES = (
    "delivered",
    "superseded",
    "rejected",
    "dead_lettered",
    "retrying",
    "held",
    "requeued",
    "unsettled",
    "waiting",
    "duplicate",
)


def delivery_metric(outcome: str) -> str:
    return f"Deliveries{outcome.title().replace('_', '')}"


def emit_counts(counts: Counter[tuple[str, str]]) -> None:
    """``Deliveries<Outcome>`` per integration (the integration as a dimension): one document per integration."""
    if is_metrics_disabled():
        return
    by_integration: dict[str, dict[str, list[float]]] = {}
    for (integration, outcome), count in counts.items():
        by_integration.setdefault(integration, {})[delivery_metric(outcome)] = [float(count)]
    for integration, values in by_integration.items():
        _emit({"integration": integration}, values, MetricUnit.Count)


def count_credential_problem(integration: str) -> None:
    """One ``CredentialProblems`` (the metric an alarm watches; the refresh schedule emits it too)."""
    if is_metrics_disabled():
        return
    metrics.add_metric(name=CREDENTIAL_PROBLEMS, unit=MetricUnit.Count, value=1)
