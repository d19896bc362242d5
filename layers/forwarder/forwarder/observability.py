"""Logger, Tracer and Metrics, set up once. Records hold personal data: log ids and reasons, never data."""

from __future__ import annotations

from collections import Counter

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

logger = Logger(service="forwarder")
tracer = Tracer(service="forwarder")
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
