"""Convertlab DM Hub (seeds 000 and 003): customers, list memberships and events, with a shared token."""

from forwarder.integrations.dmhub.client import DmHubClient, DmHubError
from forwarder.integrations.dmhub.integration import DmHub, DmHubSettings

__all__ = ["DmHub", "DmHubClient", "DmHubError", "DmHubSettings"]
