"""The configuration document: clients, group keys, integrations and their mappings."""

from forwarder.config.hooks import HookConfig
from forwarder.config.loader import ConfigError, load_config, load_config_text
from forwarder.config.models import ClientConfig, ForwarderConfig, GroupKeyConfig, IntegrationConfig
from forwarder.config.sources import SourceConfig

__all__ = [
    "ClientConfig",
    "ConfigError",
    "ForwarderConfig",
    "GroupKeyConfig",
    "HookConfig",
    "IntegrationConfig",
    "SourceConfig",
    "load_config",
    "load_config_text",
]
