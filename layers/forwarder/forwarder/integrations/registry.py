"""The integrations the forwarder knows, by type name."""

from __future__ import annotations

from functools import cache

from forwarder.integrations.base import Integration


@cache
def integrations() -> dict[str, Integration]:
    from forwarder.integrations.carecloud import CareCloud
    from forwarder.integrations.dmhub import DmHub
    from forwarder.integrations.expertsender import ExpertSender

    known: list[Integration] = [ExpertSender(), DmHub(), CareCloud()]
    return {integration.type: integration for integration in known}


def get_integration(type_name: str) -> Integration:
    try:
        return integrations()[type_name]
    except KeyError:
        raise KeyError(
            f"unknown integration type '{type_name}'; known: {', '.join(sorted(integrations()))}"
        ) from None
