"""Ports: the abstract stores and queues the flows depend on. Adapters (AWS, embedded) implement them."""

from forwarder.ports.deliveries import (
    DeliveryKey,
    DeliveryLog,
    DeliveryLogError,
    DeliveryRecord,
    DeliveryState,
)
from forwarder.ports.ledger import DeletionLedger, LedgerError
from forwarder.ports.locks import LockError, LockPort
from forwarder.ports.queues import OutgoingMessage, QueuePort
from forwarder.ports.secrets import SecretNotFoundError, SecretsPort, SecretStoreError

__all__ = [
    "DeletionLedger",
    "DeliveryKey",
    "DeliveryLog",
    "DeliveryLogError",
    "DeliveryRecord",
    "DeliveryState",
    "LedgerError",
    "LockError",
    "LockPort",
    "OutgoingMessage",
    "QueuePort",
    "SecretNotFoundError",
    "SecretStoreError",
    "SecretsPort",
]
