"""The configuration document: clients, group keys, integrations and their mappings."""

from forwarder.config.hooks import HookConfig
from forwarder.config.loader import ConfigError, load_config, load_config_text
from forwarder.config.models import ClientConfig, ForwarderConfig, GroupKeyConfig, IntegrationConfig

__all__ = [
    "ClientConfig",
    "ConfigError",
    "ForwarderConfig",
    "GroupKeyConfig",
    "HookConfig",
    "IntegrationConfig",
    "load_config",
    "load_config_text",
]
