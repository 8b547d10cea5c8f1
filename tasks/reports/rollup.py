"""The daily rollup: every run, change, approval and failure of one region's trade date.

Rendered from the ledger alone, like the run reports (``tasks.report``), as HTML,
Markdown and JSON, to ``rollup-<region>-<date>.{html,md,json}`` beside them::

    Ledger.find_runs(region, trade_date) --load_run--> RunRecord, ...
        --> runs      one line each: who, when, status, counts, its report, ledger range
        --> changes   every ``changed`` outcome
        --> approvals every request with its decisions and verdict
        --> failures  every deviation of every run (failed/unknown outcomes, refused
                      decisions, overrides, emergencies, refusals, unfinished runs)
        --> refusals  refused actions in the region not tied to a run, appended on that
                      date (UTC): someone who was not allowed to start a run at all

A run belongs to the day its ``run_started`` names (region and trade date), not the
day it was appended. Runs of other regions never appear.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openbell.run import RunRecord
from openbell.secrets import redact
from openbell.settings import get_settings
from openbell.tasks.reports.report import (
    EMOJI,
    FORMATS,
    deviations,
    env,
    md_env,
    redacted,
    report_paths,
    view_model,
    write_text_atomic,
)

if TYPE_CHECKING:
    from openbell.tasks.ledger import Ledger


def rollup_paths(region: str, trade_date: date, reports_dir: Path) -> dict[str, Path]:
    """Where a day's rollup goes: ``rollup-<region>-<date>.{html,md,json}``."""
    stem = f"rollup-{region.lower()}-{trade_date.isoformat()}"
    return {ext: reports_dir / f"{stem}.{ext}" for ext in FORMATS}


def rollup_view(ledger: Ledger, region: str, trade_date: date) -> dict[str, Any]:
    """The facts of a region's trade date, redacted, in ledger order.

    Args:
        ledger: the ledger.
        region: e.g. ``emea`` (case-insensitive).
        trade_date: the session.

    Returns:
        ``{"region", "trade_date", "title", "totals", "runs", "changes", "approvals",
        "failures", "refusals", "ledger"}``.
    """
    key = region.lower()
    records = [
        ledger.load_run(str(e.run_id)) for e in ledger.find_runs(region=key, trade_date=trade_date)
    ]
    runs = [_run_line(r) for r in records]
    changes = [
        {
            "run_id": r.run_id,
            "runbook": r.runbook,
            "step": s.name,
            "step_title": s.title,
            "target": o.target,
            "detail": o.detail,
            "at": o.finished_at,
        }
        for r in records
        for s in r.steps
        for o in s.outcomes
        if o.status.value == "changed"
    ]
    approvals = [
        {"run_id": r.run_id, "runbook": r.runbook, **a}
        for r in records
        for a in view_model(r)["approvals"]
    ]
    failures = [
        {"run_id": r.run_id, "runbook": r.runbook, **d._asdict()}
        for r in records
        for d in deviations(r)
    ]
    releases = [_release_line(ledger, r) for r in records if r.runbook == "release"]
    refusals = _runless_refusals(ledger, key, trade_date)
    anchors = [r.ledger_anchor for r in records if r.ledger_anchor is not None]
    view = {
        "region": key,
        "trade_date": trade_date.isoformat(),
        "title": f"Daily rollup {key.upper()} {trade_date.isoformat()}",
        "totals": {
            "runs": len(runs),
            "releases": len(releases),
            "changes": len(changes),
            "approvals": len(approvals),
            "failures": len(failures),
            "refusals": len(refusals),
        },
        "runs": runs,
        "releases": releases,
        "changes": changes,
        "approvals": approvals,
        "failures": failures,
        "refusals": refusals,
        "ledger": {
            "first_seq": min((a.first_seq for a in anchors), default=None),
            "last_seq": max((a.last_seq for a in anchors), default=None),
        },
    }
    return redacted(json.loads(json.dumps(view, default=_json_default)))


def _release_line(ledger: Ledger, r: RunRecord) -> dict[str, Any]:
    """One release run: what went where, and how it ended (released, rolled back...)."""
    started = ledger.entries(run_id=r.run_id, kinds=["run_started"], limit=1)
    params = started[0].payload.get("parameters", {}) if started else {}
    kinds = {
        e.kind
        for e in ledger.entries(
            run_id=r.run_id, kinds=["release_manifest", "recovery_started", "recovery_finished"]
        )
    }
    if "recovery_started" in kinds:
        outcome = "rolled back" if "recovery_finished" in kinds else "rollback unfinished"
    elif "release_manifest" in kinds:
        outcome = "rollback released" if params.get("rollback") else "released"
    else:
        outcome = "not released" if not r.passed else "nothing to change"
    return {
        "run_id": r.run_id,
        "app": params.get("app"),
        "version": params.get("version") or ("previous" if params.get("rollback") else None),
        "change": params.get("change"),
        "emergency": bool(params.get("emergency")),
        "outcome": outcome,
        "status": r.status.value,
    }


def _runless_refusals(ledger: Ledger, region: str, trade_date: date) -> list[dict[str, Any]]:
    """Refusals in the region tied to no run, for ``trade_date``.

    A refusal that names its ``trade_date`` is matched on it; one that does not, on the
    UTC date it was appended.
    """
    out = []
    day = trade_date.isoformat()
    for e in ledger.entries(
        kinds=["refusal"],
        since=trade_date - timedelta(days=1),
        until=trade_date + timedelta(days=2),
    ):
        p = e.payload
        when = p["trade_date"] if p.get("trade_date") else e.ts.date().isoformat()
        if e.run_id is None and str(p.get("region", "")).lower() == region and when == day:
            out.append(
                {
                    "who": p.get("who", ""),
                    "action": p.get("action", ""),
                    "runbook": p.get("runbook", ""),
                    "reason": p.get("reason", ""),
                    "rule": p.get("rule"),
                    "at": e.ts,
                    "seq": e.seq,
                }
            )
    return out


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot put a {type(value).__name__} in a rollup")


def _run_line(r: RunRecord) -> dict[str, Any]:
    """One run of the day. A run with no end recorded (killed, or its machine lost) is
    ``interrupted`` whatever its steps said so far, and links no report (none was
    written: reports are written as a run ends)."""
    a = r.ledger_anchor
    interrupted = r.finished_status is None and r.finished_at is None
    html = r.reports.get("html")
    report = Path(html).name if html else report_paths(r, Path()).get("html", Path()).name
    return {
        "run_id": r.run_id,
        "runbook": r.runbook,
        "title": r.title,
        "requester": r.operator,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "status": "interrupted" if interrupted else r.status.value,
        "finished_status": r.finished_status,
        "dry_run": r.dry_run,
        "counts": r.counts(),
        "report": "" if interrupted else report,
        "first_seq": a.first_seq if a else None,
        "last_seq": a.last_seq if a else None,
        "finished_hash": a.finished_hash if a else None,
    }


def render_rollup(view: dict[str, Any]) -> dict[str, str]:
    """The rollup as text (``html``, ``md``, ``json``)."""
    html = env.get_template("rollup.html.j2").render(v=view)
    md = md_env.get_template("rollup.md.j2").render(v=view, emoji=EMOJI)
    js = json.dumps(view, indent=2, sort_keys=True, ensure_ascii=False)
    return {"html": redact(html), "md": redact(md), "json": redact(js) + "\n"}


def write_rollup(
    ledger: Ledger, region: str, trade_date: date, reports_dir: Path | None = None
) -> dict[str, Path]:
    """Render a region's trade date from the ledger and write it (nothing is appended).

    Args:
        ledger: the ledger.
        region: e.g. ``emea``.
        trade_date: the session.
        reports_dir: where to write; default ``OPENBELL_HOME/reports``.

    Returns:
        ``{"html": Path, "md": Path, "json": Path}``.

    Example:
        >>> with Ledger() as ledger:  # doctest: +SKIP
        ...     write_rollup(ledger, "emea", date(2026, 11, 24))["md"]
        PosixPath('/home/ops/.openbell/reports/rollup-emea-2026-11-24.md')
    """
    out_dir = reports_dir or get_settings().reports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = rollup_paths(region, trade_date, out_dir)
    for fmt, text in render_rollup(rollup_view(ledger, region, trade_date)).items():
        write_text_atomic(paths[fmt], text)
    return paths
