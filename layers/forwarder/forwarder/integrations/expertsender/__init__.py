"""ExpertSender CDP (seed 004): customers API with an ``x-api-key``."""

from forwarder.integrations.expertsender.integration import ExpertSender, ExpertSenderSettings

__all__ = ["ExpertSender", "ExpertSenderSettings"]
