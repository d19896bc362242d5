"""``forwarder status REQUEST_ID``: what became of a request, per integration, through the signed status route
(``GET /v1/requests/{request_id}``), signed as ``forwarder send`` signs: against the embedded stack with the
key it issued (or ``--access-key``), elsewhere with ``--access-key/--secret-key`` or the ``AWS_*`` variables.
Only the client that sent a request may read it: sign with its credentials."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import click

DEFAULT_STATE = Path(os.environ.get("FORWARDER_STATE_DIR", ".forwarder"))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def describe(document: dict[str, Any]) -> list[str]:
    """The status document as lines a person reads."""
    lines = [
        f"request {document['request_id']}  {document['action']}  group key {document['group_key']}: "
        f"{document['status']}",
        f"  received {document['received_at']}, validated {document['validated_at']}",
    ]
    if document.get("reason"):
        lines.append(f"  rejected: {document['reason']}")
    for entry in document.get("integrations", []):
        status = entry["status"]
        detail = ""
        if status == "pending":
            detail = "sending" if entry.get("sending") else "queued"
            if entry.get("last_error"):
                detail = f"retrying, last error: {entry['last_error']}"
        elif status != "delivered":
            stage = f" at {entry['stage']}" if entry.get("stage") else ""
            detail = f"{stage.strip()}: {entry.get('reason', '')}".strip(": ").strip()
        lines.append(
            f"  {entry['integration']:<16} {entry.get('operation') or '-':<18} {status:<14} "
            f"{_plural(entry['attempts'], 'attempt'):<11} {entry['updated_at'] or ''}"
            + (f"  {detail}" if detail else "")
        )
        for error in entry.get("errors") or []:
            lines.append(f"      - {error}")
    return lines


@click.command()
@click.argument("request_id")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="the API's base URL")
@click.option(
    "--access-key", help="default: the key the embedded stack issued (local URL), else AWS_ACCESS_KEY_ID"
)
@click.option(
    "--secret-key", help="default: from the embedded stack's state folder, else AWS_SECRET_ACCESS_KEY"
)
@click.option("--session-token", envvar="AWS_SESSION_TOKEN", help="with temporary credentials")
@click.option("--region", help="default: the embedded stack's (local URL), else AWS_REGION, else us-east-1")
@click.option(
    "--group-key",
    "-g",
    help="local URL: sign with the issued key of a client allowed to use this group key (the sender's)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="the embedded stack's state folder (its client keys)",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config the local stack runs (to pick a key allowed for --group-key)",
)
@click.option("--json", "as_json", is_flag=True, help="print the route's JSON answer as it came")
def status(
    request_id: str,
    url: str,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    region: str | None,
    group_key: str | None,
    state_dir: Path,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Show a request's status per integration: pending, delivered, rejected (with the reason), dead-lettered
    (with the reason) or superseded, with attempts and times.

    \b
    Example:
      forwarder status 5f0c...                       # against the embedded stack, with its issued key
      forwarder status 5f0c... --json                # the route's JSON
      forwarder status 5f0c... --url https://API_ID.execute-api.REGION.amazonaws.com/dev --region REGION
    """
    import requests
    from requests_aws4auth import AWS4Auth

    from forwarder_local.cli import _issued_locally, _local_keys, _stack_region

    host = (urlsplit(url).hostname or "").lower()
    local = host in ("127.0.0.1", "localhost", "::1") and (state_dir / "credentials.json").exists()
    if local:
        region = region or _stack_region(state_dir)
    region = region or os.environ.get("AWS_REGION") or "us-east-1"
    if not access_key or not secret_key:
        env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if env_key and env_secret and not access_key and (not local or _issued_locally(state_dir, env_key)):
            access_key, secret_key = env_key, env_secret
        else:
            access_key, secret_key = _local_keys(state_dir, access_key, group_key, config_path)
            session_token = None
    auth = AWS4Auth(access_key, secret_key, region, "execute-api", session_token=session_token)
    try:
        response = requests.get(
            f"{url.rstrip('/')}/v1/requests/{quote(request_id, safe='')}", auth=auth, timeout=30
        )
    except requests.RequestException as error:
        raise click.ClickException(
            f"cannot reach {url}: {type(error).__name__} (is `make run` running?)"
        ) from None
    try:
        document = response.json()
    except ValueError:
        document = None
    if as_json or not isinstance(document, dict) or response.status_code != 200:
        if not as_json:
            click.echo(f"{response.status_code} {response.reason}")
        click.echo(response.text)
    else:
        click.echo("\n".join(describe(document)))
    if response.status_code >= 400:
        sys.exit(1)
