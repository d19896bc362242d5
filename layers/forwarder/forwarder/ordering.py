"""Per-customer order: the FIFO message groups the ingest and delivery queues put records in.

A customer's requests take effect at each vendor in the order they were received. The queues between the
flows are FIFO queues, and a record's message group is its customer:

* on the **ingest** queue, the group key and the customer as the group key's first integration that can
  identify them sees them (the mapped, normalised identity, e.g. ``email:jane@example.com``), so validate
  handles one customer's requests in the order ingest accepted them;
* on the **delivery** queue, the group key, the integration and the customer as that integration matches
  them, so deliver applies them in that order, and a customer whose delivery is backing off holds up only
  their own later deliveries.

Group ids are hashes: customer identifiers are personal data and stay out of queue metadata. A record that
identifies no customer gets a group of its own (nothing to order it against).
"""

from __future__ import annotations

import hashlib

from forwarder.config import GroupKeyConfig, IntegrationConfig
from forwarder.contract import Action, FlatData
from forwarder.integrations.base import RecordInvalid
from forwarder.mapping import MappingError
from forwarder.messages import DeliveryMessage


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def deduplication_id(text: str) -> str:
    """An SQS deduplication id (<= 128 characters of a safe alphabet) for any text."""
    return _digest(text)


def delivery_group(integration: IntegrationConfig, delivery: DeliveryMessage) -> str:
    key = integration.integration.customer_key(
        delivery.operation, delivery.payload, integration.parsed_settings
    )
    if key is None:
        return _digest(f"delivery/{delivery.delivery_id}")
    return _digest(f"{delivery.group_key}/{delivery.integration}/{key}")


def ingest_group(
    group: GroupKeyConfig, group_key: str, action: Action, data: FlatData, request_id: str
) -> str:
    """The ingest queue's message group: the customer as the group key's first integration identifies them,
    read through its contacts mapping whatever the request's action (so a customer's upserts, deletes and
    events share one group), else through the action's own mapping. Costs a mapping or two (microseconds)."""
    for integration in group.integrations:
        if not integration.enabled:
            continue
        for flow_action in dict.fromkeys((Action.UPSERT_CONTACT, action)):
            key = _customer_key(integration, flow_action, data)
            if key is not None:
                return _digest(f"{group_key}/{integration.name}/{key}")
    return _digest(f"request/{request_id}")


def _customer_key(integration: IntegrationConfig, action: Action, data: FlatData) -> str | None:
    operation = integration.operation(action)
    if operation is None:
        return None
    try:
        mapped = integration.map(action, data)
        payload = integration.integration.prepare(operation, mapped, integration.parsed_settings)
    except (MappingError, RecordInvalid):
        return None
    return integration.integration.customer_key(operation, payload, integration.parsed_settings)
