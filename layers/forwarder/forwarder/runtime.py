"""Runtime settings (parsed once from the environment) and the services the flows use.

Handlers call ``services()``: on AWS it builds the AWS adapters lazily from the environment; the embedded
stack ``install``s its own (durable local queues, local secret store) before it invokes any handler.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import requests
from pydantic import BaseModel, Field

from forwarder.config import ForwarderConfig, load_config
from forwarder.ports import DeletionLedger, LockPort, QueuePort, SecretsPort
from forwarder.tokens import TokenKeeper

_ENV_PREFIX = "FORWARDER_"


class RuntimeSettings(BaseModel):
    """Every knob the flows read, from ``FORWARDER_*`` environment variables."""

    runtime: Literal["aws", "embedded"] = "aws"
    config_path: str = "/opt/forwarder.yaml"
    max_body_bytes: int = Field(240 * 1024, ge=1024, description="leaves room in a 256 KiB SQS message")
    max_message_bytes: int = Field(
        256 * 1024, ge=1024, description="the queue's message size limit (SQS: 256 KiB)"
    )
    delivery_max_receives: int = Field(5, ge=1, description="the delivery queue's maxReceiveCount")
    retry_base_seconds: float = Field(10.0, gt=0)
    retry_max_seconds: float = Field(900.0, gt=0, le=43200)
    secrets_max_age_seconds: int = Field(300, ge=0)
    vendor_timeout_seconds: float = Field(10.0, gt=0)
    secrets_prefix: str = Field("", description="the functions may read only secrets named with this prefix")
    token_refresh_margin_seconds: float = Field(
        1800.0, ge=0, description="the schedule renews a token expiring within this margin (> its period)"
    )
    token_wait_seconds: float = Field(
        5.0, ge=0, description="how long a delivery waits for another's refresh"
    )

    def secret_outside_prefix(self, name: str) -> str | None:
        """Why a secret cannot be read under this deployment's policy, or None when it can."""
        if self.secrets_prefix and not name.startswith(self.secrets_prefix):
            return (
                f"secret '{name}' is outside the prefix '{self.secrets_prefix}' the functions may read; "
                "rename it or deploy with a matching SecretsPrefix"
            )
        return None

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = os.environ if env is None else env
        values = {
            name: env[_ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if _ENV_PREFIX + name.upper() in env
        }
        return cls.model_validate(values)


@dataclass
class Services:
    settings: RuntimeSettings
    queues: QueuePort
    secrets: SecretsPort
    ledger: DeletionLedger | None = None
    http: requests.Session = field(default_factory=requests.Session)
    clock: Callable[[], float] = time.time
    locks: LockPort | None = None

    @property
    def config(self) -> ForwarderConfig:
        return load_config(self.settings.config_path)

    def token_keeper(self) -> TokenKeeper:
        return TokenKeeper(
            self.secrets,
            self.locks,
            self.http,
            clock=self.clock,
            wait_seconds=self.settings.token_wait_seconds,
        )


_lock = threading.Lock()
_services: Services | None = None


def install(services: Services | None) -> None:
    """Use these services for every handler call in this process (the embedded stack and tests do this)."""
    global _services
    with _lock:
        _services = services


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            settings = RuntimeSettings.from_environment()
            if settings.runtime != "aws":
                raise RuntimeError("embedded runtime: the embedded stack must install its services first")
            from forwarder.adapters.aws import (
                DynamoDbDeletionLedger,
                DynamoDbLocks,
                SecretsManagerSecrets,
                SqsQueues,
            )

            _services = Services(
                settings=settings,
                queues=SqsQueues.from_environment(os.environ),
                secrets=SecretsManagerSecrets(),
                # Required: without it deletes would silently stop being final (raises naming the variable).
                ledger=DynamoDbDeletionLedger.from_environment(os.environ),
                locks=DynamoDbLocks.from_environment(os.environ),
            )
        return _services
