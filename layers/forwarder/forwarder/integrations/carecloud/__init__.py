"""CRM CareCloud customer interface (seed 001, the published OpenAPI spec): customers, property and interest
records, with a session token."""

from forwarder.integrations.carecloud.integration import CareCloud, CareCloudSettings

__all__ = ["CareCloud", "CareCloudSettings"]
