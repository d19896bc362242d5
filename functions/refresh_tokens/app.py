"""refresh tokens: scheduled; keeps vendor credentials fresh in the secret store."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from forwarder.flows.refresh_tokens import refresh_all
from forwarder.observability import CREDENTIAL_PROBLEMS, logger, metrics
from forwarder.runtime import services


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = refresh_all(services(), context)
    metrics.add_metric(name=CREDENTIAL_PROBLEMS, unit="Count", value=len(report.problems))
    return report.as_dict()
