"""``forwarder status REQUEST_ID``: what became of a request, per integration, through the signed status route
(``GET /v1/requests/{request_id}``), signed as ``forwarder send`` signs: against the embedded stack with the
key it issued (or ``--access-key``), a deployed stack (``--stack``) or URL with botocore's credentials.
Only the client that sent a request may read it: sign with its credentials."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from forwarder_local.aws_cli import api_signing_options

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
@api_signing_options
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
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="ask again every --every seconds, printing each change, until no integration is pending (or --timeout)",
)
@click.option(
    "--every",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="--follow: seconds between asks",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1, 86_400),
    default=120.0,
    show_default=True,
    help="--follow: give up after this many seconds (exit 3 when still pending)",
)
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
    stack: str | None,
    profile: str | None,
    follow: bool,
    every: float,
    timeout: float,
) -> None:
    """Show a request's status per integration: pending, delivered, rejected (with the reason), dead-lettered
    (with the reason) or superseded, with attempts and times.

    \b
    Example:
      forwarder status 5f0c...                       # against the embedded stack, with its issued key
      forwarder status 5f0c... --json                # the route's JSON
      forwarder status 5f0c... --follow              # until every integration is done
      forwarder status 5f0c... --stack forwarder --profile prod
      forwarder status 5f0c... --url https://API_ID.execute-api.REGION.amazonaws.com/dev --region REGION
    """
    import requests

    from forwarder.contract import STATUS_RESOURCE
    from forwarder_local.cli import api_target

    url, auth = api_target(
        url, stack, region, profile, access_key, secret_key, session_token, state_dir, group_key, config_path
    )
    target = url.rstrip("/") + STATUS_RESOURCE.replace("{request_id}", quote(request_id, safe=""))

    def ask() -> requests.Response:
        try:
            return requests.get(target, auth=auth, timeout=30)
        except requests.RequestException as error:
            raise click.ClickException(
                f"cannot reach {url}: {type(error).__name__} (is `make run` running?)"
            ) from None

    def document_of(response: requests.Response) -> dict[str, Any] | None:
        try:
            document = response.json()
        except ValueError:
            return None
        return document if isinstance(document, dict) and response.status_code == 200 else None

    response = ask()
    if follow:
        # A request is known a few seconds after its 202 (once validated): a 404 is asked again until then.
        deadline = time.monotonic() + timeout
        shown: list[str] = []
        while True:
            document = document_of(response)
            if document is not None:
                lines = [json.dumps(document, sort_keys=True)] if as_json else describe(document)
                if lines != shown:
                    click.echo("\n".join(lines))
                    shown = lines
                if document.get("status") != "pending":
                    # 0: every integration delivered (or superseded by a newer record); 1: any refused
                    settled = {"delivered", "superseded"}
                    entries = document.get("integrations") or []
                    ok = document.get("status") == "done" and all(e.get("status") in settled for e in entries)
                    sys.exit(0 if ok else 1)
            elif response.status_code not in (404, 429, 503):
                break
            if time.monotonic() >= deadline:
                if document is None:
                    break
                click.echo(f"still pending after {timeout:g} s", err=True)
                sys.exit(3)
            time.sleep(every)
            response = ask()
    document = document_of(response)
    if as_json or document is None:
        if not as_json:
            click.echo(f"{response.status_code} {response.reason}")
        click.echo(response.text)
    else:
        click.echo("\n".join(describe(document)))
    if response.status_code == 404 and not as_json:
        signer = getattr(auth, "access_id", None)
        click.echo(
            f"(signed with access key {signer}: only the client that sent a request can read it; "
            "sign as the sender with -g GROUP_KEY or --access-key)"
            if signer
            else "(only the client that sent a request can read it: sign with the sender's credentials)",
            err=True,
        )
    if response.status_code >= 400:
        sys.exit(1)
