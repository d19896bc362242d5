"""Ports: the abstract stores and queues the flows depend on. Adapters (AWS, embedded) implement them."""

from forwarder.ports.ledger import DeletionLedger, LedgerError
from forwarder.ports.locks import LockError, LockPort
from forwarder.ports.queues import OutgoingMessage, QueuePort
from forwarder.ports.secrets import SecretNotFoundError, SecretsPort, SecretStoreError

__all__ = [
    "DeletionLedger",
    "LedgerError",
    "LockError",
    "LockPort",
    "OutgoingMessage",
    "QueuePort",
    "SecretNotFoundError",
    "SecretStoreError",
    "SecretsPort",
]
