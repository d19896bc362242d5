"""validate: IngestQueue -> mapping and field checks -> DeliveryQueue / rejects trail."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from forwarder.flows.validate import handle_batch
from forwarder.observability import logger, metrics
from forwarder.runtime import services


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handle_batch(services(), event, context)
