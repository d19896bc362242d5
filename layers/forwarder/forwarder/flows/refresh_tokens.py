"""refresh tokens: keep each integration's credentials usable before deliveries need them.

For token vendors the integration's ``refresh_credentials`` returns fresh credentials, stored as a new
secret version, so deliveries never fetch a token per record. For every integration it also checks that its
secret exists and holds the keys the integration needs, so a missing or broken secret is reported by the
schedule (and alarmed on) before deliveries pile up in retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from forwarder.integrations.base import CredentialsError
from forwarder.observability import logger
from forwarder.ports.secrets import SecretStoreError
from forwarder.runtime import Services


@dataclass
class RefreshReport:
    checked: int = 0
    refreshed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "refreshed": self.refreshed, "problems": self.problems}


def refresh_all(services: Services) -> RefreshReport:
    report = RefreshReport()
    seen: set[str] = set()
    for group_key, group in services.config.group_keys.items():
        for config in group.integrations:
            if not config.enabled or not config.secret or config.secret in seen:
                continue
            seen.add(config.secret)
            report.checked += 1
            where = f"{group_key}/{config.name} (secret '{config.secret}')"
            problem = services.settings.secret_outside_prefix(config.secret)
            if problem:
                report.problems.append(f"{where}: {problem}")
                continue
            try:
                credentials = services.secrets.get(config.secret, max_age_seconds=0)
                config.integration.check_credentials(credentials)
                fresh = config.integration.refresh_credentials(
                    config.parsed_settings, credentials, services.http
                )
                if fresh is not None:
                    services.secrets.put(config.secret, fresh)
                    report.refreshed.append(where)
            except (SecretStoreError, CredentialsError, requests.RequestException) as error:
                report.problems.append(f"{where}: {error}")
    for problem in report.problems:
        logger.error("credentials problem", extra={"problem": problem})
    logger.info("refresh finished", extra={"checked": report.checked, "refreshed": len(report.refreshed)})
    return report
