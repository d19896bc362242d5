"""refresh tokens: keep each integration's credentials usable before deliveries need them.

For token vendors (DM Hub, CareCloud) a token that expires within ``token_refresh_margin_seconds`` (longer
than the schedule's period) is renewed through ``TokenKeeper``: under the token's lock, stored as a new
secret version, so deliveries never fetch a token per record. For every integration it also checks that its
secret exists and holds the keys the integration needs, so a missing or broken secret is reported by the
schedule (the ``CredentialProblems`` metric, alarmed on) before deliveries pile up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from forwarder.integrations.base import CredentialsError, TokenError
from forwarder.observability import logger
from forwarder.ports.locks import LockError
from forwarder.ports.secrets import SecretStoreError
from forwarder.runtime import Services
from forwarder.tokens import TokenUnavailable


@dataclass
class RefreshReport:
    checked: int = 0
    refreshed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "refreshed": self.refreshed, "problems": self.problems}


def refresh_all(services: Services) -> RefreshReport:
    report = RefreshReport()
    keeper = services.token_keeper()
    margin = services.settings.token_refresh_margin_seconds
    seen: set[str] = set()
    for group_key, group in services.config.group_keys.items():
        for config in group.integrations:
            if not config.enabled or not config.secret or config.secret in seen:
                continue
            seen.add(config.secret)
            report.checked += 1
            where = f"{group_key}/{config.name} (secret '{config.secret}')"
            problem = services.settings.secret_outside_prefix(config.secret)
            if problem is None:
                try:
                    credentials = services.secrets.get(config.secret, max_age_seconds=0)
                    config.integration.check_credentials(credentials)
                    if config.integration.uses_tokens and not keeper.fresh(config, credentials, margin):
                        keeper.renew(
                            config, config.integration.token(credentials), reason="scheduled", margin=margin
                        )
                        report.refreshed.append(where)
                except (
                    SecretStoreError,
                    CredentialsError,
                    TokenError,
                    TokenUnavailable,
                    LockError,
                    requests.RequestException,
                ) as error:
                    problem = (
                        str(error)
                        if not isinstance(error, requests.RequestException)
                        else (f"the vendor could not be reached ({type(error).__name__})")
                    )
            if problem is not None:
                report.problems.append(f"{where}: {problem}")
                logger.error(
                    "credentials problem",
                    extra={"group_key": group_key, "integration": config.name, "problem": problem},
                )
    logger.info("refresh finished", extra={"checked": report.checked, "refreshed": len(report.refreshed)})
    return report
