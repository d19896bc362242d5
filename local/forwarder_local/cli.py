"""``forwarder``: run the embedded stack, send signed records, check and preview config."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

DEFAULT_STATE = Path(os.environ.get("FORWARDER_STATE_DIR", ".forwarder"))
ROUTES = {
    "contacts": ("POST", "/v1/contacts"),
    "delete": ("DELETE", "/v1/contacts"),
    "event": ("POST", "/v1/events"),
}
# (what the banner calls it, the stack's name for it, where its state reads back)
SANDBOX_BANNER = (
    ("ExpertSender CDP sandbox", "expertsender", "GET /_sandbox/customers"),
    ("Convertlab DM Hub sandbox", "dmhub", "GET /_sandbox/customers  /_sandbox/lists  /_sandbox/events"),
    ("CRM CareCloud sandbox", "carecloud", "GET /_sandbox/customers"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Forwarder: validate, map and deliver customer records to CRM and marketing platforms."""


# --- run ---------------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="config document (default: config/forwarder.yaml)",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="queues, local secrets and issued keys live here",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, help="the gateway's port")
@click.option(
    "--region",
    default="us-east-1",
    show_default=True,
    help="the region the gateway stands in: requests must be signed for it",
)
@click.option(
    "--sandbox-port",
    default=8701,
    show_default=True,
    help="the ExpertSender sandbox's port; DM Hub's and CareCloud's are the next two",
)
@click.option("--no-sandboxes", is_flag=True, help="do not start vendor sandboxes (use real vendors)")
@click.option("--verbose", "-v", is_flag=True, help="print the handlers' structured logs (INFO)")
@click.option(
    "--retry-base-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="first retry backoff of a failed delivery (default 2; time-compressed runs such as make chaos)",
)
@click.option(
    "--retry-max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="cap of the retry backoff and of a vendor's Retry-After (default 60)",
)
@click.option(
    "--circuit-probe-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="how often an integration's open circuit lets one probe through (default 60)",
)
@click.option(
    "--deliver-workers",
    type=click.IntRange(min=1, max=32),
    default=None,
    help="deliver batches handled at once, like concurrent Lambda invocations (default 4)",
)
def run(
    config_path: Path | None,
    state_dir: Path,
    host: str,
    port: int,
    region: str,
    sandbox_port: int,
    no_sandboxes: bool,
    verbose: bool,
    retry_base_seconds: float | None,
    retry_max_seconds: float | None,
    circuit_probe_seconds: float | None,
    deliver_workers: int | None,
) -> None:
    """Start the embedded stack: gateway, durable queues, pollers, secret store, scheduler, sandboxes."""
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    from forwarder.config import ConfigError
    from forwarder_local.stack import DEFAULT_CONFIG, EmbeddedStack, StackOptions, StateInUse

    options = StackOptions(
        state_dir=state_dir,
        config_path=config_path or DEFAULT_CONFIG,
        host=host,
        port=port,
        region=region,
        sandbox_port=sandbox_port,
        with_sandboxes=not no_sandboxes,
    )
    if retry_base_seconds is not None:
        options.retry_base_seconds = retry_base_seconds
    if retry_max_seconds is not None:
        options.retry_max_seconds = retry_max_seconds
    if circuit_probe_seconds is not None:
        options.circuit_probe_seconds = circuit_probe_seconds
    if deliver_workers is not None:
        options.deliver_workers = deliver_workers
    try:
        stack = EmbeddedStack(options).start()
    except ConfigError as error:
        raise click.ClickException("\n".join([f"invalid config {error.source}:", *error.problems])) from None
    except StateInUse as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(
            f"cannot start: {error.strerror} (is another stack running? try --port)"
        ) from None
    assert stack.gateway is not None
    counts = {name: stack.store.counts(name) for name in ("ingest", "delivery")}
    pending = sum(count["visible"] + count["in_flight"] + count["delayed"] for count in counts.values())
    click.echo(f"Forwarder embedded stack (state in {state_dir.resolve()})")
    click.echo(
        f"  gateway (SigV4, like API Gateway)  {stack.gateway.url}   POST|DELETE /v1/contacts, POST /v1/events"
    )
    click.echo(f"  signing                            region {options.region}, service execute-api")
    for title, sandbox_name, reads in SANDBOX_BANNER:
        if sandbox_name in stack.sandboxes:
            click.echo(f"  {title:<34} {stack.sandboxes[sandbox_name].url}   {reads}")
    click.echo(
        f"  queues (durable, SQS semantics)    {state_dir / 'queues.db'}   {pending} message(s) pending"
        + (f", {stack.released} resumed from the previous run" if stack.released else "")
    )
    click.echo(f"  config                             {options.config_path}")
    first = stack.first_client()
    if first:
        name, group_key, access_key, _ = first
        click.echo(f"  client '{name}' may use group key '{group_key}'; its access key id is {access_key}")
        click.echo("\nSend a first record (signed with the client's key from the state folder):\n")
        state_flag = "" if state_dir == DEFAULT_STATE else f" --state-dir {state_dir}"
        click.echo(
            f"  .venv/bin/forwarder send contacts --group-key {group_key} --url {stack.gateway.url}{state_flag} \\"
        )
        click.echo("      --set email=jane@example.com --set first_name=Jane --set city=Oslo\n")
        if stack.sandboxes:
            click.echo("then see it in the sandboxes:")
            for _, sandbox_name, reads in SANDBOX_BANNER:
                if sandbox_name in stack.sandboxes:
                    path = reads.split()[1]
                    click.echo(f"  curl -s {stack.sandboxes[sandbox_name].url}{path}")
    else:
        click.echo(
            "  no client has an active access key: issue one with "
            "`.venv/bin/forwarder clients create --group-key GROUP_KEY`"
        )
    click.echo("Ctrl-C stops the stack; accepted records stay queued and are delivered on the next start.")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    last = ""
    try:
        while not done.wait(1):
            line = _queue_summary(stack.store)
            if line != last:
                click.echo(line)
                last = line
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        click.echo("stopped")


def _queue_summary(store: Any) -> str:
    def depth(name: str) -> int:
        return sum(store.counts(name).values())

    return (
        f"[queues] ingest {depth('ingest')} | delivery {depth('delivery')} | rejected {depth('rejects')} | "
        f"dead-lettered {depth('delivery-dlq') + depth('ingest-dlq')}   (see: forwarder trail rejects | dead-letters)"
    )


@main.command()
@click.argument("which", type=click.Choice(["rejects", "dead-letters", "ingest-dead-letters"]))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE)
@click.option("--limit", default=20, show_default=True)
@click.option("--show-data", is_flag=True, help="also print the record (personal data)")
def trail(which: str, state_dir: Path, limit: int, show_data: bool) -> None:
    """List records rejected for good, or dead-lettered deliveries, with their reasons (embedded stack)."""
    from forwarder_local.queue import DurableQueueStore

    path = state_dir / "queues.db"
    if not path.exists():
        raise click.ClickException(f"no queues at {path}; start the embedded stack first")
    store = DurableQueueStore(path)
    try:
        queue = {"rejects": "rejects", "dead-letters": "delivery-dlq", "ingest-dead-letters": "ingest-dlq"}[
            which
        ]
        entries = store.peek(queue, limit=limit)
    finally:
        store.close()
    if not entries:
        click.echo(f"no {which}")
    for entry in entries:
        try:
            document = json.loads(entry["body"])
        except json.JSONDecodeError:
            document = {}
        if document.get("kind") != ("rejection" if which == "rejects" else "dead_letter"):
            # moved by the queue's redrive policy: the function crashed or timed out on it every time
            click.echo(
                f"{entry.get('message_id', '?')}  redriven after repeated failures (no reason recorded): "
                f"{document.get('kind', 'unreadable')} message of request {document.get('request_id', '?')}"
            )
            if show_data:
                click.echo(f"    body: {entry['body']}")
            continue
        if which == "rejects":
            where = f"{document['stage']} {document.get('integration') or ''}".strip()
            click.echo(
                f"{document['rejected_at']}  {document['request_id']}  [{where}]  {document['reason']}"
            )
            errors = document.get("errors", [])
            if show_data:
                for error in errors:
                    click.echo(f"    - {error}")
            elif errors:
                click.echo(
                    f"    ({len(errors)} problem(s); --show-data lists them, they may quote the record)"
                )
            record = document.get("record")
        else:
            delivery = document["delivery"]
            click.echo(
                f"{document['dead_lettered_at']}  {delivery['request_id']}  [{delivery['integration']}] "
                f"after {document['attempts']} attempts: {document['reason']}"
            )
            record = delivery.get("payload")
        if show_data:
            click.echo(f"    record: {json.dumps(record)}")


@main.command()
@click.argument("which", type=click.Choice(["dead-letters", "ingest-dead-letters"]))
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE)
@click.option("--integration", help="only dead letters of this integration")
@click.option("--limit", default=10_000, show_default=True)
def replay(which: str, state_dir: Path, integration: str | None, limit: int) -> None:
    """Move dead letters back onto their queue to be delivered again (e.g. after fixing a secret).

    Works while the stack runs or not. On AWS, the same is an SQS DLQ redrive (StartMessageMoveTask): deliver
    unwraps the dead-letter envelope either way."""
    from forwarder_local.queue import DurableQueueStore

    source, target = {
        "dead-letters": ("delivery-dlq", "delivery"),
        "ingest-dead-letters": ("ingest-dlq", "ingest"),
    }[which]
    path = state_dir / "queues.db"
    if not path.exists():
        raise click.ClickException(f"no queues at {path}; start the embedded stack first")
    store = DurableQueueStore(path)
    moved = skipped = 0
    try:
        total = min(limit, sum(store.counts(source).values()))
        with click.progressbar(length=total, label=f"replaying {source} -> {target}") as progress:
            while moved + skipped < total:
                batch = store.receive(source, max_messages=10, visibility_timeout=60)
                if not batch:
                    break
                for message in batch:
                    if integration and message.attributes.get("integration") != integration:
                        store.change_visibility(source, message.receipt_handle, 0)
                        skipped += 1
                        continue
                    store.send(
                        target,
                        message.body,
                        message.attributes or None,
                        group_id=message.group_id,  # FIFO: back into its customer's group
                        dedup_id=f"replay-{message.message_id}-{time.time_ns()}"
                        if message.group_id
                        else None,
                    )
                    store.delete(source, message.receipt_handle)
                    moved += 1
                progress.update(len(batch))
    finally:
        store.close()
    click.echo(
        f"replayed {moved} message(s) from {source} to {target}" + (f"; {skipped} left" if skipped else "")
    )


# --- send --------------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@main.command()
@click.argument("kind", type=click.Choice(sorted(ROUTES)))
@click.option("--group-key", "-g", required=False, help="the group key (or give it in --file)")
@click.option(
    "--file",
    "-f",
    "data_file",
    type=click.File("r"),
    help='JSON file: {"data": {...}, "group_key": ..} or just the data object; - for stdin',
)
@click.option(
    "--set",
    "-s",
    "pairs",
    multiple=True,
    metavar="ATTR=VALUE",
    help='a data attribute; VALUE is parsed as JSON when it can be (e.g. tags=\'["a","b"]\')',
)
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="the API's base URL")
@click.option(
    "--access-key", help="default: the key the embedded stack issued (local URL), else AWS_ACCESS_KEY_ID"
)
@click.option(
    "--secret-key", help="default: from the embedded stack's state folder, else AWS_SECRET_ACCESS_KEY"
)
@click.option("--session-token", envvar="AWS_SESSION_TOKEN", help="with temporary credentials")
@click.option(
    "--region",
    help="default: the embedded stack's (local URL), else AWS_REGION, else us-east-1",
)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_STATE)
@click.option("--idempotency-key", help="sent as the Idempotency-Key header")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config the local stack runs (to pick a key allowed for the group key)",
)
def send(
    kind: str,
    group_key: str | None,
    data_file: Any,
    pairs: tuple[str, ...],
    url: str,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    region: str | None,
    state_dir: Path,
    idempotency_key: str | None,
    config_path: Path | None,
) -> None:
    """Send one signed record (SigV4, service execute-api) and print the answer."""
    import requests
    from requests_aws4auth import AWS4Auth

    document: dict[str, Any] = {}
    if data_file is not None:
        loaded = json.load(data_file)
        if not isinstance(loaded, dict):
            raise click.BadParameter("the file must hold a JSON object", param_hint="--file")
        document = loaded if "data" in loaded else {"data": loaded}
    data = dict(document.get("data") or {})
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{pair}' is not ATTR=VALUE", param_hint="--set")
        data[name] = _parse_value(value)
    group_key = group_key or document.get("group_key")
    if not group_key:
        raise click.UsageError("give --group-key (or group_key in --file)")
    host = (urlsplit(url).hostname or "").lower()
    local = host in ("127.0.0.1", "localhost", "::1") and (state_dir / "credentials.json").exists()
    if local:
        region = region or _stack_region(state_dir)
    region = region or os.environ.get("AWS_REGION") or "us-east-1"
    if not access_key or not secret_key:
        env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        # Against the local stack, the environment's keys count only if the stack issued them (e.g. from
        # `eval "$(forwarder clients session ...)"`), never a developer's own AWS keys.
        if env_key and env_secret and not access_key and (not local or _issued_locally(state_dir, env_key)):
            access_key, secret_key = env_key, env_secret
        else:
            access_key, secret_key = _local_keys(state_dir, access_key, group_key, config_path)
            session_token = None
    method, path = ROUTES[kind]
    auth = AWS4Auth(access_key, secret_key, region, "execute-api", session_token=session_token)
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    try:
        response = requests.request(
            method,
            url.rstrip("/") + path,
            json={"data": data, "group_key": group_key},
            auth=auth,
            headers=headers,
            timeout=30,
        )
    except requests.RequestException as error:
        raise click.ClickException(
            f"cannot reach {url}: {type(error).__name__} (is `make run` running?)"
        ) from None
    click.echo(f"{response.status_code} {response.reason}")
    click.echo(response.text)
    if response.status_code >= 400:
        sys.exit(1)


def _stack_config(state_dir: Path) -> Path | None:
    """The config the embedded stack in ``state_dir`` was started with (``forwarder run`` records it)."""
    try:
        return Path(json.loads((state_dir / "stack.json").read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stack_region(state_dir: Path) -> str | None:
    """The region the embedded stack in ``state_dir`` signs for (``forwarder run`` records it)."""
    try:
        region = json.loads((state_dir / "stack.json").read_text()).get("region")
    except (OSError, ValueError, AttributeError):
        return None
    return region if isinstance(region, str) else None


def _issued_locally(state_dir: Path, access_key: str) -> bool:
    from forwarder_local.stores import LocalCredentials

    return LocalCredentials(state_dir / "credentials.json").lookup(access_key) is not None


def _local_keys(
    state_dir: Path, access_key: str | None, group_key: str | None = None, config_path: Path | None = None
) -> tuple[str, str]:
    """An active long-term key the embedded stack issued: the one named, else one whose client may use
    ``group_key``."""
    from forwarder_local.stores import LocalCredentials

    path = state_dir / "credentials.json"
    if not path.exists():
        raise click.ClickException(
            f"no credentials: give --access-key/--secret-key, or start the embedded stack (it issues keys in {path})"
        )
    credentials = LocalCredentials(path)
    if access_key:
        issued = credentials.lookup(access_key)
        if issued is None:
            raise click.ClickException(
                f"access key {access_key} was not issued by the embedded stack; give --secret-key"
            )
        if issued.temporary:
            raise click.ClickException(
                f"access key {access_key} is temporary: give --secret-key and --session-token too"
            )
        secret = credentials.secret_for(access_key)
        if secret is None:
            raise click.ClickException(f"access key {access_key} was revoked")
        return access_key, secret
    users = {
        key.access_key_id: key.user_arn
        for key in credentials.issued()
        if not key.temporary and credentials.secret_for(key.access_key_id) is not None
    }
    if not users:
        raise click.ClickException(
            f"{path} holds no active key; start the embedded stack, or `forwarder clients create --group-key ...`"
        )
    candidates = sorted(users)
    if group_key:
        try:
            from forwarder.config import load_config
            from forwarder_local.stack import DEFAULT_CONFIG

            config = load_config(config_path or _stack_config(state_dir) or DEFAULT_CONFIG)
            allowed = [
                key
                for key in candidates
                if (client := config.client_for(key, users[key])) and client.allows(group_key)
            ]
        except Exception as error:  # no readable config: any issued key; the gateway says if not allowed
            click.echo(f"(could not read the config to pick a key: {type(error).__name__})", err=True)
        else:
            if not allowed:
                raise click.ClickException(
                    f"no active key in {path} belongs to a client allowed to use group key '{group_key}' "
                    f"(`forwarder clients create --group-key {group_key}` issues one)"
                )
            candidates = allowed
    secret = credentials.secret_for(candidates[0])
    assert secret is not None
    return candidates[0], secret


# --- config ------------------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Check and preview config documents."""


@config.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_check(path: Path) -> None:
    """Validate a config document; every problem is printed with its path and line."""
    from forwarder.config import ConfigError, load_config_text

    try:
        loaded = load_config_text(path.read_text(encoding="utf-8"), str(path))
    except ConfigError as error:
        click.echo(f"{path}: invalid", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    integrations = sum(len(group.integrations) for group in loaded.group_keys.values())
    click.echo(
        f"{path}: valid (version {loaded.version}, {len(loaded.clients)} client(s), "
        f"{len(loaded.group_keys)} group key(s), {integrations} integration(s))"
    )


@config.command("preview")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group-key", "-g", required=True)
@click.option("--kind", type=click.Choice(sorted(ROUTES)), default="contacts", show_default=True)
@click.option("--set", "-s", "pairs", multiple=True, metavar="ATTR=VALUE")
@click.option("--file", "-f", "data_file", type=click.File("r"), help="JSON file with the data object")
def config_preview(path: Path, group_key: str, kind: str, pairs: tuple[str, ...], data_file: Any) -> None:
    """Dry run: the delivery payloads (or rejections) a record would cause, without sending anything."""
    from forwarder.config import ConfigError, load_config
    from forwarder.contract import ContractError, check_flat
    from forwarder.flows.validate import plan
    from forwarder.messages import IngestMessage, utcnow_iso

    data: dict[str, Any] = json.load(data_file) if data_file else {}
    data = data.get("data", data) if isinstance(data, dict) else {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        data[name] = _parse_value(value)
    action = {"contacts": "upsert_contact", "delete": "delete_contact", "event": "event"}[kind]
    try:
        message = IngestMessage(
            request_id="preview",
            action=action,
            group_key=group_key,
            data=check_flat(data),
            received_at=utcnow_iso(),
            client="preview",
        )
        deliveries, rejections = plan(load_config(path), message)
    except ConfigError as error:
        raise click.ClickException("\n".join(error.problems)) from None
    except ContractError as error:
        raise click.ClickException(error.message) from None
    output = {
        "deliveries": [
            delivery.model_dump(include={"integration", "operation", "payload"}) for delivery in deliveries
        ],
        "rejections": [
            rejection.model_dump(include={"integration", "reason", "errors"}) for rejection in rejections
        ],
    }
    click.echo(json.dumps(output, indent=2))


if __name__ == "__main__":
    main()
