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

from forwarder_local.aws_cli import api_signing_options, aws_options
from forwarder_local.hooks_cli import hooks
from forwarder_local.secrets_cli import secrets
from forwarder_local.status_cli import status
from forwarder_local.values import parse_set_value

DEFAULT_STATE = Path(os.environ.get("FORWARDER_STATE_DIR", ".forwarder"))
ROUTES = {
    "contacts": ("POST", "/v1/contacts"),
    "delete": ("DELETE", "/v1/contacts"),
    "event": ("POST", "/v1/events"),
}
KIND_ACTIONS = {"contacts": "upsert_contact", "delete": "delete_contact", "event": "event"}
# (what the banner calls it, the stack's name for it, where its state reads back)
SANDBOX_BANNER = (
    ("ExpertSender CDP sandbox", "expertsender", "GET /_sandbox/customers"),
    ("Convertlab DM Hub sandbox", "dmhub", "GET /_sandbox/customers  /_sandbox/lists  /_sandbox/events"),
    ("CRM CareCloud sandbox", "carecloud", "GET /_sandbox/customers"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="forwarder", prog_name="forwarder")
def main() -> None:
    """Forwarder: validate, map and deliver customer records to CRM and marketing platforms.

    Each command has its own help: forwarder COMMAND --help.

    \b
    Example:
      forwarder run                                   # the embedded stack (make run)
      forwarder send contacts -g demo --set email=jane@example.com
      forwarder trail rejects                         # what was rejected, and why
    """


main.add_command(hooks)
main.add_command(secrets)
main.add_command(status)


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
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="the address the gateway and sandboxes listen on"
)
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
@click.option(
    "--console-port",
    default=8090,
    show_default=True,
    help="the console's port (queues, requests, rejects, dead letters; 0: any free port)",
)
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
    "--retry-horizon-seconds",
    type=click.FloatRange(min=1, max=86_400),
    default=None,
    envvar="FORWARDER_RETRY_HORIZON_SECONDS",
    help="how long a failing delivery is retried before it is dead-lettered (default 14400: 4 hours; "
    "e.g. 60 to see dead letters and replay them soon)",
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
@click.option(
    "--one-process",
    is_flag=True,
    help="run the pipeline (pollers, token schedule, sandboxes) in this process too, not in a second one "
    "(one core; by default the gateway and the pipeline each have a process)",
)
def run(
    config_path: Path | None,
    state_dir: Path,
    host: str,
    port: int,
    region: str,
    sandbox_port: int,
    no_sandboxes: bool,
    console_port: int,
    verbose: bool,
    retry_base_seconds: float | None,
    retry_max_seconds: float | None,
    retry_horizon_seconds: float | None,
    circuit_probe_seconds: float | None,
    deliver_workers: int | None,
    one_process: bool,
) -> None:
    """Start the embedded stack: gateway, durable queues, pollers, secret store, scheduler, sandboxes.

    Runs until Ctrl-C; accepted records stay queued in the state folder and are delivered on the next start.

    \b
    Example:
      forwarder run                                   # what make run starts
      forwarder run --port 9090 --sandbox-port 8801 --verbose
      make run ARGS="--port 9090"
    """
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    from forwarder.config import ConfigError
    from forwarder_local.stack import DEFAULT_CONFIG, EmbeddedStack, StackOptions, StateInUse, running_stack

    options = StackOptions(
        state_dir=state_dir,
        config_path=config_path or DEFAULT_CONFIG,
        host=host,
        port=port,
        region=region,
        sandbox_port=sandbox_port,
        with_sandboxes=not no_sandboxes,
        console_port=console_port,
        pipeline_process=not one_process,
    )
    if retry_base_seconds is not None:
        options.retry_base_seconds = retry_base_seconds
    if retry_max_seconds is not None:
        options.retry_max_seconds = retry_max_seconds
    if retry_horizon_seconds is not None:
        options.retry_horizon_seconds = retry_horizon_seconds
    if circuit_probe_seconds is not None:
        options.circuit_probe_seconds = circuit_probe_seconds
    if deliver_workers is not None:
        options.deliver_workers = deliver_workers
    running = running_stack(state_dir)
    if running is not None:  # said first: its ports are taken too, but moving them would not help
        where = f" (gateway {running['gateway']})" if running.get("gateway") else ""
        raise click.ClickException(
            f"another embedded stack is running on {state_dir.resolve()}{where}; stop it (Ctrl-C where it runs), "
            "or start this one on another folder with --state-dir"
        )
    _check_ports(options)
    try:
        stack = EmbeddedStack(options).start()
    except ConfigError as error:
        raise click.ClickException("\n".join([f"invalid config {error.source}:", *error.problems])) from None
    except StateInUse as error:
        raise click.ClickException(str(error)) from None
    except RuntimeError as error:  # the pipeline process did not start: it says why
        raise click.ClickException(f"cannot start: {error}") from None
    except OSError as error:
        raise click.ClickException(
            f"cannot start: {error.strerror} (is another stack running? move it with --port, and the "
            "sandboxes with --sandbox-port)"
        ) from None
    assert stack.gateway is not None
    counts = {name: stack.store.counts(name) for name in ("ingest", "delivery")}
    pending = sum(count["visible"] + count["in_flight"] + count["delayed"] for count in counts.values())
    click.echo(f"Forwarder embedded stack (state in {state_dir.resolve()})")
    click.echo(
        f"  gateway (SigV4, like API Gateway)  {stack.gateway.url}   POST|DELETE /v1/contacts, POST /v1/events, "
        "GET /v1/requests/{request_id}"
    )
    click.echo(f"  signing                            region {options.region}, service execute-api")
    if stack.pipeline_pid is not None:
        click.echo(
            f"  pipeline process                   pid {stack.pipeline_pid} ('fwd-pipeline' in top)   validate, "
            "deliver, the token schedule, the sandboxes (--one-process: none)"
        )
    if stack.config.hooks:
        click.echo(
            f"  {'web-form hooks (no SigV4)':<34} {stack.gateway.url}   POST /v1/hooks/{{hook_id}}: "
            f"{', '.join(sorted(stack.config.hooks))} (forwarder hooks list)"
        )
    for title, sandbox_name, reads in SANDBOX_BANNER:
        if sandbox_name in stack.sandbox_urls:
            click.echo(f"  {title:<34} {stack.sandbox_urls[sandbox_name]}   {reads}")
    click.echo(
        f"  queues (durable, SQS semantics)    {state_dir / 'queues.db'}   {pending} message(s) pending"
        + (f", {stack.released} resumed from the previous run" if stack.released else "")
    )
    click.echo(
        "  producers (SQS, EventBridge)       queues 'producer' and 'producer-events' (the bus's rule)   "
        "forwarder send --via sqs|eventbridge"
    )
    click.echo(f"  config                             {options.config_path}")
    if stack.console is not None:
        # printed to the terminal only, never logged
        click.echo(
            f"  console (admin secret)             {stack.console.url}   secret {stack.console_secret} "
            f"(kept in {state_dir / 'console-secret'})"
        )
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
        url_flag = "" if stack.gateway.url == "http://127.0.0.1:8080" else f" --url {stack.gateway.url}"
        click.echo(
            f"and follow it: .venv/bin/forwarder status REQUEST_ID --follow -g {group_key}{url_flag}{state_flag}"
            "   (the request_id it answers)\n"
        )
        if stack.sandbox_urls:
            click.echo("then see it in the sandboxes:")
            for _, sandbox_name, reads in SANDBOX_BANNER:
                if sandbox_name in stack.sandbox_urls:
                    path = reads.split()[1]
                    click.echo(f"  curl -s {stack.sandbox_urls[sandbox_name]}{path}")
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


def _check_ports(options: Any) -> None:
    """Refuse, naming the port, what uses it and the option that moves it, when a port the stack would listen
    on is taken (another stack, most likely)."""
    import socket

    wanted = [(options.port, "the gateway", "--port", 1)]
    if options.with_sandboxes and options.sandbox_port:
        wanted += [
            (options.sandbox_port + offset, f"the {title[: -len(' sandbox')]} sandbox", "--sandbox-port", 3)
            for offset, (title, _, _) in enumerate(SANDBOX_BANNER)
        ]
    for port, what, option, span in wanted:
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in options.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server binds
            try:
                probe.bind((options.host, port))
            except OSError:
                start = options.port if option == "--port" else options.sandbox_port
                raise click.ClickException(
                    f"cannot start: port {port} ({what}) is in use, perhaps by another stack. Stop it, or "
                    f"choose another port with {option} (e.g. {option} {start + 100}"
                    + (f": the sandboxes take it and the next {span - 1}" if span > 1 else "")
                    + ")"
                ) from None


def _queue_summary(store: Any) -> str:
    def depth(name: str) -> int:
        return sum(store.counts(name).values())

    producers = depth("producer") + depth("producer-events")
    dead = sum(depth(name) for name in ("delivery-dlq", "ingest-dlq", "producer-dlq", "producer-events-dlq"))
    return (
        f"[queues] producers {producers} | ingest {depth('ingest')} | delivery {depth('delivery')} | "
        f"rejected {depth('rejects')} | dead-lettered {dead}   (see: forwarder trail rejects | dead-letters)"
    )


@main.command()
@click.argument(
    "which", type=click.Choice(["rejects", "dead-letters", "ingest-dead-letters", "producer-dead-letters"])
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="the embedded stack's state folder (its queues are in queues.db there)",
)
@click.option("--limit", default=20, show_default=True, help="list at most this many, oldest first")
@click.option(
    "--show-data",
    is_flag=True,
    help="also print each record, and the values reasons quote (personal data); reasons are always shown",
)
@aws_options
def trail(
    which: str,
    state_dir: Path,
    limit: int,
    show_data: bool,
    stack: str | None,
    region: str | None,
    profile: str | None,
) -> None:
    """List records rejected for good, or dead-lettered deliveries, with their reasons (embedded stack, or
    a deployed one with --stack).

    WHICH: rejects (rejected at validate, by a vendor, or a producer's message refused), dead-letters
    (deliveries that exhausted their retries), ingest-dead-letters, producer-dead-letters.

    With --stack, the queues are read without deleting anything: each message is received, hidden for a
    moment, and made visible again at once (its receive count goes up by one).

    \b
    Example:
      forwarder trail rejects
      forwarder trail dead-letters --limit 5 --show-data
      forwarder trail dead-letters --stack forwarder --profile prod --limit 50
    """
    store = _trail_store(state_dir, stack, region, profile)
    if which == "producer-dead-letters":
        try:
            _producer_dead_letters(store, limit, show_data)
        finally:
            store.close()
        return
    try:
        queue = {"rejects": "rejects", "dead-letters": "delivery-dlq", "ingest-dead-letters": "ingest-dlq"}[
            which
        ]
        entries = store.peek(queue, limit=limit)
    finally:
        store.close()
    if not entries:
        click.echo(f"no {which}")
    from forwarder_local.masking import masked

    def shown(text: str) -> str:
        # reasons and field problems may quote a value: masked unless the data was asked for
        return text if show_data else masked(text)

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
            where = (
                f"{document['stage']} {document.get('integration') or document.get('source') or ''}".strip()
            )
            click.echo(
                f"{document['rejected_at']}  {document['request_id']}  [{where}]  {shown(document['reason'])}"
            )
            for error in document.get("errors", []):
                click.echo(f"    - {shown(error)}")
            record = document.get("record")
        else:
            delivery = document["delivery"]
            click.echo(
                f"{document['dead_lettered_at']}  {delivery['request_id']}  [{delivery['integration']}] "
                f"after {document['attempts']} attempts: {shown(document['reason'])}"
            )
            record = delivery.get("payload")
        if show_data:
            click.echo(f"    record: {json.dumps(record)}")


def _trail_store(state_dir: Path, stack: str | None, region: str | None, profile: str | None) -> Any:
    """Where ``trail`` reads: the embedded stack's queue store, or the deployed stack's queues."""
    if stack:
        from forwarder_local.aws_cli import StackQueues, find_stack

        found = find_stack(stack, region, profile)
        click.echo(
            f"(stack '{stack}', {found.target.where()}: messages are received and made visible again at once, "
            "nothing is deleted)",
            err=True,
        )
        return StackQueues(found)
    from forwarder_local.queue import DurableQueueStore

    path = state_dir / "queues.db"
    if not path.exists():
        raise click.ClickException(f"no queues at {path}; start the embedded stack first")
    return DurableQueueStore(path)


def _producer_dead_letters(store: Any, limit: int, show_data: bool) -> None:
    """Producer messages the sources handler could not queue (nor refuse) in 5 receives: the ingest queue or
    the rejects trail was down. They are the producers' messages as sent."""
    entries = [
        (queue, entry)
        for queue in ("producer-dlq", "producer-events-dlq")
        for entry in store.peek(queue, limit)
    ][:limit]
    if not entries:
        click.echo("no producer-dead-letters")
    for queue, entry in entries:
        attributes = entry.get("attributes") or {}
        what = (
            f"source {attributes.get('source', '?')}, action {attributes.get('action', '?')}"
            if queue == "producer-dlq"
            else "an EventBridge event"
        )
        click.echo(f"{entry['message_id']}  [{queue}] not queued in 5 receives (a queue was down): {what}")
        if show_data:
            click.echo(f"    body: {entry['body']}")


@main.command()
@click.argument("which", type=click.Choice(["dead-letters", "ingest-dead-letters"]))
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="the embedded stack's state folder (its queues are in queues.db there)",
)
@click.option("--integration", help="only dead letters of this integration")
@click.option("--limit", default=10_000, show_default=True, help="move at most this many messages")
@aws_options
@click.option(
    "--wait",
    is_flag=True,
    help="with --stack: follow the move task until it is done, with a progress bar",
)
@click.option(
    "--max-per-second",
    type=click.IntRange(1, 500),
    help="with --stack: the move task's rate, messages per second (default: as fast as SQS moves them)",
)
def replay(
    which: str,
    state_dir: Path,
    integration: str | None,
    limit: int,
    stack: str | None,
    region: str | None,
    profile: str | None,
    wait: bool,
    max_per_second: int | None,
) -> None:
    """Move dead letters back onto their queue to be delivered again (e.g. after fixing a secret).

    Works while the stack runs or not. With --stack, it starts an SQS message move task from the stack's
    dead-letter queue to its queue (DeliveryDeadLetterQueue -> DeliveryQueue, IngestDeadLetterQueue ->
    IngestQueue) and reports its progress: deliver unwraps the dead-letter envelope either way.

    \b
    Example:
      forwarder replay dead-letters --integration dmhub
      forwarder replay dead-letters --stack forwarder --profile prod --wait
    """
    if stack:
        from forwarder_local.aws_cli import replay_on_stack

        if integration:
            raise click.UsageError(
                "--integration filters the embedded stack's dead letters only: a move task moves the whole "
                "dead-letter queue"
            )
        replay_on_stack(stack, which, region, profile, wait=wait, max_per_second=max_per_second)
        return
    from forwarder_local.queue import DurableQueueStore
    from forwarder_local.replay import REPLAY_TARGETS
    from forwarder_local.replay import replay as replay_dead_letters

    source = {"dead-letters": "delivery-dlq", "ingest-dead-letters": "ingest-dlq"}[which]
    target = REPLAY_TARGETS[source]
    path = state_dir / "queues.db"
    if not path.exists():
        raise click.ClickException(f"no queues at {path}; start the embedded stack first")
    store = DurableQueueStore(path)
    try:
        total = min(limit, sum(store.counts(source).values()))
        with click.progressbar(length=total, label=f"replaying {source} -> {target}") as progress:
            done = replay_dead_letters(
                store, source, integration=integration, limit=limit, on_batch=progress.update
            )
    finally:
        store.close()
    moved, skipped = done.moved, done.skipped
    click.echo(
        f"replayed {moved} message(s) from {source} to {target}" + (f"; {skipped} left" if skipped else "")
    )


# --- send --------------------------------------------------------------------------------------------------


@main.command()
@click.argument("kind", type=click.Choice(sorted(ROUTES)))
@click.option("--group-key", "-g", required=False, help="the group key (or give it in --file)")
@click.option(
    "--file",
    "-f",
    "data_file",
    type=click.File("r"),
    help='JSON file: {"data": {...}, "group_key": ..} or just the data object; - for stdin. A .csv or '
    ".jsonl file is a backfill: one request per row (see --concurrency, --rate)",
)
@click.option(
    "--set",
    "-s",
    "pairs",
    multiple=True,
    metavar="ATTR=VALUE",
    help='a data attribute; VALUE is text, except a JSON list (tags=\'["a","b"]\'), true, false or null',
)
@api_signing_options
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="the embedded stack's state folder: its issued keys, and a backfill's progress files",
)
@click.option("--idempotency-key", help="sent as the Idempotency-Key header")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="config the local stack runs (to pick a key, or a source, allowed for the group key)",
)
@click.option(
    "--via",
    type=click.Choice(["api", "sqs", "eventbridge"]),
    default="api",
    show_default=True,
    help="the signed API, the producer queue (SQS message) or the producer bus (EventBridge event)",
)
@click.option(
    "--source",
    help="--via sqs: the producer's name (its `source` attribute); --via eventbridge: its event source "
    "(forwarder.*). Default: the config's first source of that kind allowed for the group key",
)
@click.option("--queue-url", help="--via sqs: this SQS queue on AWS, not the embedded stack's producer queue")
@click.option("--event-bus", help="--via eventbridge: this bus on AWS, not the embedded stack's")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="backfill: rows in flight at once",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=100.0,
    show_default=True,
    help="backfill: at most this many rows per second (0: no limit)",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=None,
    help="backfill: send at most this many rows in this run (the next run sends the rest)",
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
    via: str,
    source: str | None,
    queue_url: str | None,
    event_bus: str | None,
    concurrency: int,
    rate: float,
    max_rows: int | None,
    stack: str | None,
    profile: str | None,
) -> None:
    """Send one record: signed to the API (SigV4, service execute-api), or as a producer would through SQS or
    EventBridge (--via), and print the answer.

    KIND: contacts (upsert), delete (delete / anonymise) or event. A --file ending in .csv or .jsonl is a
    backfill: each row is sent as its own request, with an Idempotency-Key derived from the file and the row,
    under a progress bar; run the same command again to resume after an interruption. It ends with a summary
    of accepted and refused rows (by code, with their lines). CSV: the header names the attributes, an empty
    cell is absent, a JSON list cell (["vip"]) is a list, other cells are text as written.

    To a deployed API (--stack, or a --url that is not local) it signs with botocore's credentials (--profile
    or AWS_PROFILE, SSO, AWS_* variables, instance roles) for the stack's region, unless --access-key and
    --secret-key are given.

    \b
    Example:
      forwarder send contacts -g demo --set email=jane@example.com --set 'tags=["vip"]'
      forwarder send delete -g demo --set email=jane@example.com
      forwarder send contacts -g demo --file customers.csv --concurrency 8 --rate 50
      forwarder send event -g demo --via sqs --set email=jane@example.com --set event=purchase
      forwarder send contacts -g demo --stack forwarder --profile prod --set email=jane@example.com
      forwarder send contacts -g demo --stack forwarder --via sqs --source shop --set email=jane@example.com
    """
    import requests

    from forwarder_local.backfill import is_backfill_file

    rows_file = Path(data_file.name) if data_file is not None and is_backfill_file(data_file.name) else None
    if rows_file is not None and (via != "api" or idempotency_key):
        raise click.UsageError("a backfill (--file .csv/.jsonl) is sent to the API, with a key per row")
    document: dict[str, Any] = {}
    if data_file is not None and rows_file is None:
        loaded = json.load(data_file)
        if not isinstance(loaded, dict):
            raise click.BadParameter("the file must hold a JSON object", param_hint="--file")
        document = loaded if "data" in loaded else {"data": loaded}
    data = dict(document.get("data") or {})
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"'{pair}' is not ATTR=VALUE", param_hint="--set")
        data[name] = parse_set_value(value)
    group_key = group_key or document.get("group_key")
    if not group_key:
        raise click.UsageError("give --group-key (or group_key in --file)")
    if via != "api":
        if stack and not (queue_url if via == "sqs" else event_bus):
            # the deployed stack's producer queue (or the bus its rule listens on), in the stack's region
            from forwarder_local.aws_cli import find_stack

            found = find_stack(stack, region, profile)
            if via == "sqs":
                queue_url = found.output("ProducerQueueUrl")
            else:
                event_bus = found.output("ProducerEventBusName")
            region = found.target.region
        to_aws_producer = bool(queue_url if via == "sqs" else event_bus if via == "eventbridge" else None)
        if not to_aws_producer:
            region = region or _stack_region(state_dir) or "us-east-1"  # the embedded stack's default region
        else:
            from forwarder_local.aws_cli import region_for

            region = region_for(url, region, profile)  # --region, else botocore's (AWS_REGION, the profile's)
        _send_as_producer(
            via,
            KIND_ACTIONS[kind],
            group_key,
            data,
            source,
            queue_url,
            event_bus,
            state_dir,
            config_path,
            region,
            profile,
        )
        return
    url, auth = api_target(
        url, stack, region, profile, access_key, secret_key, session_token, state_dir, group_key, config_path
    )
    method, path = ROUTES[kind]
    if rows_file is not None:
        _backfill(rows_file, url, method, path, group_key, auth, state_dir, data, concurrency, rate, max_rows)
        return
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


def _backfill(
    rows_file: Path,
    url: str,
    method: str,
    route: str,
    group_key: str,
    auth: Any,
    state_dir: Path,
    extra: dict[str, Any],
    concurrency: int,
    rate: float,
    max_rows: int | None,
) -> None:
    """Send a CSV / JSON Lines file row by row (forwarder_local.backfill) and print the summary."""
    from forwarder_local.backfill import BackfillError, backfill

    try:
        summary = backfill(
            rows_file,
            url=url,
            method=method,
            route=route,
            group_key=group_key,
            auth=auth,
            state_dir=state_dir,
            extra=extra,
            concurrency=concurrency,
            rate=rate,
            max_rows=max_rows,
        )
    except BackfillError as error:
        raise click.ClickException(str(error)) from None
    for line in summary.lines():
        click.echo(line)
    if summary.interrupted:
        sys.exit(130)
    if summary.fatal or summary.refused_count or summary.unsent:
        sys.exit(1)


def api_target(
    url: str,
    stack: str | None,
    region: str | None,
    profile: str | None,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    state_dir: Path,
    group_key: str | None,
    config_path: Path | None,
) -> tuple[str, Any]:
    """The API's base URL and a ``requests`` auth that signs for it (SigV4, ``execute-api``): the embedded
    stack's issued key for a local URL (its region), else ``--access-key``/``--secret-key`` when given, else
    botocore's credentials (profiles, SSO, ``AWS_*`` variables, roles) for the stack's or URL's region."""
    from requests_aws4auth import AWS4Auth

    if stack:
        from forwarder_local.aws_cli import api_url_for_stack

        url = api_url_for_stack(stack, region, profile)
    host = (urlsplit(url).hostname or "").lower()
    local_host = host in ("127.0.0.1", "localhost", "::1")
    local = local_host and (state_dir / "credentials.json").exists()
    if local_host:
        region = region or _stack_region(state_dir) or "us-east-1"  # the embedded stack's default region
    else:
        from forwarder_local.aws_cli import execute_api_auth, region_for

        region = region_for(url, region, profile)  # --region, else botocore's (AWS_REGION, the profile's)
        if not access_key and not secret_key:
            # a deployed API: botocore's credential chain (profiles, SSO, AWS_* variables, instance roles)
            return url, execute_api_auth(region, profile)
    if not access_key or not secret_key:
        env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        # Against the local stack, the environment's keys count only if the stack issued them (e.g. from
        # `eval "$(forwarder clients session ...)"`), never a developer's own AWS keys.
        if env_key and env_secret and not access_key and (not local or _issued_locally(state_dir, env_key)):
            access_key, secret_key = env_key, env_secret
        else:
            access_key, secret_key = _local_keys(state_dir, access_key, group_key, config_path)
            session_token = None
    return url, AWS4Auth(access_key, secret_key, region, "execute-api", session_token=session_token)


def _send_as_producer(
    via: str,
    action_name: str,
    group_key: str,
    data: dict[str, Any],
    source: str | None,
    queue_url: str | None,
    event_bus: str | None,
    state_dir: Path,
    config_path: Path | None,
    region: str,
    profile: str | None = None,
) -> None:
    """Send a record as an SQS or EventBridge producer: to AWS when --queue-url / --event-bus says where, else
    to the embedded stack's producer queue, or its bus (which forwards it as the stack's rule does)."""
    from forwarder.contract import Action
    from forwarder_local.eventbus import LocalEventBus, put_entry, send_to_producer_queue

    action = Action(action_name)
    kind = "sqs" if via == "sqs" else "eventbridge"
    source = source or _default_source(kind, group_key, state_dir, config_path)
    on_aws = queue_url if via == "sqs" else event_bus
    if on_aws:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            if via == "sqs":
                sent = (
                    boto3.Session(profile_name=profile)
                    .client("sqs", region_name=region)
                    .send_message(
                        QueueUrl=queue_url,
                        MessageBody=json.dumps({"group_key": group_key, "data": data}, ensure_ascii=False),
                        MessageAttributes={
                            "source": {"DataType": "String", "StringValue": source},
                            "action": {"DataType": "String", "StringValue": action.value},
                        },
                    )
                )
                click.echo(json.dumps({"MessageId": sent["MessageId"]}))
            else:
                entry = {**put_entry(group_key, data, action, source), "EventBusName": event_bus}
                events = boto3.Session(profile_name=profile).client("events", region_name=region)
                put = events.put_events(Entries=[entry])
                click.echo(
                    json.dumps({"FailedEntryCount": put["FailedEntryCount"], "Entries": put["Entries"]})
                )
                if put["FailedEntryCount"]:
                    sys.exit(1)
        except (BotoCoreError, ClientError) as error:
            raise click.ClickException(f"AWS refused it: {error}") from None
        return
    from forwarder_local.queue import DurableQueueStore

    path = state_dir / "queues.db"
    if not path.exists():
        raise click.ClickException(f"no queues at {path}; start the embedded stack first")
    store = DurableQueueStore(path)
    try:
        if via == "sqs":
            message_id = send_to_producer_queue(store, group_key, data, action, source)
            click.echo(f"sent to the producer queue as source '{source}', action {action.value}")
            click.echo(json.dumps({"MessageId": message_id}))
            return
        (result,) = LocalEventBus(store).put_events([put_entry(group_key, data, action, source)])
    finally:
        store.close()
    failed = int(result.event_id is None)
    click.echo(json.dumps({"FailedEntryCount": failed, "Entries": [result.as_entry()]}))
    if failed:
        sys.exit(1)
    if not result.matched:
        click.echo(f"(put on the bus, but the forwarder's rule does not match source '{source}')", err=True)


def _default_source(kind: str, group_key: str, state_dir: Path, config_path: Path | None) -> str:
    """The first source of ``kind`` in the stack's config that may write to ``group_key``."""
    from forwarder.config import ConfigError, load_config
    from forwarder_local.stack import DEFAULT_CONFIG

    path = config_path or _stack_config(state_dir) or DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as error:
        raise click.ClickException(f"give --source (cannot read {error.source})") from None
    for source in config.sources:
        if source.kind == kind and source.allows(group_key):
            return str(source.name if kind == "sqs" else source.event_source)
    raise click.ClickException(
        f"no {kind} source of {path} may write to group key '{group_key}'; give --source"
    )


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


# --- clients -----------------------------------------------------------------------------------------------


@main.group()
def clients() -> None:
    """Access keys of the embedded stack's clients: issue, list, revoke, and temporary credentials.

    A client is an entry of the config's `clients`; the stack issues keys to its IAM user principal
    (arn:aws:iam::ACCOUNT:user/NAME), so the key signs as that client. The gateway reads the keys on every
    request: a key issued or revoked here counts at once, with no restart.

    \b
    Example:
      forwarder clients create -g demo
      forwarder clients list
    """


def _clients_config(state_dir: Path, config_path: Path | None) -> tuple[Any, Path]:
    from forwarder.config import ConfigError, load_config
    from forwarder_local.stack import DEFAULT_CONFIG

    path = config_path or _stack_config(state_dir) or DEFAULT_CONFIG
    try:
        return load_config(path), path
    except ConfigError as error:
        raise click.ClickException("\n".join([f"invalid config {error.source}:", *error.problems])) from None


def _client_user(config: Any, config_path: Path, group_key: str, name: str | None) -> tuple[str, str]:
    """(client name, IAM user ARN) of the config client allowed to use ``group_key`` (``name`` picks one)."""
    from forwarder_local.stack import issuable_user

    if group_key not in config.group_keys:
        raise click.ClickException(
            f"group key '{group_key}' is not in {config_path}; known: {', '.join(sorted(config.group_keys))}"
        )
    allowed = [client for client in config.clients if client.allows(group_key)]
    if name is not None:
        chosen = next((client for client in config.clients if client.name == name), None)
        if chosen is None:
            raise click.ClickException(f"no client '{name}' in {config_path}")
        if chosen not in allowed:
            raise click.ClickException(
                f"client '{name}' may not use group key '{group_key}': add it to the client's group_keys "
                f"in {config_path} (and restart the stack)"
            )
    elif not allowed:
        raise click.ClickException(
            f"no client in {config_path} may use group key '{group_key}': add one to its clients, e.g.\n"
            f"  - name: {group_key}-producer\n"
            f"    principals: [arn:aws:iam::000000000000:user/{group_key}-producer]\n"
            f"    group_keys: [{group_key}]\n"
            "and restart the stack"
        )
    elif len(allowed) > 1:
        names = ", ".join(f"'{client.name}'" for client in allowed)
        raise click.ClickException(f"clients {names} may use group key '{group_key}': pick one with --client")
    else:
        chosen = allowed[0]
    user = next((principal for principal in chosen.principals if issuable_user(principal)), None)
    if user is None:
        raise click.ClickException(
            f"client '{chosen.name}' has no IAM user principal to issue a key to: add one such as "
            f"arn:aws:iam::000000000000:user/{chosen.name} to its principals in {config_path} "
            "(and restart the stack)"
        )
    return chosen.name, user


def _state_option(function: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_STATE,
        help="the embedded stack's state folder (its keys are in credentials.json there)",
    )(function)


def _config_option(function: Any) -> Any:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="config document (default: the one the stack runs, else config/forwarder.yaml)",
    )(function)


@clients.command("create")
@click.option("--group-key", "-g", required=True, help="the group key the key is for")
@click.option("--client", "client_name", help="the config client (when several may use the group key)")
@_state_option
@_config_option
def clients_create(
    group_key: str, client_name: str | None, state_dir: Path, config_path: Path | None
) -> None:
    """Issue a new access key to the client allowed to use GROUP_KEY. The secret is shown once.

    \b
    Example:
      forwarder clients create --group-key demo
    """
    from forwarder_local.stores import LocalCredentials

    config, path = _clients_config(state_dir, config_path)
    name, user = _client_user(config, path, group_key, client_name)
    state_dir.mkdir(parents=True, exist_ok=True)
    access_key, secret = LocalCredentials(state_dir / "credentials.json").create_key(user)
    region = _stack_region(state_dir) or "us-east-1"
    click.echo(f"issued a new access key to client '{name}' ({user}), allowed group key '{group_key}':")
    click.echo(f"  access key id      {access_key}")
    click.echo(f"  secret access key  {secret}")
    click.echo("The secret is shown only now (`forwarder clients list` never shows it). Sign with SigV4 for")
    click.echo(
        f"region {region}, service execute-api; or let `forwarder send --access-key {access_key}` sign."
    )


@clients.command("list")
@click.option("--group-key", "-g", help="only keys of clients allowed to use this group key")
@_state_option
@_config_option
def clients_list(group_key: str | None, state_dir: Path, config_path: Path | None) -> None:
    """List the issued access keys (never a secret): client, user, kind, state.

    \b
    Example:
      forwarder clients list -g demo
    """
    from forwarder_local.stores import LocalCredentials

    config, _ = _clients_config(state_dir, config_path)
    now = time.time()
    rows = []
    for key in LocalCredentials(state_dir / "credentials.json").issued():
        client = config.client_for(key.access_key_id, key.user_arn)
        if group_key is not None and (client is None or not client.allows(group_key)):
            continue
        kind = f"temporary (from {key.issued_from})" if key.temporary else "long-term"
        state = key.state(now)
        when = {"revoked": key.revoked_at, "expired": key.expires_at, "active": key.expires_at}[state]
        if when:
            state = f"{state} {'until' if state == 'active' else 'since'} {when}"
        owner = client.name if client else "(no client)"
        rows.append((key.access_key_id, owner, key.user_arn, kind, state, key.created_at or ""))
    if not rows:
        click.echo(
            "no access keys" + (f" of clients allowed to use group key '{group_key}'" if group_key else "")
        )
        return
    header = ("ACCESS KEY ID", "CLIENT", "USER", "KIND", "STATE", "CREATED")
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


@clients.command("revoke")
@click.argument("access_key")
@_state_option
@_config_option
def clients_revoke(access_key: str, state_dir: Path, config_path: Path | None) -> None:
    """Revoke ACCESS_KEY (and the temporary credentials issued with it): the gateway refuses it at once.

    \b
    Example:
      forwarder clients revoke ACCESS_KEY_ID        # the id `forwarder clients list` shows
    """
    from forwarder_local.stores import CredentialsError, LocalCredentials

    credentials = LocalCredentials(state_dir / "credentials.json")
    try:
        revoked = credentials.revoke(access_key)
    except CredentialsError as error:
        raise click.ClickException(f"{error} ({state_dir / 'credentials.json'})") from None
    issued = credentials.lookup(access_key)
    config, _ = _clients_config(state_dir, config_path)
    client = config.client_for(access_key, issued.user_arn if issued else None)
    owner = f"client '{client.name}'" if client else "no client"
    click.echo(f"revoked {access_key} ({owner}); the gateway refuses it from now on")
    if len(revoked) > 1:
        click.echo(f"and the temporary credentials issued with it: {', '.join(revoked[1:])}")


@clients.command("session")
@click.option("--access-key", help="the long-term key to issue them with (default: the client's first)")
@click.option("--group-key", "-g", help="pick the client allowed to use this group key")
@click.option("--client", "client_name", help="the config client (when several may use the group key)")
@click.option(
    "--duration-seconds",
    type=click.IntRange(900, 129_600),
    default=43_200,
    show_default=True,
    help="how long they are valid (STS GetSessionToken's range: 15 minutes to 36 hours)",
)
@_state_option
@_config_option
def clients_session(
    access_key: str | None,
    group_key: str | None,
    client_name: str | None,
    duration_seconds: int,
    state_dir: Path,
    config_path: Path | None,
) -> None:
    """Issue temporary credentials (access key id, secret, session token, expiry), as STS GetSessionToken does.

    Prints shell exports, so `eval "$(forwarder clients session -g demo)"` lets `forwarder send`, the AWS
    SDKs and curl's aws-sigv4 sign with them.

    \b
    Example:
      eval "$(forwarder clients session -g demo --duration-seconds 3600)"
    """
    from forwarder_local.stores import CredentialsError, LocalCredentials

    credentials = LocalCredentials(state_dir / "credentials.json")
    if access_key is None:
        if group_key is None:
            raise click.UsageError("give --access-key, or --group-key to use its client's key")
        config, path = _clients_config(state_dir, config_path)
        name, user = _client_user(config, path, group_key, client_name)
        found = credentials.for_user(user)
        if found is None:
            raise click.ClickException(
                f"client '{name}' has no active access key: `forwarder clients create --group-key {group_key}`"
            )
        access_key = found[0]
    try:
        session = credentials.create_session(access_key, duration_seconds)
    except CredentialsError as error:
        raise click.ClickException(str(error)) from None
    click.echo(
        f"temporary credentials issued with {access_key}, valid until {session.expires_at}, shown only now; "
        f"sign for region {_stack_region(state_dir) or 'us-east-1'}, service execute-api:",
        err=True,
    )
    click.echo(f"export AWS_ACCESS_KEY_ID={session.access_key_id}")
    click.echo(f"export AWS_SECRET_ACCESS_KEY={session.secret_access_key}")
    click.echo(f"export AWS_SESSION_TOKEN={session.session_token}")


# --- config ------------------------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Check and preview config documents.

    \b
    Example:
      forwarder config check config/forwarder.yaml
      forwarder config preview config/forwarder.yaml -g demo --set email=jane@example.com
    """


@config.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_check(path: Path) -> None:
    """Validate a config document; every problem is printed with its path and line (exit 1 if any).

    \b
    Example:
      forwarder config check config/forwarder.yaml
    """
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
        f"{len(loaded.group_keys)} group key(s), {integrations} integration(s)"
        + (f", {len(loaded.hooks)} hook(s))" if loaded.hooks else ")")
    )


@config.command("preview")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--group-key", "-g", required=True, help="the group key whose integrations the record goes to")
@click.option(
    "--kind",
    type=click.Choice(sorted(ROUTES)),
    default="contacts",
    show_default=True,
    help="the route: contacts (upsert), delete or event",
)
@click.option(
    "--set",
    "-s",
    "pairs",
    multiple=True,
    metavar="ATTR=VALUE",
    help="a data attribute, as for forwarder send (text, or a JSON list, true, false, null)",
)
@click.option("--file", "-f", "data_file", type=click.File("r"), help="JSON file with the data object")
def config_preview(path: Path, group_key: str, kind: str, pairs: tuple[str, ...], data_file: Any) -> None:
    """Dry run: the vendor requests (or rejections) a record would cause, without reaching any vendor.

    Each integration's own code delivers the record to its vendor's sandbox, started in memory for the
    preview; the requests it received are printed (method, the vendor's URL, query, body; tokens hidden), as
    for a customer the vendor does not hold yet. Exit 1 when every integration would reject the record.

    \b
    Example:
      forwarder config preview config/forwarder.yaml -g demo --set email=jane@example.com --set first_name=Jane
      forwarder config preview config/forwarder.yaml -g demo --kind delete --set email=jane@example.com
    """
    from forwarder.config import ConfigError, load_config
    from forwarder.contract import ContractError, check_flat
    from forwarder.flows.validate import plan
    from forwarder.messages import IngestMessage, utcnow_iso

    data: dict[str, Any] = json.load(data_file) if data_file else {}
    data = data.get("data", data) if isinstance(data, dict) else {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        data[name] = parse_set_value(value)
    action = KIND_ACTIONS[kind]
    try:
        message = IngestMessage(
            request_id="preview",
            action=action,
            group_key=group_key,
            data=check_flat(data),
            received_at=utcnow_iso(),
            client="preview",
        )
        loaded = load_config(path)
        deliveries, rejections = plan(loaded, message)
    except ConfigError as error:
        raise click.ClickException("\n".join(error.problems)) from None
    except ContractError as error:
        raise click.ClickException(error.message) from None
    from forwarder_local.preview import vendor_requests

    previews = vendor_requests(loaded, deliveries)
    output = {
        "deliveries": previews,
        "rejections": [
            rejection.model_dump(include={"integration", "reason", "errors"}) for rejection in rejections
        ],
    }
    click.echo(json.dumps(output, indent=2, ensure_ascii=False))
    if not any(item["outcome"] == "delivered" for item in previews):
        click.echo("every integration would reject this record", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
