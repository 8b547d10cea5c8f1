"""What every runbook flow does first and last: open the run, then report and notify.

``open_run`` loads the estate, applies the calendar gate and builds the run's
resources; ``finish_run`` writes the report and the run record, posts the Slack
summary (a failure to notify is recorded, never raised) and closes the resources.
"""

from __future__ import annotations

import getpass
import json
import logging
import uuid
from collections.abc import Callable
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from openbell.outcome import utcnow
from openbell.run import RunRecord, StepResult
from openbell.secrets import install_log_redaction, redact
from openbell.settings import get_settings
from runbooks.loader import load_estate
from runbooks.schema import Estate
from tasks import http, notify, report, ssh
from tasks.context import ProgressFn, RunContext

log = logging.getLogger(__name__)

#: The CLI sets this to show live progress of an in-process run.
progress_listener: ProgressFn | None = None


class RunParams(BaseModel):
    """The parameters of a runbook run: its identity is (runbook, region, trade date)."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(description="region name, e.g. emea")
    trade_date: date | None = Field(default=None, description="default: today in the region")
    dry_run: bool = Field(default=False, description="plan only, touch nothing")
    estate: str | None = Field(default=None, description="estate YAML (default OPENBELL_ESTATE)")
    operator: str | None = Field(default=None, description="who started the run")


def today_in(estate: Estate, region: str) -> date:
    """Today's date in the region's timezone."""
    return datetime.now(ZoneInfo(estate.region(region).timezone)).date()


def run_namer(runbook: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``sod-emea-2026-11-26``."""

    def name() -> str:
        params = flow_run.parameters.get("params") or {}
        if isinstance(params, BaseModel):
            params = params.model_dump()
        day = params.get("trade_date") or "today"
        return f"{runbook}-{params.get('region', '?')}-{day}"

    return name


def _resolve_date(estate: Estate, params: RunParams) -> date:
    return params.trade_date or today_in(estate, params.region)


@task(name="calendar_gate", cache_policy=NO_CACHE)
async def open_run(runbook: str, params: RunParams) -> tuple[RunContext, RunRecord]:
    """Load the estate, decide the calendar gate, and build the run's resources."""
    from flows.plan import calendar_facts

    install_log_redaction()
    logger = get_run_logger()
    settings = get_settings()
    estate = load_estate(params.estate)
    region = params.region.lower()
    estate.region(region)
    day = _resolve_date(estate, params)
    runs, reason, facts = calendar_facts(estate, region, day)
    prev = facts.get("previous_session")
    ctx = RunContext(
        estate=estate,
        region=region,
        trade_date=day,
        prev_trade_date=date.fromisoformat(prev) if prev else None,
        ssh=ssh.SshPool(estate),
        http=http.HttpClient,
        notifier=notify.get_notifier(settings),
        operator=params.operator or settings.operator or getpass.getuser(),
        progress=progress_listener,
    )
    run_id = str(flow_run.id or uuid.uuid4())
    record = RunRecord(
        run_id=run_id,
        runbook=runbook,
        region=region,
        trade_date=day,
        dry_run=params.dry_run,
        operator=ctx.operator,
        calendar=facts,
        skipped_reason=reason,
        estate_source=estate.source,
        flow_run_id=flow_run.id,
    )
    if reason:
        logger.info("%s %s %s skipped: %s", runbook, region, day, reason)
    else:
        logger.info(
            "%s %s %s: %s", runbook, region, day, "dry run" if params.dry_run else "running"
        )
    del runs
    return ctx, record


@task(name="signoff", cache_policy=NO_CACHE)
async def finish_run(ctx: RunContext, record: RunRecord, steps: list[StepResult]) -> RunRecord:
    """Sign-off: record every step, write the reports, post the Slack summary."""
    logger = get_run_logger()
    record = record.model_copy(update={"steps": steps, "finished_at": utcnow()})
    settings = get_settings()
    try:
        paths = report.report_paths(record, settings.reports_dir)
        record = record.model_copy(update={"reports": {k: str(v) for k, v in paths.items()}})
        if not record.dry_run:
            channel = ctx.estate.region(ctx.region).slack_channel
            deliveries = notify.notify_run(ctx.notifier, channel, report.run_notice(record))
            record = record.model_copy(update={"notifications": [_delivery(d) for d in deliveries]})
        report.write_reports(record, settings.reports_dir)
        _save_record(record, settings.runs_dir)
    finally:
        await ctx.close()
    logger.info("%s: %s; report %s", record.title, record.status.value, record.reports.get("html"))
    return record


def _delivery(d: Any) -> dict[str, Any]:
    data = d.__dict__ if hasattr(d, "__dict__") else dict(d)
    return {k: redact(str(v)) if isinstance(v, str) else v for k, v in data.items()}


def _save_record(record: RunRecord, runs_dir: Any) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record.run_id}.json"
    path.write_text(redact(json.dumps(record.model_dump(mode="json"), indent=2)))
