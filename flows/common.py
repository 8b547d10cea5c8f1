"""What every runbook flow does first and last: open the run, then report and notify.

``open_run`` loads the estate, applies the calendar gate, builds the run's resources and
records the run and its plan in the ledger; ``run_steps`` runs the steps concurrently and
records any that crashed; ``finish_run`` closes the run in the ledger, checkpoints the
ledger's head, posts the Slack summary (a failure to notify is recorded, never raised),
and writes the reports from the ledger alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from prefect import Flow, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import RunRecord, StepResult
from openbell.runbooks.loader import estate_version, load_estate
from openbell.runbooks.schema import Estate
from openbell.secrets import install_log_redaction, preload, redact
from openbell.settings import get_settings
from openbell.tasks.connectors import http, notify, ssh
from openbell.tasks.context import ProgressFn, RunContext, in_thread
from openbell.tasks.ledger import Ledger
from openbell.tasks.reports import report

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

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
    from_step: str | None = Field(
        default=None,
        description="re-do this step and the ones after it, whatever was recorded as done",
    )


def openbell_flow(
    name: str, run_name: str | Callable[[], str]
) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """Prefect's ``@flow`` with what every openbell flow sets: a run name, no print
    capture, and results named but never persisted (the ledger holds the outcomes).

    Naming the result storage matters all the same: without one, Prefect 3.9 asks the
    server for a default at every flow run through a client it never closes, leaking a
    connection per run (``prefect/results.py``,
    ``_read_server_default_result_storage_block_id``). A path needs no server call.
    """
    from prefect.settings import get_current_settings

    return flow(
        name=name,
        flow_run_name=run_name,
        log_prints=False,
        result_storage=Path(get_current_settings().results.local_storage_path),
        persist_result=False,
    )


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
    """Load the estate, decide the calendar gate, build the run's resources, record it."""
    from openbell.flows.plan import PLANNERS, calendar_facts, redo_steps

    install_log_redaction()
    logger = get_run_logger()
    settings = get_settings()
    estate = load_estate(params.estate)
    region = params.region.lower()
    estate.region(region)
    missing = await asyncio.to_thread(preload, estate.secret_names(region))
    if missing:
        logger.warning("secrets not found (the steps using them will fail): %s", missing)
    day = _resolve_date(estate, params)
    runs, reason, facts = calendar_facts(estate, region, day)
    prev = facts.get("previous_session")
    run_id = str(flow_run.id or uuid.uuid4())
    version = estate_version(estate)
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
        ledger=Ledger(),
        run_id=run_id,
        runbook=runbook,
        parameters=params.model_dump(mode="json"),
        runbook_version=version,
        dry_run=params.dry_run,
    )
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
    plan = PLANNERS[runbook](estate, region, day)
    record = record.model_copy(update={"plan": plan.model_dump(mode="json")})
    ctx.redo = redo_steps(plan, params.from_step)
    ledger = ctx.ledger
    await in_thread(
        ctx,
        ledger.start_run_from_record,
        record,
        parameters=ctx.parameters,
        runbook_version=version,
    )
    await in_thread(ctx, ledger.record_plan, run_id, record.plan)
    if reason:
        logger.info("%s %s %s skipped: %s", runbook, region, day, reason)
    else:
        logger.info(
            "%s %s %s: %s", runbook, region, day, "dry run" if params.dry_run else "running"
        )
    del runs
    return ctx, record


@contextlib.asynccontextmanager
async def exclusive(ctx: RunContext) -> AsyncIterator[None]:
    """Hold the (runbook, region, trade date) lock in the ledger for the block.

    A second run for the same key waits (up to ``max_lock_wait_minutes``) or is refused
    at once, as ``runbooks.<name>.concurrent_run`` says; it never interleaves side
    effects with the first. The lock dies with the process that holds it. Once held,
    earlier runs of the key that never finished (their process died) are recorded as
    interrupted, and marked crashed in Prefect.

    Raises:
        RunLockedError: another run held the lock for the whole wait.
    """
    policy = ctx.estate.policy(ctx.runbook)
    wait_s = policy.max_lock_wait_minutes * 60 if policy.concurrent_run == "wait" else 0.0
    lock = ctx.ledger.run_lock(ctx.runbook, ctx.region, ctx.trade_date, timeout_s=wait_s)
    # Not the run's probe pool: finish_run shuts that down inside this block.
    await asyncio.to_thread(lock.__enter__)
    try:
        await _close_interrupted(ctx)
        yield
    finally:
        await asyncio.to_thread(lock.__exit__, None, None, None)


async def _close_interrupted(ctx: RunContext) -> None:
    """Record earlier runs of this key that started and never finished (with the lock held,
    they cannot be running)."""
    started = await in_thread(
        ctx,
        ctx.ledger.find_runs,
        region=ctx.region,
        trade_date=ctx.trade_date,
        runbook=ctx.runbook,
    )
    earlier = [e.run_id for e in started if e.run_id and e.run_id != ctx.run_id]
    for run_id in earlier:  # a few at most: read each one's end, not the whole ledger's
        ended = await in_thread(
            ctx, ctx.ledger.entries, run_id=run_id, kinds=["run_finished", "run_interrupted"]
        )
        if ended:
            continue
        why = f"never finished (its process died); found by run {ctx.run_id}"
        await in_thread(
            ctx, ctx.ledger.append, "run_interrupted", run_id, {"reason": why, "by": ctx.run_id}
        )
        get_run_logger().warning(
            "run %s of %s %s %s %s", run_id, ctx.runbook, ctx.region, ctx.trade_date, why
        )
        await _mark_crashed(run_id, why)


async def _mark_crashed(flow_run_id: str, why: str) -> None:
    """Tell Prefect that a run whose process died is over (it still shows it running)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                await client.set_flow_run_state(run.id, Crashed(message=why), force=True)
    except Exception as exc:  # the ledger has it; Prefect's view is cosmetic here
        log.info("could not mark flow run %s crashed: %s", flow_run_id, exc)


def skipped_step(name: str, title: str, why: str, status: Status = Status.SKIPPED) -> StepResult:
    """A step not run this time (or refused), with the reason on its one outcome."""
    return StepResult(
        name=name,
        title=title,
        outcomes=[Outcome(step=name, target=name, status=status, detail=why)],
    )


async def run_steps(
    ctx: RunContext, steps: Sequence[tuple[str, Awaitable[StepResult | list[StepResult]]]]
) -> list[StepResult]:
    """Run independent steps at once; a step whose task raised is recorded as failed.

    Args:
        ctx: the run.
        steps: (name, awaitable) pairs; an awaitable gives one StepResult or several.

    Returns:
        Every StepResult, in the order given.
    """
    results = await asyncio.gather(*(work for _, work in steps), return_exceptions=True)
    out: list[StepResult] = []
    for (name, _), result in zip(steps, results, strict=True):
        if isinstance(result, BaseException):
            crashed = _crashed(name, result)
            if ctx.ledger is not None:
                await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, crashed)
            out.append(crashed)
        elif isinstance(result, list):
            out.extend(result)
        else:
            out.append(result)
    return out


def _crashed(name: str, exc: BaseException) -> StepResult:
    """A step whose task itself raised: recorded as failed, never lost."""
    outcome = Outcome(
        step=name,
        target=name,
        status=Status.FAILED,
        detail=redact(f"step crashed: {type(exc).__name__}: {exc}"),
    )
    return StepResult(name=name, title=name, outcomes=[outcome])


@task(name="signoff", cache_policy=NO_CACHE)
async def finish_run(ctx: RunContext, record: RunRecord, steps: list[StepResult]) -> RunRecord:
    """Sign-off: close the run in the ledger, checkpoint, notify, write the reports.

    The reports are rendered from the ledger alone (``Ledger.load_run``), so
    ``openbell report RUN`` later gives the same bytes.
    """
    logger = get_run_logger()
    record = record.model_copy(update={"steps": steps, "finished_at": utcnow()})
    settings = get_settings()
    ledger = ctx.ledger
    try:
        await in_thread(
            ctx,
            ledger.finish_run,
            ctx.run_id,
            record.status,
            finished_at=record.finished_at,
            summary=_summary(record),
        )
        head = await in_thread(ctx, ledger.checkpoint)
        paths = report.report_paths(record, settings.reports_dir)
        record = record.model_copy(update={"reports": {k: str(v) for k, v in paths.items()}})
        if not record.dry_run:
            channel = ctx.estate.region(ctx.region).slack_channel
            notice = report.run_notice(record, ledger_head=f"{head['seq']} {head['hash']}")
            deliveries = await in_thread(ctx, notify.notify_run, ctx.notifier, channel, notice)
            for d in deliveries:
                await in_thread(ctx, ledger.record_notification, ctx.run_id, _delivery(d))
        written = await in_thread(
            ctx, report.write_run_report, ledger, ctx.run_id, settings.reports_dir
        )
        await in_thread(ctx, ledger.checkpoint)
        stored = await in_thread(ctx, ledger.load_run, ctx.run_id)
        record = stored.model_copy(
            update={"reports": {k: str(v) for k, v in written.items()}, "plan": record.plan}
        )
        _save_record(record, settings.runs_dir)
    finally:
        await ctx.close()
    logger.info("%s: %s; report %s", record.title, record.status.value, record.reports.get("html"))
    return record


def _summary(record: RunRecord) -> str:
    if record.skipped_reason:
        return record.skipped_reason
    counts = ", ".join(f"{n} {s}" for s, n in sorted(record.counts().items()))
    return f"{record.title}: {record.status.value} ({counts or 'no steps'})"


def _delivery(d: Any) -> dict[str, Any]:
    data = d.__dict__ if hasattr(d, "__dict__") else dict(d)
    return {k: redact(str(v)) if isinstance(v, str) else v for k, v in data.items()}


def _save_record(record: RunRecord, runs_dir: Any) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record.run_id}.json"
    path.write_text(redact(json.dumps(record.model_dump(mode="json"), indent=2)))
