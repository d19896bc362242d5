"""refresh tokens: keep each integration's credentials usable before deliveries need them.

For token vendors (DM Hub, CareCloud) a token that expires within ``token_refresh_margin_seconds`` (longer
than the schedule's period) is renewed through ``TokenKeeper``: under the token's lock, stored as a new
secret version, so deliveries never fetch a token per record. For every integration it also checks that its
secret exists and holds the keys the integration needs, so a missing or broken secret is reported by the
schedule (the ``CredentialProblems`` metric, alarmed on) before deliveries pile up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forwarder.config import IntegrationConfig
from forwarder.integrations.base import Budget, CredentialsError, TokenError
from forwarder.observability import logger
from forwarder.ports.locks import LockError
from forwarder.ports.secrets import SecretStoreError
from forwarder.runtime import Services
from forwarder.tokens import TokenUnavailable

if TYPE_CHECKING:
    pass


@dataclass
class RefreshReport:
    checked: int = 0
    refreshed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # no time left in this run: the next run checks them

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "refreshed": self.refreshed,
            "problems": self.problems,
            "skipped": self.skipped,
        }


def _worst_case_seconds(config: IntegrationConfig, wait_seconds: float) -> float:
    """The longest checking one secret can take: for a token vendor, a token call (connect + its read timeout)
    and the wait for another process's renewal. No renewal starts that the invocation could not finish: one
    cut short after the vendor issued a token but before it was stored would leave DM Hub's old token
    invalid for everyone."""
    if not config.integration.uses_tokens:
        return 1.0
    return 3.05 + float(getattr(config.parsed_settings, "timeout_seconds", 20.0)) + wait_seconds


def refresh_all(services: Services, context: Any = None) -> RefreshReport:
    """Check every integration's secret and renew the tokens that expire within the margin; ``context`` (the
    Lambda context) bounds the run by the invocation's remaining time."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    budget = Budget.from_remaining_ms(remaining() if callable(remaining) else None)
    report = RefreshReport()
    keeper = services.token_keeper()
    margin = services.settings.token_refresh_margin_seconds
    seen: set[str] = set()
    for group_key, group in services.config.group_keys.items():
        for config in group.integrations:
            if not config.enabled or not config.secret or config.secret in seen:
                continue
            if not budget.allows(_worst_case_seconds(config, services.settings.token_wait_seconds)):
                report.skipped.append(f"{group_key}/{config.name} (secret '{config.secret}')")
                continue
            seen.add(config.secret)
            report.checked += 1
            where = f"{group_key}/{config.name} (secret '{config.secret}')"
            problem = services.settings.secret_outside_prefix(config.secret)
            if problem is None:
                import requests  # deferred: importing requests costs cold starts that send nothing

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
    if report.skipped:
        logger.warning(
            "refresh ran out of time; the next run checks the rest", extra={"skipped": report.skipped}
        )
    logger.info("refresh finished", extra={"checked": report.checked, "refreshed": len(report.refreshed)})
    return report
