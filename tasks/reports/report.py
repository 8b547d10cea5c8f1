"""Run reports: HTML, Markdown and JSON per run, rendered from the ledger alone.

::

    Ledger --load_run--> RunRecord --view_model--> facts (JSON-able, redacted)
                                     |                 |
                                     +--timeline--> SVG geometry (HTML only)
                                                       |
                         run.html.j2 / run.md.j2 / json.dumps --> redact --> files

Every format carries the same facts: the run (who, what, where, parameters), the steps
and their outcomes per target, approvals (who, when, via, justification, bound hash,
verdict), notifications, deviations, evidence checksums and the ledger anchor (the
run's entries and the hash of its ``run_finished``), which a reader checks against
``openbell audit verify``. The HTML adds a Gantt chart of the steps as inline SVG (no
script, no external resource).

Safety: the HTML is autoescaped, the Markdown escapes every value, and every string is
redacted of secret values before rendering (escaping could otherwise hide a secret
containing ``&`` or ``<`` from redaction) and the output again after.

Determinism: nothing depends on the clock or on dict order, so regenerating a report
from the same ledger gives the same bytes. ``report`` entries are not part of what a
report shows (a report cannot contain its own checksum), so recording a report does not
change the next rendering.

Public functions the CLI and the flows call: :func:`write_run_report` (from the ledger)
and :func:`write_reports` (from a record in hand); the daily rollup is in
``tasks.rollup``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from openbell.outcome import Status
from openbell.run import ApprovalRecord, RunRecord
from openbell.secrets import redact
from openbell.settings import get_settings

if TYPE_CHECKING:
    from openbell.tasks.ledger import Ledger

EMOJI = {
    "ok": "✅",
    "changed": "🔧",
    "skipped": "⏭️",
    "failed": "❌",
    "unknown": "❓",
    "interrupted": "⛔",
}
#: Status colours, shared by the badges (CSS) and the Gantt bars (SVG).
COLOURS = {
    "ok": "#1a7f37",
    "changed": "#0969da",
    "skipped": "#6e7781",
    "failed": "#cf222e",
    "unknown": "#9a6700",
}
#: The approval wait in the Gantt chart.
APPROVAL_COLOUR = "#8250df"
#: The colour that ends an approval wait, by verdict.
VERDICT_COLOURS = {
    "approved": COLOURS["ok"],
    "rejected": COLOURS["failed"],
    "expired": COLOURS["failed"],
    "pending": COLOURS["unknown"],
}
FORMATS = ("html", "md", "json")

_OPTIONS: dict[str, Any] = {
    "loader": PackageLoader("openbell.tasks.reports", "templates"),
    "undefined": StrictUndefined,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "keep_trailing_newline": True,
}
env = Environment(autoescape=select_autoescape(["html", "j2"]), **_OPTIONS)
# Markdown is not HTML: its template escapes every value with the ``md`` filter below.
md_env = Environment(autoescape=False, **_OPTIONS)  # noqa: S701


def _md(text: Any) -> str:
    """Escape text for a Markdown table cell or list item (no raw HTML, no broken cells)."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    out = (
        out.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("*", "\\*")
        .replace("_", "\\_")
    )
    out = out.replace("[", "\\[").replace("]", "\\]")
    return " ".join(out.split())


def _code(text: Any) -> str:
    """Text for a Markdown code span in a table cell: no backtick can close it, no pipe
    can split the cell, no newline can break the line (GFM unescapes ``\\|`` in cells)."""
    return " ".join(str(text).replace("`", "'").replace("|", "\\|").split())


def _hms(value: Any) -> str:
    """``2026-11-24T07:00:01.234567Z`` as ``07:00:01.234`` (display only; JSON keeps ISO)."""
    if not value:
        return ""
    moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _when(value: Any) -> str:
    """An ISO timestamp as ``2026-11-24 07:00:01Z`` (display only)."""
    if not value:
        return ""
    moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


for _e in (env, md_env):
    _e.filters["hms"] = _hms
    _e.filters["when"] = _when
md_env.filters["md"] = _md
md_env.filters["code"] = _code


def redacted(value: Any) -> Any:
    """Every string in a JSON-like value (keys too) with registered secrets masked."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def duration_text(seconds: float) -> str:
    """A duration for people: ``850 ms``, ``12.3 s``, ``4 min 12 s``, ``1 h 02 min``.

    Example:
        >>> duration_text(252.4)
        '4 min 12 s'
    """
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


# ---- deviations --------------------------------------------------------------------------


class Deviation(NamedTuple):
    """Something a compliance reader must look at.

    Attributes:
        kind: ``failed``, ``unknown``, ``refused decision``, ``override``,
            ``emergency change``, ``approval rejected``/``expired``/``pending``,
            ``unrequested decision``, ``refusal``, ``run unfinished``, ``run ended``.
        step: the step it concerns, or ``""``.
        subject: the target or the person.
        detail: what happened.
        at: when (ISO 8601 UTC), or ``""``.
    """

    kind: str
    step: str
    subject: str
    detail: str
    at: str


def _iso(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def deviations(record: RunRecord) -> list[Deviation]:
    """Every deviation of a run, in a stable order: outcomes, approvals, refusals, the run.

    Failed and unknown outcomes; for each approval its refused decisions, overrides,
    emergency flag and a verdict other than approved; refused actions; a run with no
    ``run_finished`` or one that ended in a status that did not pass.
    """
    out: list[Deviation] = []
    for s in record.steps:
        for o in s.outcomes:
            if o.status in (Status.FAILED, Status.UNKNOWN):
                out.append(
                    Deviation(o.status.value, s.name, o.target, o.detail, _iso(o.finished_at))
                )
    for a in record.approvals:
        out.extend(_approval_deviations(a))
    # A decision that does not count is recorded twice (in its verdict, and as a refusal
    # when it was given): show it once.
    refused = {(x.approver, x.decision, x.why) for a in record.approvals for x in a.refused}
    for r in record.refusals:
        if (r.who, r.action, r.reason) in refused:
            continue
        what = " ".join(x for x in (r.action, r.runbook, r.region) if x)
        rule = f" (rule {r.rule})" if r.rule else ""
        out.append(Deviation("refusal", "", r.who, f"{what}: {r.reason}{rule}", _iso(r.at)))
    if record.finished_at is None:
        out.append(Deviation("run unfinished", "", record.operator, "no run_finished entry", ""))
    elif record.finished_status and record.finished_status not in {
        s.value for s in Status if s.passed
    }:
        detail = record.finished_status + (
            f": {record.finished_summary}" if record.finished_summary else ""
        )
        out.append(Deviation("run ended", "", record.operator, detail, _iso(record.finished_at)))
    return out


def _approval_deviations(a: ApprovalRecord) -> Iterable[Deviation]:
    if not a.requested:
        who = ", ".join(d.approver for d in a.decisions) or "(verdict only)"
        yield Deviation(
            "unrequested decision", a.step, who, "a decision or verdict with no request", ""
        )
    for r in a.refused:
        at = next((d.decided_at for d in a.decisions if d.approver == r.approver), None)
        yield Deviation("refused decision", a.step, r.approver, r.why, _iso(at))
    for d in a.decisions:
        if d.decision == "override":
            yield Deviation(
                "override",
                a.step,
                d.approver,
                d.justification or "(no justification)",
                _iso(d.decided_at),
            )
    if a.emergency:
        yield Deviation(
            "emergency change",
            a.step,
            a.requester,
            a.summary or "emergency change",
            _iso(a.created_at),
        )
    overridden = any(d.decision == "override" for d in a.decisions)
    if a.flagged_for_review and not (a.emergency or overridden):
        yield Deviation("flagged for review", a.step, a.requester, a.reason, _iso(a.resolved_at))
    if a.status != "approved":
        yield Deviation(
            f"approval {a.status}",
            a.step,
            a.requester,
            a.reason or a.status,
            _iso(a.resolved_at),
        )


# ---- the view model ----------------------------------------------------------------------


def report_paths(record: RunRecord, reports_dir: Path) -> dict[str, Path]:
    """Where the run's reports go: ``<runbook>-<region>-<date>-<run id>.{html,md,json}``."""
    stem = f"{record.runbook}-{record.region}-{record.trade_date}-{record.run_id[:8]}"
    return {ext: reports_dir / f"{stem}.{ext}" for ext in FORMATS}


def approval_end(a: ApprovalRecord, record: RunRecord) -> datetime:
    """When an approval wait ended: its verdict, else its last decision, else the run's end."""
    if a.resolved_at is not None:
        return a.resolved_at
    if a.decisions:
        return max(d.decided_at for d in a.decisions)
    ends = [t for t in (record.finished_at, a.expires_at) if t is not None]
    return max(a.created_at, min(ends))


def view_model(record: RunRecord) -> dict[str, Any]:
    """The facts every format shows: the record as JSON-able dicts, redacted.

    ``reports`` (where the reports were written) is left out: it is not a fact about the
    run, and a report cannot describe itself.
    """
    data = record.model_dump(mode="json", exclude={"reports"})
    data["status"] = record.status.value
    data["title"] = record.title
    data["requested_by"] = record.requested_by
    data["counts"] = record.counts()
    titles = {s.name: s.title for s in record.steps}
    for step, model in zip(data["steps"], record.steps, strict=True):
        seconds = (model.finished_at - model.started_at).total_seconds()
        step["status"] = model.status.value
        step["summary"] = model.summary()
        step["duration_ms"] = round(seconds * 1000, 1)
        step["duration"] = duration_text(seconds)
    for item, a in zip(data["approvals"], record.approvals, strict=True):
        end = approval_end(a, record)
        item["step_title"] = titles.get(a.step, a.step)
        item["waited"] = duration_text((end - a.created_at).total_seconds())
        item["wait_ended_at"] = _iso(end)
        _mark_stale(item)
    data["deviations"] = [d._asdict() for d in deviations(record)]
    data["evidence_count"] = len(record.evidence)
    return redacted(data)


def _mark_stale(approval: dict[str, Any]) -> None:
    """Mark the decisions given for another binding than the request's."""
    for d in approval["decisions"]:
        d["stale_binding"] = (
            bool(d["binding_hash"]) and d["binding_hash"] != approval["binding_hash"]
        )


# ---- the Gantt chart ---------------------------------------------------------------------

WIDTH = 1000
LABEL_W = 250  # the label column; the chart starts here
RIGHT = 16
TOP = 30  # room for the time axis
ROW = 28
BAR = 16
LABEL_CHARS = 32  # DejaVu Sans at 12 px: about 7 px a character
_TICKS_S = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _fit(text: str, n: int = LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


class _Row(NamedTuple):
    start: datetime
    end: datetime
    kind: str  # step | approval
    label: str
    status: str
    detail: str
    order: tuple[datetime, int, int]


def _rows(record: RunRecord) -> list[_Row]:
    rows: list[_Row] = []
    for i, s in enumerate(record.steps):
        rows.append(
            _Row(
                s.started_at,
                s.finished_at,
                "step",
                s.title,
                s.status.value,
                s.summary(),
                (s.started_at, 1, i),
            )
        )
    titles = {s.name: s.title for s in record.steps}
    for j, a in enumerate(record.approvals):
        end = approval_end(a, record)
        who = ", ".join(a.counted or a.rejected_by) or "nobody"
        rows.append(
            _Row(
                a.created_at,
                end,
                "approval",
                f"Approval: {titles.get(a.step, a.step)}",
                a.status,
                f"{a.status} ({who})",
                (a.created_at, 0, j),
            )
        )
    return sorted(rows, key=lambda r: r.order)


def timeline(record: RunRecord) -> dict[str, Any] | None:
    """The geometry of the Gantt chart (the template draws it); None without steps.

    One row per step, from its start to its finish, coloured by status; one row per
    approval request, from the request to its verdict, hatched, ending in the verdict's
    colour. The axis shows UTC clock times.
    """
    rows = _rows(record)
    if not rows:
        return None
    t0 = min([record.started_at, *(r.start for r in rows)])
    t1 = max([*(r.end for r in rows), *([record.finished_at] if record.finished_at else [])])
    span_us = max((t1 - t0) // _US, 1_000_000)
    x0, x1 = LABEL_W, WIDTH - RIGHT

    def x(moment: datetime) -> float:
        return round(x0 + ((moment - t0) // _US) / span_us * (x1 - x0), 2)

    bars = []
    for i, r in enumerate(rows):
        left, right = x(r.start), x(r.end)
        width = max(round(right - left, 2), 3.0)
        seconds = (r.end - r.start).total_seconds()
        text = duration_text(seconds)
        text_w = 7 * len(text)
        if left + width + 6 + text_w <= x1:
            tx, anchor = left + width + 6, "start"
        elif left - 6 - text_w >= x0:
            tx, anchor = left - 6, "end"
        else:
            tx, anchor = left + width - 6, "end"  # inside the bar, at its end
        y = TOP + i * ROW
        bars.append(
            {
                "kind": r.kind,
                "status": r.status,
                "label": _fit(r.label),
                "full_label": r.label,
                "x": left,
                "y": y + (ROW - BAR) / 2,
                "w": width,
                "h": BAR,
                "text_y": y + ROW / 2 + 4,
                "duration": text,
                "duration_x": round(tx, 2),
                "duration_anchor": anchor,
                "duration_inside": anchor == "end" and tx > left,
                "colour": APPROVAL_COLOUR if r.kind == "approval" else COLOURS[r.status],
                "end_colour": VERDICT_COLOURS.get(r.status, COLOURS["unknown"]),
                "tooltip": (
                    f"{r.label}: {r.status}, {_hms(_iso(r.start))} to {_hms(_iso(r.end))} "
                    f"({text}). {r.detail}"
                ),
            }
        )
    chart_bottom = TOP + len(rows) * ROW
    return {
        "width": WIDTH,
        "height": chart_bottom + 40,
        "x0": x0,
        "x1": x1,
        "top": TOP,
        "bottom": chart_bottom,
        "legend_y": chart_bottom + 24,
        "bars": bars,
        "ticks": _ticks(t0, span_us, x0, x1),
        "legend": [*COLOURS.items(), ("approval wait", APPROVAL_COLOUR)],
        "start": _iso(t0),
        "end": _iso(t1),
    }


def _ticks(t0: datetime, span_us: int, x0: int, x1: int) -> list[dict[str, Any]]:
    """Axis ticks at round clock times, at most about 8 of them."""
    step_s = next((s for s in _TICKS_S if span_us / (s * 1e6) <= 8), _TICKS_S[-1])
    step_us = round(step_s * 1_000_000)
    start_us = (t0 - _EPOCH) // _US
    first = -(-start_us // step_us) * step_us
    ticks = []
    for at_us in range(first, start_us + span_us + 1, step_us):
        offset = at_us - start_us
        moment = _EPOCH + timedelta(microseconds=at_us)
        label = moment.strftime("%H:%M:%S") if step_s >= 1 else f"+{offset / 1e6:.1f} s"
        tx = round(x0 + offset / span_us * (x1 - x0), 2)
        # A label centred on a tick at either end would stick out of the chart.
        anchor = "start" if tx - x0 < 30 else "end" if x1 - tx < 30 else "middle"
        ticks.append({"x": tx, "label": label, "anchor": anchor})
    return ticks


# ---- rendering and writing ---------------------------------------------------------------


def plan_steps(plan: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The plan's steps as ``{title, note, actions: [{target, action}]}``, whatever its shape.

    A ``flows.plan.Plan`` dump has those fields; anything else recorded as a plan is shown
    by its text rather than refused.
    """
    out: list[dict[str, Any]] = []
    for step in (plan or {}).get("steps") or []:
        if not isinstance(step, dict):
            out.append({"title": str(step), "note": "", "actions": []})
            continue
        actions = [
            {"target": str(a.get("target", "")), "action": str(a.get("action", ""))}
            if isinstance(a, dict)
            else {"target": "", "action": str(a)}
            for a in step.get("actions") or []
        ]
        title = step.get("title") or step.get("name") or ""
        out.append({"title": str(title), "note": str(step.get("note") or ""), "actions": actions})
    return out


def render(record: RunRecord) -> dict[str, str]:
    """The three reports as text (``html``, ``md``, ``json``)."""
    vm = view_model(record)
    chart = redacted(timeline(record))
    plan = redacted(plan_steps(record.plan))
    html = env.get_template("run.html.j2").render(r=vm, chart=chart, plan=plan)
    md = md_env.get_template("run.md.j2").render(r=vm, plan=plan, emoji=EMOJI)
    js = json.dumps(vm, indent=2, sort_keys=True, ensure_ascii=False)
    return {"html": redact(html), "md": redact(md), "json": redact(js) + "\n"}


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old one or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(record: RunRecord, reports_dir: Path) -> dict[str, Path]:
    """Render and write the reports of a record in hand; returns their paths by format."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = report_paths(record, reports_dir)
    for kind, text in render(record).items():
        write_text_atomic(paths[kind], text)
    return paths


def write_run_report(
    ledger: Ledger, run_id: str, reports_dir: Path | None = None
) -> dict[str, Path]:
    """Render a run's reports from the ledger alone, write them, and record them.

    Each file written is recorded as a ``report`` entry with its sha256, unless the
    ledger already holds the same file with the same checksum (regenerating an
    unchanged report appends nothing). Call it after the run's last entry
    (``run_finished``, and the Slack summary's ``notification`` if any): a report
    shows the entries before it.

    Args:
        ledger: the ledger the run was recorded in.
        run_id: the run.
        reports_dir: where to write; default ``OPENBELL_HOME/reports``.

    Returns:
        ``{"html": Path, "md": Path, "json": Path}``.

    Raises:
        LedgerError: the ledger has no such run.

    Example:
        >>> with Ledger() as ledger:  # doctest: +SKIP
        ...     write_run_report(ledger, run_id)["html"]
        PosixPath('/home/ops/.openbell/reports/sod-emea-2026-11-24-4f1c2d3e.html')
    """
    from openbell.tasks.ledger.runs import file_facts

    record = ledger.load_run(run_id)
    paths = write_reports(record, reports_dir or get_settings().reports_dir)
    recorded = {
        (e.payload.get("format"), e.payload.get("path"), e.payload.get("sha256"))
        for e in ledger.entries(run_id=run_id, kinds=["report"])
    }
    for fmt, path in paths.items():
        sha256, _ = file_facts(path)
        if (fmt, str(path), sha256) not in recorded:
            ledger.record_report(run_id, fmt, path)
    return paths


def run_notice(record: RunRecord, ledger_head: str | None = None) -> Any:
    """The Slack summary of a run (one message, threaded detail for problems)."""
    from openbell.tasks.connectors.notify import RunNotice, StepNotice, TargetNotice

    steps = [
        StepNotice(
            s.title,
            s.status,
            s.summary(),
            [TargetNotice(o.target, o.status, o.detail) for o in s.problems()],
        )
        for s in record.steps
    ]
    if record.skipped_reason:
        steps.append(StepNotice("Calendar gate", Status.SKIPPED, record.skipped_reason))
    return RunNotice(
        runbook=record.runbook,
        region=record.region,
        trade_date=record.trade_date,
        status=record.status,
        title=record.title,
        run_id=record.run_id,
        started=record.started_at,
        finished=record.finished_at or record.started_at,
        steps=steps,
        report_path=record.reports.get("html"),
        ledger_head=ledger_head,
    )
