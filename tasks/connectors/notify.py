"""Run notifications: one Slack message per run, problems in its thread.

The seam is ``Notifier.post``; there are two implementations:

- ``SlackNotifier``: the real ``slack_sdk.WebClient`` (``chat.postMessage``), against
  ``settings.slack_base_url`` (a local server speaking Slack's Web API in tests).
- ``ConsoleNotifier``: used when no token is set. Prints each message to stderr with
  rich and appends it as a JSON line to ``OPENBELL_HOME/notifications.jsonl``.

``notify_run`` posts the run's summary (Block Kit: a header with runbook, region, trade
date and overall status, the step counts per status, a context line with run id and
duration), then one threaded reply per failed or unknown step listing its targets,
split to respect Slack's limits (50 blocks per message, 3000 characters per text).

Every string is passed through ``openbell.secrets.redact`` before it leaves, and user
text is escaped so a target name cannot ping ``@channel`` or forge a link. A failed
delivery (Slack error, no connection, rate limit after one bounded retry) comes back as
``Delivery(ok=False, error=...)`` and is logged: notifying never fails a runbook.

Example:
    >>> notifier = get_notifier(get_settings())            # doctest: +SKIP
    >>> notify_run(notifier, "#emea-oncall", notice)        # doctest: +SKIP
    [Delivery(ok=True, kind='summary', ...), Delivery(ok=True, kind='detail', ...)]
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from pydantic import SecretStr
from rich.console import Console
from rich.panel import Panel
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from openbell.errors import NotifyError
from openbell.outcome import Status
from openbell.secrets import redact, register
from openbell.settings import Settings

log = logging.getLogger(__name__)

#: Slack's limits (https://api.slack.com/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_FIELD_TEXT = 2000
MAX_FALLBACK_TEXT = 3000  # Slack truncates `text` at 40 000; a fallback should be short

EMOJI = {
    Status.OK: ":white_check_mark:",
    Status.CHANGED: ":large_blue_circle:",
    Status.SKIPPED: ":fast_forward:",
    Status.FAILED: ":x:",
    Status.UNKNOWN: ":grey_question:",
}
_PROBLEMS = (Status.FAILED, Status.UNKNOWN)


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class MessageRef:
    """Where a posted message lives: its channel (Slack's id) and timestamp."""

    channel: str
    ts: str


@dataclass(frozen=True)
class Delivery:
    """The fate of one message.

    Attributes:
        ok: delivered.
        kind: ``summary`` or ``detail``.
        channel: the channel asked for.
        ts: the message's timestamp, when delivered.
        thread_ts: the summary's timestamp, for threaded details.
        step: the step a detail message is about.
        error: why it was not delivered.
    """

    ok: bool
    kind: str
    channel: str
    ts: str | None = None
    thread_ts: str | None = None
    step: str | None = None
    error: str | None = None


class TargetNotice(NamedTuple):
    """One target with a problem: ``("emea-app1", Status.FAILED, "disk 93% used")``."""

    target: str
    status: Status
    detail: str


class StepNotice(NamedTuple):
    """One step of the run, with the targets that had a problem."""

    name: str
    status: Status
    detail: str
    problems: Sequence[TargetNotice] = ()


@dataclass(frozen=True)
class RunNotice:
    """What a run's notification says.

    Attributes:
        runbook: e.g. ``sod``.
        region: e.g. ``emea``.
        trade_date: the session the run was for.
        status: the overall status.
        title: a one-line title, e.g. ``Start of day EMEA 2026-11-27``.
        run_id: the run's id.
        started: when the run started.
        finished: when it finished (None: still running).
        steps: each step; plain ``(name, status, detail, [(target, status, detail)])``
            tuples are accepted.
        report_path: where the report is, if written.
        ledger_head: the ledger's head after the run finished, ``"<seq> <hash>"``: a
            copy of the checkpoint outside the ledger's database.
    """

    runbook: str
    region: str
    trade_date: date
    status: Status
    title: str
    run_id: str
    started: datetime
    finished: datetime | None = None
    steps: Sequence[StepNotice] = field(default_factory=list)
    report_path: str | Path | None = None
    ledger_head: str | None = None


# --------------------------------------------------------------------------- notifiers
@runtime_checkable
class Notifier(Protocol):
    """Posts one message. Raises ``NotifyError`` when it cannot be delivered."""

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> MessageRef: ...


class SlackNotifier:
    """Posts with Slack's Web API through ``slack_sdk.WebClient``.

    Args:
        token: the bot token (registered for redaction).
        base_url: the Web API root, ending in ``/api/``.
        timeout_s: limit per HTTP request.
        max_rate_limit_wait_s: longest ``Retry-After`` honoured; a longer one fails at once.
        rate_limit_retries: retries after HTTP 429.

    Example:
        >>> SlackNotifier("xoxb-...", base_url="https://slack.com/api/")  # doctest: +SKIP
    """

    def __init__(
        self,
        token: SecretStr | str,
        *,
        base_url: str = "https://slack.com/api/",
        timeout_s: float = 10.0,
        max_rate_limit_wait_s: float = 5.0,
        rate_limit_retries: int = 1,
    ) -> None:
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        register(secret)
        self.base_url = base_url
        self.max_rate_limit_wait_s = max_rate_limit_wait_s
        self.rate_limit_retries = rate_limit_retries
        self._client = WebClient(
            token=secret, base_url=base_url, timeout=max(1, math.ceil(timeout_s))
        )

    def __repr__(self) -> str:
        return f"SlackNotifier(base_url={self.base_url!r})"

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> MessageRef:
        """Post a message (a reply when ``thread_ts`` is given).

        Raises:
            NotifyError: Slack answered with an error (``channel_not_found``,
                ``invalid_auth``, ``ratelimited``...) or could not be reached.
        """
        text, blocks = redact(text), _redacted(blocks)
        retries = 0
        while True:
            try:
                answer = self._client.chat_postMessage(
                    channel=channel, text=text, blocks=blocks, thread_ts=thread_ts
                )
            except SlackApiError as exc:
                wait = _retry_after(exc)
                if (
                    wait is not None
                    and retries < self.rate_limit_retries
                    and wait <= self.max_rate_limit_wait_s
                ):
                    log.info("Slack rate limit on %s: retrying in %.1f s", channel, wait)
                    time.sleep(wait)
                    retries += 1
                    continue
                raise NotifyError(
                    redact(f"{channel}: chat.postMessage: {_slack_error(exc)}")
                ) from None
            except Exception as exc:  # URLError, timeouts, bad URL: Slack unreachable
                raise NotifyError(
                    redact(f"{channel}: chat.postMessage: {type(exc).__name__}: {exc}")
                ) from None
            ref = MessageRef(channel=str(answer["channel"]), ts=str(answer["ts"]))
            log.info(
                "posted to Slack %s (ts %s%s)",
                channel,
                ref.ts,
                f", thread {thread_ts}" if thread_ts else "",
            )
            return ref


class ConsoleNotifier:
    """Prints messages to stderr and appends them to ``<home>/notifications.jsonl``.

    Args:
        home: ``OPENBELL_HOME``.
        console: where to print (stderr by default).

    Example:
        >>> ref = ConsoleNotifier(Path("/tmp/ob")).post("#ops", "hello")  # doctest: +SKIP
    """

    def __init__(self, home: Path, console: Console | None = None) -> None:
        self.path = Path(home) / "notifications.jsonl"
        self._console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    def post(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        thread_ts: str | None = None,
    ) -> MessageRef:
        """Print and record a message; its ``ts`` looks like Slack's.

        Raises:
            NotifyError: the JSONL file cannot be written.
        """
        text, blocks = redact(text), _redacted(blocks)
        with self._lock:
            ts = f"{time.time():.0f}.{next(self._seq):06d}"
            record = {
                "posted_at": datetime.now(UTC).isoformat(),
                "channel": channel,
                "ts": ts,
                "thread_ts": thread_ts,
                "text": text,
                "blocks": blocks,
            }
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            except OSError as exc:
                raise NotifyError(f"{channel}: write {self.path}: {exc}") from None
        body = _unescape("\n".join(_block_texts(blocks)) if blocks else text)
        title = f"{channel} (thread {thread_ts})" if thread_ts else channel
        self._console.print(
            Panel(body, title=title, title_align="left"), markup=False, highlight=False
        )
        log.info("notification for %s written to %s (ts %s)", channel, self.path, ts)
        return MessageRef(channel=channel, ts=ts)


def get_notifier(settings: Settings) -> Notifier:
    """Slack when ``OPENBELL_SLACK_TOKEN`` is set, else the console and JSONL sink.

    Example:
        >>> get_notifier(Settings(home="/tmp/ob", slack_token=None)).path.name
        'notifications.jsonl'
    """
    if settings.slack_token is not None and settings.slack_token.get_secret_value():
        return SlackNotifier(settings.slack_token, base_url=settings.slack_base_url)
    return ConsoleNotifier(settings.home)


# --------------------------------------------------------------------------- the run
def notify_run(notifier: Notifier, channel: str, summary: RunNotice) -> list[Delivery]:
    """Post the run's summary, then its problems as replies in the summary's thread.

    Never raises: every failure is a ``Delivery(ok=False)`` and a WARNING in the log.
    When the summary cannot be posted the details are not attempted (they would have no
    thread); the run's report still has them.

    Args:
        notifier: where to post.
        channel: the region's on-call channel.
        summary: what to say.

    Returns:
        One Delivery for the summary, then one per detail message.

    Example:
        >>> notice = RunNotice(runbook="sod", region="emea", trade_date=date(2026, 11, 27),
        ...     status=Status.FAILED, title="Start of day EMEA 2026-11-27", run_id="r1",
        ...     started=datetime(2026, 11, 27, 6, 0, tzinfo=UTC),
        ...     steps=[("disk", Status.FAILED, "1 of 6 hosts over 90%",
        ...             [("emea-app1:/", Status.FAILED, "93% used")])])
        >>> [(d.kind, d.ok) for d in notify_run(notifier, "#emea-oncall", notice)]  # doctest: +SKIP
        [('summary', True), ('detail', True)]
    """
    try:
        text, blocks = summary_message(summary)
        details = detail_messages(summary)
    except Exception as exc:  # a malformed notice must not break the run either
        error = redact(f"notification not built: {type(exc).__name__}: {exc}")
        log.warning("%s: %s", channel, error)
        return [Delivery(ok=False, kind="summary", channel=channel, error=error)]
    first, parent = _deliver(notifier, channel, text, blocks, kind="summary")
    if parent is None:
        if details:
            log.warning(
                "%s: %d detail message(s) not posted: no summary to thread them under",
                channel,
                len(details),
            )
        return [first]
    deliveries = [first]
    for step, (d_text, d_blocks) in details:
        # Reply in the channel Slack answered with (its id), under the summary.
        delivery, _ = _deliver(
            notifier,
            parent.channel,
            d_text,
            d_blocks,
            kind="detail",
            thread_ts=parent.ts,
            step=step,
            shown_channel=channel,
        )
        deliveries.append(delivery)
    return deliveries


def summary_message(notice: RunNotice) -> tuple[str, list[dict[str, Any]]]:
    """The summary's fallback text and blocks: header, title, counts, problems, context.

    Example:
        >>> notice = RunNotice(runbook="sod", region="amer", trade_date=date(2026, 11, 27),
        ...     status=Status.OK, title="Start of day AMER 2026-11-27", run_id="r1",
        ...     started=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        ...     finished=datetime(2026, 11, 27, 12, 4, 12, tzinfo=UTC),
        ...     steps=[("disk", Status.OK, "6 hosts under 90%", [])])
        >>> text, blocks = summary_message(notice)
        >>> text
        ':white_check_mark: Start of day AMER 2026-11-27: OK'
        >>> blocks[0]["text"]["text"]
        ':white_check_mark: sod · AMER · 2026-11-27 · OK'
    """
    steps = _steps(notice)
    status = Status(notice.status)
    emoji = EMOJI[status]
    header = _clip(
        redact(
            f"{emoji} {notice.runbook} · {notice.region.upper()} · "
            f"{notice.trade_date} · {status.value.upper()}"
        ),
        MAX_HEADER_TEXT,
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}},
        _section(f"*{_esc(notice.title)}*"),
    ]
    counts = {s: sum(1 for step in steps if step.status == s) for s in Status}
    fields = [
        _mrkdwn(f"{EMOJI[s]} *{s.value}*\n{n} step{'s' if n != 1 else ''}")
        for s, n in counts.items()
        if n
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    problems = [s for s in steps if s.status in _PROBLEMS]
    if problems:
        lines = [
            f"{EMOJI[s.status]} *{_esc(s.name)}*: {_esc(_one_line(s.detail))}" for s in problems
        ]
        blocks.append(
            _section(_clip("\n".join(lines) + "\n_Details in the thread._", MAX_SECTION_TEXT))
        )
    context = [f"run `{_esc(notice.run_id)}`", f"started {notice.started:%Y-%m-%d %H:%M:%S %Z}"]
    if notice.finished is not None:
        context.append(f"took {_duration(notice.finished - notice.started)}")
    if notice.report_path:
        context.append(f"report `{_esc(str(notice.report_path))}`")
    if notice.ledger_head:
        context.append(f"ledger head `{_esc(notice.ledger_head)}`")
    blocks.append({"type": "context", "elements": [_mrkdwn(" · ".join(context))]})
    text = _clip(redact(f"{emoji} {notice.title}: {status.value.upper()}"), MAX_FALLBACK_TEXT)
    return text, blocks


def detail_messages(notice: RunNotice) -> list[tuple[str, tuple[str, list[dict[str, Any]]]]]:
    """One or more replies per failed or unknown step: ``[(step, (text, blocks)), ...]``.

    A step's target lines are packed into sections of at most 3000 characters and the
    sections into messages of at most 50 blocks; continuation messages say which part
    they are.
    """
    messages: list[tuple[str, tuple[str, list[dict[str, Any]]]]] = []
    for step in _steps(notice):
        if step.status not in _PROBLEMS:
            continue
        status = step.status
        problems = list(step.problems)
        head = _section(
            _clip(
                f"{EMOJI[status]} *{_esc(step.name)}*: {status.value}"
                + (f"\n{_esc(step.detail)}" if step.detail else ""),
                MAX_SECTION_TEXT,
            )
        )
        lines = [
            f"• `{_esc(p.target)}` {EMOJI[p.status]} {p.status.value}: {_esc(_one_line(p.detail))}"
            for p in problems
        ]
        sections = [_section(text) for text in _pack(lines, MAX_SECTION_TEXT)]
        chunks: list[list[dict[str, Any]]] = []
        first, rest = sections[: MAX_BLOCKS - 1], sections[MAX_BLOCKS - 1 :]
        chunks.append([head, *first])
        while rest:
            chunks.append(rest[: MAX_BLOCKS - 1])
            rest = rest[MAX_BLOCKS - 1 :]
        count = f"{len(problems)} target{'s' if len(problems) != 1 else ''}"
        for i, blocks in enumerate(chunks, start=1):
            part = f" (part {i}/{len(chunks)})" if len(chunks) > 1 else ""
            if i > 1:
                blocks = [_context(f"*{_esc(step.name)}* continued{part}"), *blocks]
            text = _clip(
                redact(f"{EMOJI[status]} {step.name}: {status.value}, {count}{part}"),
                MAX_FALLBACK_TEXT,
            )
            messages.append((step.name, (text, blocks)))
    return messages


# --------------------------------------------------------------------------- helpers
def _steps(notice: RunNotice) -> list[StepNotice]:
    """The notice's steps as ``StepNotice``s with real ``Status`` values.

    Raises:
        ValueError: a status that is not one of ``Status``.
    """
    return [
        StepNotice(
            name,
            Status(status),
            detail,
            [TargetNotice(t, Status(ts), td) for t, ts, td in problems],
        )
        for name, status, detail, *rest in notice.steps
        for problems in [rest[0] if rest else ()]
    ]


def _deliver(
    notifier: Notifier,
    channel: str,
    text: str,
    blocks: list[dict[str, Any]],
    *,
    kind: str,
    thread_ts: str | None = None,
    step: str | None = None,
    shown_channel: str | None = None,
) -> tuple[Delivery, MessageRef | None]:
    shown = shown_channel or channel
    try:
        ref = notifier.post(channel, text, blocks=blocks, thread_ts=thread_ts)
    except Exception as exc:
        error = redact(str(exc) if isinstance(exc, NotifyError) else f"{type(exc).__name__}: {exc}")
        log.warning("%s message to %s not delivered: %s", kind, shown, error)
        return Delivery(
            ok=False, kind=kind, channel=shown, thread_ts=thread_ts, step=step, error=error
        ), None
    return Delivery(
        ok=True, kind=kind, channel=shown, ts=ref.ts, thread_ts=thread_ts, step=step
    ), ref


def _esc(text: str) -> str:
    """Redact, then escape Slack's control characters so text stays text."""
    return redact(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_field(value: object) -> str:
    """A value a person or the estate supplied, as one line of plain Slack text: redacted,
    ``& < >`` escaped (no ``<!channel>``, no hidden ``<url|label>`` link), newlines and
    other whitespace folded to spaces (no forged line)."""
    return _esc(_one_line(str(value)))


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pack(lines: list[str], limit: int) -> list[str]:
    """Join lines into texts of at most ``limit`` characters (a longer line is clipped)."""
    texts: list[str] = []
    current = ""
    for line in lines:
        line = _clip(line, limit)
        if current and len(current) + 1 + len(line) > limit:
            texts.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        texts.append(current)
    return texts


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(text, MAX_FIELD_TEXT)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, MAX_SECTION_TEXT)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(text)]}


def _duration(delta: Any) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _redacted(value: Any) -> Any:
    """Every string inside ``value`` (blocks: dicts and lists) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    return value


def _block_texts(blocks: list[dict[str, Any]]) -> list[str]:
    """The readable text of blocks, for the console."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block.get("text"), dict):
            out.append(str(block["text"].get("text", "")))
        for item in block.get("fields", []) + block.get("elements", []):
            if isinstance(item, dict) and "text" in item:
                out.append(str(item["text"]).replace("\n", ": "))
    return out


def _retry_after(exc: SlackApiError) -> float | None:
    """Seconds Slack asks us to wait, when it rate-limited us (HTTP 429)."""
    response = exc.response
    if getattr(response, "status_code", None) != 429:
        return None
    headers = {k.lower(): v for k, v in (getattr(response, "headers", None) or {}).items()}
    value = headers.get("retry-after", "1")
    if isinstance(value, list):
        value = value[0] if value else "1"
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _slack_error(exc: SlackApiError) -> str:
    response = exc.response
    status = getattr(response, "status_code", None)
    data = getattr(response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return f"{error or 'error'} (HTTP {status})"
