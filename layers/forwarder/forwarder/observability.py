"""Logger and Metrics, set up once. Records hold personal data: log ids and reasons, never data."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
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


def emit_counts(counts: Counter[tuple[str, str]], namespace: str = "Forwarder") -> None:
    """One metric per (integration, outcome) with the integration as a dimension: Deliveries<Outcome>."""
    if is_metrics_disabled():
        return
    for (integration, outcome), count in counts.items():
        with single_metric(
            name=f"Deliveries{outcome.title().replace('_', '')}",
            unit=MetricUnit.Count,
            value=count,
            namespace=namespace,
            default_dimensions={"integration": integration},
        ):
            pass


def count_credential_problem(integration: str) -> None:
    """One ``CredentialProblems`` (the metric an alarm watches; the refresh schedule emits it too)."""
    if is_metrics_disabled():
        return
    metrics.add_metric(name="CredentialProblems", unit=MetricUnit.Count, value=1)
