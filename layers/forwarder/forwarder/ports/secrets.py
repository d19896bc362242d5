"""The secrets port: credentials and tokens by name, never in config or code."""

from __future__ import annotations

import abc
from typing import Any


class SecretStoreError(Exception):
    """The secret store could not be reached or refused the operation."""


class SecretNotFoundError(SecretStoreError):
    """No secret has that name."""


class SecretsPort(abc.ABC):
    """Secrets are JSON objects addressed by name (a Secrets Manager secret id)."""

    @abc.abstractmethod
    def get(self, name: str, *, max_age_seconds: int = 300) -> dict[str, Any]:
        """Return the secret's JSON object, from a cache younger than ``max_age_seconds`` when there is one."""

    @abc.abstractmethod
    def put(self, name: str, value: dict[str, Any]) -> None:
        """Store a new version of the secret (token refresh writes here)."""
