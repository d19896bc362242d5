"""``forwarder hooks create|list|revoke``: the secrets of the config's web-form hooks.

A hook's secret is ``{"secret": "...", "created_at": "..."}`` in the secret store (the embedded stack's
``secrets.json``, or Secrets Manager with ``--aws``), under the name its config gives. ``create`` prints the
secret once (to the terminal only: nothing here logs it); ``revoke`` replaces it by ``{"revoked_at": ...}``,
after which the hook answers 410 (on AWS within a minute: warm functions cache a hook secret that long).
"""

from __future__ import annotations

import html
import json
import os
import secrets as random_secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the CLI starts without importing the forwarder package; each command imports what it uses
    from forwarder.config.hooks import HookConfig
    from forwarder.ports.secrets import SecretsPort

DEFAULT_STATE = Path(os.environ.get("FORWARDER_STATE_DIR", ".forwarder"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _config_hooks(config_path: Path | None, state_dir: Path) -> dict[str, HookConfig]:
    from forwarder.config import ConfigError, load_config
    from forwarder_local.cli import _stack_config
    from forwarder_local.stack import DEFAULT_CONFIG

    path = config_path or _stack_config(state_dir) or DEFAULT_CONFIG
    try:
        return dict(load_config(path).hooks)
    except ConfigError as error:
        raise click.ClickException("\n".join([f"invalid config {error.source}:", *error.problems])) from None


def _store(state_dir: Path, aws: bool, kms_key_id: str | None = None) -> SecretsPort:
    if aws:
        from forwarder.adapters.aws import SecretsManagerSecrets

        return SecretsManagerSecrets(kms_key_id=kms_key_id)
    from forwarder_local.stores import LocalSecretStore

    return LocalSecretStore(state_dir / "secrets.json")


def _read(store: SecretsPort, name: str) -> dict[str, Any] | None:
    from forwarder.ports.secrets import SecretNotFoundError, SecretStoreError

    try:
        return store.get(name, max_age_seconds=0)
    except SecretNotFoundError:
        return None
    except SecretStoreError as error:
        raise click.ClickException(f"cannot read the secret store: {error}") from None


def _hook(hooks: dict[str, HookConfig], hook_id: str) -> HookConfig:
    hook = hooks.get(hook_id)
    if hook is None:
        known = ", ".join(sorted(hooks)) or "none: add a 'hooks:' section"
        raise click.ClickException(f"the config has no hook '{hook_id}' (hooks: {known})")
    return hook


def _gateway_url(state_dir: Path) -> str:
    try:
        return str(json.loads((state_dir / "stack.json").read_text())["gateway"])
    except (OSError, ValueError, KeyError, TypeError):
        return "http://127.0.0.1:8080"


_common = [
    click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_STATE,
        show_default=True,
        help="the embedded stack's state folder (its secret store is secrets.json there)",
    ),
    click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="config document (default: the one the embedded stack runs, else config/forwarder.yaml)",
    ),
    click.option(
        "--aws", is_flag=True, help="use AWS Secrets Manager (AWS credentials from the environment)"
    ),
]


def _options(function: Any) -> Any:
    for option in reversed(_common):
        function = option(function)
    return function


@click.group("hooks")
def hooks() -> None:
    """Issue, list and revoke the secrets of web-form hooks (POST /v1/hooks/{hook_id}).

    \b
    Example:
      forwarder hooks list
      forwarder hooks create newsletter
    """


@hooks.command("create")
@click.argument("hook_id")
@click.option("--rotate", is_flag=True, help="replace an existing secret (the old one stops working)")
@click.option(
    "--url", default=None, help="the API's base URL to print in examples (default: the local gateway)"
)
@click.option(
    "--kms-key-id",
    envvar="FORWARDER_SECRETS_KMS_KEY_ID",
    default=None,
    help="with --aws: the KMS key a new secret is created under (the stack's KmsKeyArn; default AWS managed)",
)
@_options
def create(
    hook_id: str,
    rotate: bool,
    url: str | None,
    kms_key_id: str | None,
    state_dir: Path,
    config_path: Path | None,
    aws: bool,
) -> None:
    """Issue the hook's secret and print it once, with how to use it.

    \b
    Example:
      forwarder hooks create newsletter
      forwarder hooks create typeform-signup --rotate --aws
    """
    from forwarder.config.hooks import FormTokenAuth
    from forwarder.ports.secrets import SecretStoreError

    hook = _hook(_config_hooks(config_path, state_dir), hook_id)
    store = _store(state_dir, aws, kms_key_id)
    existing = _read(store, hook.secret)
    if existing and existing.get("secret") and not rotate:
        raise click.ClickException(
            f"hook '{hook_id}' has a secret already (since {existing.get('created_at', '?')}); "
            "--rotate replaces it, and the old one stops working"
        )
    value = random_secrets.token_urlsafe(32)
    try:
        store.put(hook.secret, {"secret": value, "created_at": _now()})
    except SecretStoreError as error:
        raise click.ClickException(f"cannot write the secret store: {error}") from None
    endpoint = f"{(url or _gateway_url(state_dir)).rstrip('/')}/v1/hooks/{hook_id}"
    click.echo(f"hook '{hook_id}': {hook.flow} of group key '{hook.group_key}' at POST {endpoint}")
    if isinstance(hook.auth, FormTokenAuth):
        auth = hook.auth
        click.echo("its token (shown this once; `forwarder hooks create --rotate` issues a new one):\n")
        click.echo(f"  {value}\n")
        click.echo("a form that posts to it:\n")
        honeypot = (
            f'  <input type="text" name="{auth.honeypot}" tabindex="-1" autocomplete="off" aria-hidden="true"'
            ' style="position:absolute;left:-9999px">\n'
            if auth.honeypot
            else ""
        )
        click.echo(
            f'<form method="post" action="{html.escape(endpoint)}" accept-charset="UTF-8">\n'
            f'  <input type="hidden" name="{auth.field}" value="{html.escape(value)}">\n'
            '  <input type="email" name="email" required>\n'
            f"{honeypot}"
            "  <button>Subscribe</button>\n</form>"
        )
        click.echo(f"\nfrom a page on {', '.join(auth.allowed_origins)}; afterwards it shows {auth.redirect}")
    else:
        click.echo(
            f"its signing secret (shown this once): paste it into the sender's webhook settings; it signs "
            f"with the '{hook.auth.header}' header:\n"
        )
        click.echo(f"  {value}")


@hooks.command("list")
@_options
def list_hooks(state_dir: Path, config_path: Path | None, aws: bool) -> None:
    """The config's hooks and whether each has a secret (never the secret itself).

    \b
    Example:
      forwarder hooks list --aws
    """
    configured = _config_hooks(config_path, state_dir)
    if not configured:
        click.echo("no hooks in the config (add a 'hooks:' section)")
        return
    store = _store(state_dir, aws)
    for hook_id, hook in sorted(configured.items()):
        stored = _read(store, hook.secret) or {}
        if stored.get("secret"):
            state = f"active since {stored.get('created_at', '?')}"
        elif stored.get("revoked_at"):
            state = f"revoked at {stored['revoked_at']}"
        else:
            state = f"no secret yet (forwarder hooks create {hook_id})"
        click.echo(
            f"{hook_id:<24} {hook.auth.kind:<10} {hook.flow:<8} group key {hook.group_key:<12} "
            f"POST /v1/hooks/{hook_id}   {state}"
        )


@hooks.command("revoke")
@click.argument("hook_id")
@_options
def revoke(hook_id: str, state_dir: Path, config_path: Path | None, aws: bool) -> None:
    """Make the hook refuse every post (410) until a new secret is created.

    \b
    Example:
      forwarder hooks revoke newsletter
    """
    from forwarder.ports.secrets import SecretStoreError

    hook = _hook(_config_hooks(config_path, state_dir), hook_id)
    try:
        _store(state_dir, aws).put(hook.secret, {"revoked_at": _now()})
    except SecretStoreError as error:
        raise click.ClickException(f"cannot write the secret store: {error}") from None
    click.echo(
        f"hook '{hook_id}' revoked: it answers 410 HOOK_REVOKED from now on (on AWS within a minute); "
        f"`forwarder hooks create {hook_id}` issues a new secret"
    )
