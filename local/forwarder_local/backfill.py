"""Backfill: send a brand's existing contacts from a CSV or JSON Lines file, one signed request per row.

``forwarder send contacts --file customers.csv`` (or ``.jsonl``) reads the file row by row and sends each row
as its own request, at most ``concurrency`` at a time and ``rate`` per second, under a progress bar. It is
resumable: each row carries an ``Idempotency-Key`` derived from the backfill (the file's SHA-256, the route,
the group key and any ``--set`` values) and the row's line, and a progress file in the state folder
(``backfill/<id>.jsonl``) records each row the API accepted or refused for good, so a run started again skips
them. A row sent twice (it was in flight when the run was stopped) is a no-op at the API: the same key and
request get the first answer for 24 hours and queue nothing.

File rules:

* **CSV**: UTF-8 (a byte order mark is fine), the first row names the attributes. An empty cell (or one of
  only spaces) leaves the attribute out. A cell holding a JSON list (``["vip","newsletter"]``), ``true``,
  ``false`` or ``null`` is that value; every other cell is text exactly as written (``0047`` stays text, as
  with ``--set``). A row with more cells than the header names is refused (``INVALID_ROW``), not sent.
* **JSON Lines** (``.jsonl``, ``.ndjson``): one JSON object per line, the data object itself or
  ``{"data": {...}}``; blank lines are skipped. A line that is not a JSON object is refused (``INVALID_ROW``).
* Rows are named by their line in the file (a CSV row's first line), so a refused row can be found in an
  editor. ``--set ATTR=VALUE`` adds or overrides an attribute on every row.

Answers: 202 is accepted. 400, 413 and 422 refuse the row (its code, message and attribute are kept for the
summary). 409, 429, 5xx and connection errors are retried (at most 5 attempts, honouring ``Retry-After``),
and if they persist, the row is left for the next run. A refusal that concerns every row (401, 403, 404,
405, 411, 415, or ``NO_INTEGRATION_FOR_ACTION``: credentials, group key, URL) stops the backfill at once.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
import requests

from forwarder_local.values import parse_set_value

#: file suffixes a backfill reads, and how
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
#: refusals about the request as a whole (credentials, URL, group key, route): every row would get them
FATAL_STATUSES = frozenset({401, 403, 404, 405, 411, 415})
FATAL_CODES = frozenset({"NO_INTEGRATION_FOR_ACTION"})
MAX_ATTEMPTS = 5
MAX_BACKOFF_SECONDS = 10.0
#: rows named per refusal code in the summary
ROWS_SHOWN = 5


class BackfillError(Exception):
    """The backfill cannot start or go on (an unreadable file, a header without names, a refusal of every
    row); the message says what to fix."""


@dataclass(frozen=True)
class Row:
    """One record of the file: its line (a CSV record's first line), its data, or why it cannot be sent."""

    line: int
    data: dict[str, Any]
    problem: str | None = None


@dataclass
class Outcome:
    """What the API made of one row (``status`` None: no answer, or refused before sending)."""

    line: int
    status: int | None
    code: str | None = None
    message: str = ""
    attribute: str | None = None
    request_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 202

    @property
    def final(self) -> bool:
        """Accepted or refused for good: a resumed run skips the row. A refusal of every row (``fatal``) is
        not the row's: it is sent again once that is fixed."""
        return self.accepted or (
            self.status is not None and self.status not in RETRY_STATUSES and not self.fatal
        )

    @property
    def fatal(self) -> bool:
        return self.status in FATAL_STATUSES or self.code in FATAL_CODES


@dataclass
class Summary:
    """A backfill's totals, rows of earlier runs of the same backfill included."""

    file: Path
    progress_path: Path
    rows: int = 0
    accepted: int = 0
    accepted_before: int = 0
    #: refusal code -> lines, and per code each distinct message -> its lines
    refused: dict[str, list[int]] = field(default_factory=dict)
    messages: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    #: lines still unanswered after every attempt (the API unavailable): the next run sends them
    unsent: list[int] = field(default_factory=list)
    sent: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    fatal: str | None = None

    @property
    def refused_count(self) -> int:
        return sum(len(lines) for lines in self.refused.values())

    @property
    def left(self) -> int:
        """Rows neither accepted nor refused: the next run of the same command sends them."""
        return self.rows - self.accepted - self.refused_count

    def add(self, outcome: Outcome, *, earlier: bool = False) -> None:
        if outcome.accepted:
            self.accepted += 1
            self.accepted_before += earlier
        elif outcome.final:
            code = outcome.code or f"HTTP_{outcome.status}"
            self.refused.setdefault(code, []).append(outcome.line)
            named = outcome.attribute and outcome.attribute not in outcome.message
            attribute = f" ({outcome.attribute})" if named else ""
            self.messages.setdefault(code, {}).setdefault(f"{outcome.message}{attribute}", []).append(
                outcome.line
            )
        else:
            self.unsent.append(outcome.line)

    def lines(self) -> list[str]:
        """The summary as printed at the end of a run."""
        rate = f", {self.sent / self.seconds:,.0f} rows/s" if self.seconds > 0 and self.sent else ""
        out = [
            f"{self.file}: {self.rows:,} row(s); sent {self.sent:,} in this run ({self.seconds:.1f} s{rate})",
            f"  accepted  {self.accepted:,}"
            + (f" ({self.accepted_before:,} in an earlier run)" if self.accepted_before else ""),
            f"  refused   {self.refused_count:,}",
        ]
        groups = [
            (code, message, lines)
            for code, by_message in self.messages.items()
            for message, lines in by_message.items()
        ]
        for code, message, lines in sorted(groups, key=lambda group: (-len(group[2]), group[0], group[1])):
            shown = ", ".join(str(line) for line in sorted(lines)[:ROWS_SHOWN])
            more = f" and {len(lines) - ROWS_SHOWN:,} more" if len(lines) > ROWS_SHOWN else ""
            which = "line" if len(lines) == 1 else "lines"
            out.append(f"    {code}  {len(lines):,} row(s), {which} {shown}{more}: {message}")
        if self.left:
            why = (
                "interrupted"
                if self.interrupted
                else "the backfill stopped: every row would get the refusal below"
                if self.fatal
                else f"the API did not accept them after {MAX_ATTEMPTS} attempts"
                if self.unsent
                else "stopped early"
            )
            out.append(
                f"  left      {self.left:,} ({why}; run the same command again to send them, "
                "rows done are skipped)"
            )
        if self.fatal:
            out.append(f"  stopped: {self.fatal}")
        out.append(f"  progress  {self.progress_path}")
        return out


# --- the file ----------------------------------------------------------------------------------------------


def is_backfill_file(name: str) -> bool:
    return Path(name).suffix.lower() in FORMATS


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_rows(path: Path) -> Iterator[Row]:
    """The file's rows in order (see the module's file rules). Raises BackfillError for a file that cannot
    be read at all."""
    try:
        if FORMATS.get(path.suffix.lower()) == "csv":
            yield from _csv_rows(path)
        else:
            yield from _jsonl_rows(path)
    except UnicodeDecodeError as error:
        raise BackfillError(f"{path} is not UTF-8 text (byte {error.start})") from None
    except csv.Error as error:
        raise BackfillError(f"{path} is not readable CSV: {error}") from None


def _csv_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        names = [name.strip() for name in header]
        if not all(names):
            raise BackfillError(
                f"{path}: the header row has an empty column name (column {names.index('') + 1})"
            )
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise BackfillError(f"{path}: the header row names {', '.join(repeated)} more than once")
        line = reader.line_num + 1
        for cells in reader:
            first, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):  # a blank line, or one of separators only (",,")
                continue
            if len(cells) > len(names):
                yield Row(first, {}, f"{len(cells)} cells, but the header names {len(names)} attributes")
                continue
            # a short row: the cells it lacks are empty, so absent
            data = {
                name: parse_set_value(cell) for name, cell in zip(names, cells, strict=False) if cell.strip()
            }
            yield Row(first, data)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                document = json.loads(text)
            except json.JSONDecodeError as error:
                yield Row(line, {}, f"not JSON: {error.msg} (column {error.colno})")
                continue
            if isinstance(document, dict) and isinstance(document.get("data"), dict):
                document = document["data"]
            if not isinstance(document, dict):
                yield Row(line, {}, "not a JSON object of attributes")
                continue
            yield Row(line, document)


# --- progress ----------------------------------------------------------------------------------------------


def backfill_id(digest: str, method: str, route: str, group_key: str, extra: Mapping[str, Any]) -> str:
    """The backfill's identity: the same file sent the same way is the same backfill (and resumes)."""
    what = json.dumps([digest, method, route, group_key, dict(sorted(extra.items()))], ensure_ascii=False)
    return hashlib.sha256(what.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def idempotency_key(run_id: str, line: int) -> str:
    return f"backfill-{run_id}-{line}"


def read_progress(path: Path) -> dict[int, Outcome]:
    """Rows an earlier run finished (accepted or refused for good), by line. A last line cut short by a kill
    is ignored: that row is sent again, which the API answers as the first time."""
    done: dict[int, Outcome] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return done
    for entry_text in text.splitlines():
        try:
            entry = json.loads(entry_text)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("line"), int):
            outcome = Outcome(
                entry["line"],
                entry.get("status"),
                entry.get("code"),
                entry.get("message", ""),
                entry.get("attribute"),
                entry.get("request_id"),
            )
            if outcome.final:
                done[outcome.line] = outcome
    return done


def _record(handle: IO[str], outcome: Outcome) -> None:
    entry: dict[str, Any] = {"line": outcome.line, "status": outcome.status}
    if outcome.accepted:
        entry["request_id"] = outcome.request_id
    else:
        entry.update(code=outcome.code, message=outcome.message, attribute=outcome.attribute)
    handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    handle.flush()


# --- sending -----------------------------------------------------------------------------------------------


class _RateLimit:
    """At most ``rate`` starts per second (0: no limit), paced evenly."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at = max(self.next_at, now - self.interval) + self.interval


class _SerialAuth(requests.auth.AuthBase):
    """Signs one request at a time: an auth shared by the sending threads (``AWS4Auth`` keeps its signing key
    and, with botocore's refreshable credentials, renews them in place) is not thread-safe."""

    def __init__(self, auth: Any) -> None:
        self._auth, self._lock = auth, threading.Lock()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        with self._lock:
            signed: requests.PreparedRequest = self._auth(request)
        return signed


class _Sender:
    def __init__(self, url: str, method: str, auth: Any, timeout: float, stop: threading.Event) -> None:
        self.url, self.method, self.timeout, self.stop = url, method, timeout, stop
        self.auth = _SerialAuth(auth) if auth is not None else None
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def send(self, line: int, body: dict[str, Any], key: str) -> Outcome:
        outcome = Outcome(line, None, "UNREACHABLE", "no answer")
        for attempt in range(MAX_ATTEMPTS):
            if attempt and self.stop.is_set():
                break
            retry_after = None
            try:
                response = self._session().request(
                    self.method,
                    self.url,
                    json=body,
                    auth=self.auth,
                    headers={"Idempotency-Key": key},
                    timeout=self.timeout,
                )
            except requests.RequestException as error:
                outcome = Outcome(
                    line, None, "UNREACHABLE", f"no answer from the API ({type(error).__name__})"
                )
            else:
                outcome = _outcome(line, response)
                if outcome.final or outcome.fatal:
                    return outcome
                retry_after = _seconds(response.headers.get("Retry-After"))
            backoff = retry_after if retry_after is not None else 0.25 * 2**attempt
            if attempt + 1 < MAX_ATTEMPTS and self.stop.wait(min(backoff, MAX_BACKOFF_SECONDS)):
                break
        return outcome


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _outcome(line: int, response: requests.Response) -> Outcome:
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if response.status_code == 202:
        return Outcome(line, 202, request_id=str(answer.get("request_id", "")))
    code = answer.get("code") or response.headers.get("x-amzn-ErrorType") or f"HTTP_{response.status_code}"
    message = str(answer.get("message") or response.reason or "")
    attribute = answer.get("attribute")
    return Outcome(line, response.status_code, str(code), message, str(attribute) if attribute else None)


# --- the run -----------------------------------------------------------------------------------------------


def backfill(
    path: Path,
    *,
    url: str,
    method: str,
    route: str,
    group_key: str,
    auth: Any,
    state_dir: Path,
    extra: Mapping[str, Any] | None = None,
    concurrency: int = 8,
    rate: float = 100.0,
    max_rows: int | None = None,
    timeout: float = 30.0,
    show_progress: bool = True,
) -> Summary:
    """Send every row of ``path`` not done by an earlier run of the same backfill to ``url + route``, signed
    by ``auth`` (any ``requests`` auth: ``AWS4Auth``, botocore's credentials); returns the totals.

    Ctrl-C stops sending, waits for the rows in flight and records them: the summary says what is left."""
    extra = dict(extra or {})
    digest = file_digest(path)
    run_id = backfill_id(digest, method, route, group_key, extra)
    folder = state_dir / "backfill"
    folder.mkdir(parents=True, exist_ok=True)
    progress_path = folder / f"{run_id}.jsonl"
    done = read_progress(progress_path)
    summary = Summary(file=path, progress_path=progress_path)
    summary.rows = sum(1 for _ in read_rows(path))
    for outcome in done.values():
        summary.add(outcome, earlier=True)

    stop = threading.Event()
    sender = _Sender(url.rstrip("/") + route, method, auth, timeout, stop)
    limit = _RateLimit(rate)
    started = time.monotonic()
    new_file = not progress_path.exists()
    with progress_path.open("a", encoding="utf-8") as handle:
        if new_file:
            header = {
                "backfill": run_id,
                "file": str(path.resolve()),
                "sha256": digest,
                "route": f"{method} {route}",
                "group_key": group_key,
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            handle.write(json.dumps(header) + "\n")
        pending: set[Future[Outcome]] = set()

        def finish(futures: set[Future[Outcome]], bar: Any) -> None:
            for future in futures:
                outcome = future.result()
                summary.add(outcome)
                if outcome.final:
                    _record(handle, outcome)
                if outcome.fatal and summary.fatal is None:
                    summary.fatal = (
                        f"{outcome.status} {outcome.code}: {outcome.message} (every row would get it)"
                    )
                    stop.set()
                bar.update(1, outcome)

        def collect(bar: Any, until: int) -> None:
            nonlocal pending
            while len(pending) > until:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                finish(finished, bar)

        def status(_: Outcome | None) -> str:
            elapsed = time.monotonic() - started
            speed = summary.sent / elapsed if elapsed > 0 else 0.0
            return f"{speed:,.0f} rows/s  refused {summary.refused_count:,}"

        bar_context = click.progressbar(
            length=max(summary.rows, 1),
            label=f"backfill {path.name}",
            item_show_func=status,
            show_pos=True,
            file=None if show_progress else io.StringIO(),
        )
        with (
            ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="backfill") as pool,
            bar_context as bar,
        ):
            bar.update(len(done))
            try:
                for row in read_rows(path):
                    if stop.is_set():
                        break
                    if row.line in done:
                        continue
                    if max_rows is not None and summary.sent >= max_rows:
                        break
                    if row.problem is not None:
                        refused = Outcome(row.line, 0, "INVALID_ROW", row.problem)  # 0: never sent
                        summary.add(refused)
                        _record(handle, refused)
                        bar.update(1, refused)
                        continue
                    collect(bar, 2 * concurrency - 1)
                    limit.wait()
                    body = {"data": {**row.data, **extra}, "group_key": group_key}
                    pending.add(pool.submit(sender.send, row.line, body, idempotency_key(run_id, row.line)))
                    summary.sent += 1
                collect(bar, 0)
            except KeyboardInterrupt:
                summary.interrupted = True
                stop.set()
                collect(bar, 0)
    summary.seconds = time.monotonic() - started
    return summary
