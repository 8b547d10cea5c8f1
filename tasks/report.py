"""Run reports: HTML, Markdown and JSON per run, from the run record alone.

Templates live in ``runbooks/templates``; the HTML is autoescaped, and every string is
redacted of secret values before rendering (escaping could otherwise hide a secret
containing ``&`` or ``<`` from redaction) and again after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from openbell.outcome import Status
from openbell.run import RunRecord
from openbell.secrets import redact

TEMPLATES = Path(__file__).resolve().parent.parent / "runbooks" / "templates"
EMOJI = {"ok": "✅", "changed": "🔧", "skipped": "⏭️", "failed": "❌", "unknown": "❓"}

_OPTIONS: dict[str, Any] = {
    "loader": FileSystemLoader(TEMPLATES),
    "undefined": StrictUndefined,
    "trim_blocks": True,
    "lstrip_blocks": True,
}
_env = Environment(autoescape=select_autoescape(["html", "j2"]), **_OPTIONS)
# Markdown is not HTML: its template escapes every value with the ``md`` filter below.
_md_env = Environment(autoescape=False, **_OPTIONS)  # noqa: S701


def _md(text: Any) -> str:
    """Escape text for a Markdown table cell or list item (no raw HTML, no broken cells)."""
    out = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    out = out.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("_", "\\_")
    return " ".join(out.split())


_md_env.filters["md"] = _md


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def report_paths(record: RunRecord, reports_dir: Path) -> dict[str, Path]:
    """Where the run's reports go: ``<runbook>-<region>-<date>-<run id>.{html,md,json}``."""
    stem = f"{record.runbook}-{record.region}-{record.trade_date}-{record.run_id[:8]}"
    return {ext: reports_dir / f"{stem}.{ext}" for ext in ("html", "md", "json")}


def view_model(record: RunRecord) -> dict[str, Any]:
    """The data the templates see: the record as JSON-able dicts, redacted."""
    data = record.model_dump(mode="json")
    data["status"] = record.status.value
    data["title"] = record.title
    data["counts"] = record.counts()
    for step, model in zip(data["steps"], record.steps, strict=True):
        step["status"] = model.status.value
        step["summary"] = model.summary()
        step["duration_ms"] = round(
            (model.finished_at - model.started_at).total_seconds() * 1000, 1
        )
    return _redacted(data)


def render(record: RunRecord) -> dict[str, str]:
    """The three reports as text."""
    vm = view_model(record)
    html = _env.get_template("run.html.j2").render(r=vm, emoji=EMOJI)
    md = _md_env.get_template("run.md.j2").render(r=vm, emoji=EMOJI)
    js = json.dumps(vm, indent=2, sort_keys=True)
    return {"html": redact(html), "md": redact(md), "json": redact(js) + "\n"}


def write_reports(record: RunRecord, reports_dir: Path) -> dict[str, Path]:
    """Render and write the reports; returns their paths."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = report_paths(record, reports_dir)
    for kind, text in render(record).items():
        paths[kind].write_text(text, encoding="utf-8")
    return paths


def run_notice(record: RunRecord, ledger_head: str | None = None) -> Any:
    """The Slack summary of a run (one message, threaded detail for problems)."""
    from tasks.notify import RunNotice, StepNotice, TargetNotice

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
