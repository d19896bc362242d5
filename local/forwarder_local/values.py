"""What typed text becomes as an attribute's value: a ``--set ATTR=VALUE`` and a backfill file's CSV cell."""

from __future__ import annotations

import json
from typing import Any


def parse_set_value(text: str) -> Any:
    """A JSON list, ``true``, ``false`` or ``null`` as such; anything else is text, so that a phone number or a
    zip code with a leading zero stays exactly as typed (never a number)."""
    stripped = text.strip()
    if stripped in ("true", "false", "null") or stripped.startswith("["):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text
