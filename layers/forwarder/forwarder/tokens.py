"""Vendor session tokens: one token per vendor application, shared by every delivery, fetched under a lock.

A token lives in the integration's secret beside the credentials it is fetched with (a new secret version
each time). Deliveries read it through the secret cache. When it is missing or about to expire, or when the
vendor refuses it (401, or DM Hub's token error codes), ``TokenKeeper.renew`` first re-reads the stored
secret: another container may have refreshed it already. Only when the stored token is still the one that
failed does it take the token's lease lock (DynamoDB on AWS, SQLite embedded), read once more, fetch one new
token and store it. Whoever does not get the lock waits a few seconds for the holder's token. So a thousand
deliveries hitting the same 401 cause one token request, and DM Hub's one-active-token rule (a new token
invalidates the old one) never makes containers take tokens from each other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forwarder.config import IntegrationConfig
from forwarder.integrations.base import TokenError
from forwarder.observability import logger
from forwarder.ports.locks import LockError, LockPort
from forwarder.ports.secrets import SecretsPort

if TYPE_CHECKING:
    import requests


class TokenUnavailable(Exception):
    """No usable token right now (another process is still refreshing it); the delivery waits and retries."""


@dataclass
class TokenKeeper:
    secrets: SecretsPort
    locks: LockPort | None
    http: requests.Session
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    #: Deliveries renew a token that expires within this margin (the schedule renews long before).
    delivery_margin_seconds: float = 60.0
    #: How long a delivery waits for another process's refresh before it gives up for now.
    wait_seconds: float = 5.0
    lease_seconds: float = 30.0
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)

    def fresh(self, config: IntegrationConfig, credentials: dict[str, Any], margin: float) -> bool:
        """The credentials hold a token that will not expire within ``margin`` seconds."""
        integration = config.integration
        if not integration.token(credentials):
            return False
        expires_at = integration.token_expires_at(credentials)
        return expires_at is None or expires_at - margin > self.clock()

    def usable(self, config: IntegrationConfig, credentials: dict[str, Any]) -> dict[str, Any]:
        """Credentials with a token a delivery may use now: these ones, or renewed ones."""
        if not config.integration.uses_tokens or self.fresh(
            config, credentials, self.delivery_margin_seconds
        ):
            return credentials
        return self.renew(config, stale=config.integration.token(credentials), reason="expiring")

    def renew(
        self, config: IntegrationConfig, stale: str | None, reason: str, margin: float | None = None
    ) -> dict[str, Any]:
        """Credentials whose token is not ``stale`` and not expiring within ``margin``: the stored ones when
        another process renewed them already, otherwise fetched once under the token's lock."""
        assert config.secret is not None
        margin = self.delivery_margin_seconds if margin is None else margin
        integration = config.integration
        stored = self.secrets.get(config.secret, max_age_seconds=0)
        if integration.token(stored) != stale and self.fresh(config, stored, margin):
            return stored
        lock = f"token/{config.secret}"
        if self.locks is not None and not self._acquire(lock):
            return self._wait_for_other(config, stale, margin)
        try:
            stored = self.secrets.get(config.secret, max_age_seconds=0)
            if integration.token(stored) != stale and self.fresh(config, stored, margin):
                return stored
            integration.check_credentials(stored)
            fields = integration.fetch_token(config.parsed_settings, stored, self.http)
            renewed = {**stored, **fields}
            self.secrets.put(config.secret, renewed)
            logger.info(
                "token renewed",
                extra={"integration": config.name, "secret": config.secret, "reason": reason},
            )
            return renewed
        finally:
            if self.locks is not None:
                try:
                    self.locks.release(lock, self.owner)
                except LockError as error:  # the lease runs out by itself
                    logger.warning("could not release a token lock", extra={"error": str(error)})

    def _acquire(self, lock: str) -> bool:
        """Take the token's lease; a lock store that fails raises LockError: a credential problem of its own
        (counted and alarmed on), never a silent wait."""
        assert self.locks is not None
        return self.locks.acquire(lock, self.owner, self.lease_seconds)

    def _wait_for_other(self, config: IntegrationConfig, stale: str | None, margin: float) -> dict[str, Any]:
        assert config.secret is not None
        deadline = self.clock() + self.wait_seconds
        while self.clock() < deadline:
            self.sleep(0.2)
            stored = self.secrets.get(config.secret, max_age_seconds=0)
            if config.integration.token(stored) != stale and self.fresh(config, stored, margin):
                return stored
        raise TokenUnavailable(
            f"another process is renewing the {config.integration.title} token; the delivery waits for it"
        )


__all__ = ["TokenError", "TokenKeeper", "TokenUnavailable"]
