"""Integrations: one package per vendor, each declaring its settings, actions and delivery."""

from forwarder.integrations.base import ActionSpec, FieldSpec, Integration, Outcome, RecordInvalid, Verdict
from forwarder.integrations.registry import get_integration, integrations

__all__ = [
    "ActionSpec",
    "FieldSpec",
    "Integration",
    "Outcome",
    "RecordInvalid",
    "Verdict",
    "get_integration",
    "integrations",
]
