"""``forwarder secrets set NAME``: put an integration's (or a hook's) secret in the embedded stack's secret store.

The value is read from a hidden prompt (one per key when the config says which keys the secret holds), or
from stdin when it is piped (``forwarder secrets set NAME < secret.json``); ``--value`` takes it from the
command line, which shell history keeps. The value must be a JSON object holding every key the integration
needs, each a non-empty string. Nothing here prints or logs a secret's value: messages name keys only.

The new value replaces the old one whole: a token the forwarder stored there is dropped (it is fetched again
with the new credentials), and an integration the stack had pointed at its sandbox now goes to the vendor its
settings (or the secret's own ``base_url``) name. The stack reads the store on every delivery: no restart.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

DEFAULT_STATE = Path(os.environ.get("FORWARDER_STATE_DIR", ".forwarder"))


def _users(config: Any, name: str) -> tuple[list[str], tuple[str, ...]]:
    """Who in the config uses the secret ``name`` (for messages) and the keys they need."""
    users: list[str] = []
    keys: list[str] = []
    for group_key, group in config.group_keys.items():
        for integration in group.integrations:
            if integration.secret == name:
                users.append(
                    f"integration '{integration.name}' ({integration.integration.title}) of '{group_key}'"
                )
                keys += [key for key in integration.integration.secret_keys if key not in keys]
    for hook_id, hook in config.hooks.items():
        if hook.secret == name:
            users.append(f"hook '{hook_id}'")
            keys += [] if "secret" in keys else ["secret"]
    return users, tuple(keys)


def _known_names(config: Any) -> list[str]:
    names = {
        integration.secret
        for group in config.group_keys.values()
        for integration in group.integrations
        if integration.secret
    }
    return sorted(names | {hook.secret for hook in config.hooks.values()})


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:  # the message gives a position, never the text
        raise click.ClickException(
            f"the secret from {where} is not JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise click.ClickException(f"the secret from {where} must be a JSON object of keys and values")
    return value


def _read_value(value: str | None, keys: tuple[str, ...]) -> dict[str, Any]:
    if value is not None:
        return _parse(value, "--value")
    if not sys.stdin.isatty():
        return _parse(sys.stdin.read(), "stdin")
    if keys:
        return {key: click.prompt(key, hide_input=True) for key in keys}
    return _parse(click.prompt("secret (a JSON object)", hide_input=True), "the prompt")


@click.group("secrets")
def secrets() -> None:
    """Secrets of the embedded stack's integrations and hooks (its secret store, secrets.json).

    \b
    Example:
      forwarder secrets set forwarder/demo/expertsender          # prompts for api_key, hidden
      forwarder secrets set forwarder/demo/dmhub < dmhub.json    # {"app_id": "...", "secret": "..."}
    """


@secrets.command("set")
@click.argument("name")
@click.option(
    "--value",
    help="the secret as a JSON object on the command line (shell history keeps it: prefer the prompt or stdin)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="the embedded stack's state folder (its secret store is secrets.json there)",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="config document naming the secret (default: the one the stack runs, else config/forwarder.yaml)",
)
def set_secret(name: str, value: str | None, state_dir: Path, config_path: Path | None) -> None:
    """Set the secret NAME (as the config names it) from a hidden prompt, stdin or --value.

    It must hold the keys the integration needs (ExpertSender: api_key; DM Hub: app_id, secret; CareCloud:
    external_application_id; a hook: secret). The value is never printed.

    \b
    Example:
      forwarder secrets set forwarder/demo/expertsender
      echo '{"external_application_id": "..."}' | forwarder secrets set forwarder/demo/carecloud
    """
    from forwarder.config import ConfigError, load_config
    from forwarder_local.cli import _stack_config
    from forwarder_local.stack import DEFAULT_CONFIG
    from forwarder_local.stores import LocalSecretStore

    path = config_path or _stack_config(state_dir) or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as error:
        raise click.ClickException("\n".join([f"invalid config {error.source}:", *error.problems])) from None
    users, keys = _users(config, name)
    if not users:
        known = ", ".join(_known_names(config)) or "none"
        raise click.ClickException(
            f"no integration or hook of {path} uses a secret '{name}' (known: {known})"
        )
    secret = _read_value(value, keys)
    missing = [key for key in keys if not (isinstance(secret.get(key), str) and secret[key].strip())]
    if missing:
        raise click.ClickException(
            f"the secret '{name}' needs {', '.join(keys)} (each a non-empty string); missing or empty: "
            f"{', '.join(missing)}. Nothing was stored."
        )
    if any(user.startswith("hook ") for user in users) and "created_at" not in secret:
        # as `forwarder hooks create` stores a hook's secret: `hooks list` shows since when it is active
        from forwarder_local.hooks_cli import _now

        secret = {**secret, "created_at": _now()}
    state_dir.mkdir(parents=True, exist_ok=True)
    LocalSecretStore(state_dir / "secrets.json").put(name, secret)
    click.echo(
        f"stored secret '{name}' (keys: {', '.join(sorted(secret))}) in {state_dir / 'secrets.json'}, "
        f"used by {'; '.join(users)}"
    )
    click.echo("a running stack uses it from its next delivery (no restart)")
    if value is not None:
        click.echo("(the value is in your shell history: --value is for scripts)", err=True)
