"""The one engine every runbook runs on.

Given a declaration (:class:`openbell.flows.runbook.Runbook`) and its parameters, a run:

1. opens: loads the estate, resolves the trade date, decides the calendar gate (a day
   that is not a session is skipped, not failed), builds the run's resources, records
   the run and its plan in the ledger (``open_run``);
2. takes the run lock where the runbook declares one (one run per runbook, region and
   trade date acts at a time; runs that died holding it are recorded as interrupted);
3. runs the steps as their ``after`` says: each starts when the steps it runs after have
   finished, independent ones at once; a gate that does not pass stops the run; with
   ``--from-step`` the steps before it are recorded as skipped (gates still run);
4. before a step the estate names in ``runbooks.<key>.approvals``, reads what it would
   change and waits for four eyes on exactly that (:mod:`openbell.tasks.approvals.gate`);
5. runs each step as a Prefect task: its outcomes per target, timed, recorded in the
   ledger as it finishes; a step whose function raised is recorded as failed;
6. signs off: closes the run in the ledger, checkpoints, notifies, writes the reports
   from the ledger alone (``finish_run``).

Nothing here knows a particular runbook.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from openbell import chaos
from openbell.outcome import Outcome, Status, utcnow
from openbell.run import RunRecord, StepResult
from openbell.runbooks.schema import Estate
from openbell.secrets import redact
from openbell.settings import get_settings
from openbell.tasks.context import ProgressFn, RunContext, StepRun, in_thread

if TYPE_CHECKING:
    from prefect import Flow

    from openbell.flows.runbook import Runbook, RunParams, Step

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: The CLI sets this to show live progress of an in-process run.
progress_listener: ProgressFn | None = None
#: The proof of who asked for the run, set by deployments/runner.py when the CLI runs the
#: flow in its own process. A flow run a worker picked up (a schedule, Prefect's UI or
#: API) has none: its ``operator`` parameter is a claim, recorded as unproven.
requester_proof: Any = None


# ---- the Prefect flow ----------------------------------------------------------------------
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
    from prefect import flow
    from prefect.settings import get_current_settings

    return flow(
        name=name,
        flow_run_name=run_name,
        log_prints=False,
        result_storage=Path(get_current_settings().results.local_storage_path),
        persist_result=False,
    )


def flow_for(runbook: Runbook) -> Flow[Any, Any]:
    """The Prefect flow of a declared runbook: one parameter, ``params``, of its model."""

    async def run(params: Any) -> RunRecord:
        return await run_runbook(runbook, params)

    run.__name__ = run.__qualname__ = runbook.key
    run.__module__ = runbook.module
    run.__doc__ = f"{runbook.title.capitalize()}: {', '.join(runbook.step_names)}."
    # Prefect reads the parameter model from the annotation (the UI's form, validation).
    run.__annotations__ = {"params": runbook.params, "return": RunRecord}
    return openbell_flow(runbook.flow_name, run_namer(runbook.key))(run)


def run_namer(runbook: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``sod-emea-2026-11-26``."""
    from prefect.runtime import flow_run

    def name() -> str:
        params = flow_run.parameters.get("params") or {}
        if hasattr(params, "model_dump"):
            params = params.model_dump()
        day = params.get("trade_date") or "today"
        return f"{runbook}-{params.get('region', '?')}-{day}"

    return name


def today_in(estate: Estate, region: str) -> date:
    """Today's date in the region's timezone."""
    return datetime.now(ZoneInfo(estate.region(region).timezone)).date()


# ---- a run ---------------------------------------------------------------------------------
async def run_runbook(runbook: Runbook, params: RunParams) -> RunRecord:
    """Run a declared runbook: open, (lock,) steps, sign-off. The body of every flow."""
    from openbell.tasks.ledger import RunLockedError

    ctx, record = await _open_task()(runbook, params)
    if record.skipped_reason or params.dry_run:
        return await _finish_task()(ctx, record, [])
    try:
        async with exclusive(ctx) if runbook.lock else contextlib.nullcontext():
            unfinished = await _unfinished_recovery(ctx, runbook)
            if unfinished is not None:
                steps = await resume_recovery(ctx, runbook, unfinished)
            else:
                steps = await run_steps(ctx, runbook, params.from_step)
                steps += await recover_if_needed(ctx, runbook, steps)
            return await _finish_task()(ctx, record, steps)
    except RunLockedError as exc:
        refused = skipped_step("lock", "One run at a time", str(exc), Status.FAILED)
        await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, refused)
        return await _finish_task()(ctx, record, [refused])


def _open_task() -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name="calendar_gate", cache_policy=NO_CACHE)(open_run)


def _finish_task() -> Any:
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(name="signoff", cache_policy=NO_CACHE)(finish_run)


async def open_run(runbook: Runbook, params: RunParams) -> tuple[RunContext, RunRecord]:
    """Load the estate, decide the calendar gate, build the run's resources, record it."""
    from prefect import get_run_logger
    from prefect.runtime import deployment, flow_run

    from openbell.flows.plan import build_plan, calendar_facts, redo_steps
    from openbell.runbooks.loader import estate_version, load_estate
    from openbell.secrets import install_log_redaction, preload
    from openbell.tasks.connectors import http, notify, ssh
    from openbell.tasks.ledger import Ledger

    install_log_redaction()
    logger = get_run_logger()
    settings = get_settings()
    estate = load_estate(params.estate)
    region = params.region.lower()
    estate.region(region)
    missing = await asyncio.to_thread(preload, estate.secret_names(region))
    if missing:
        logger.warning("secrets not found (the steps using them will fail): %s", missing)
    day = params.trade_date or today_in(estate, region)
    _, reason, facts = calendar_facts(estate, region, day)
    if not runbook.session_gate:
        reason = None
    prev = facts.get("previous_session")
    run_id = str(flow_run.id or uuid.uuid4())
    version = estate_version(estate)
    operator = params.operator or settings.operator or getpass.getuser()
    proof = requester_proof
    if proof is not None and proof.person == operator:
        proven = proof.model_dump(mode="json")
    else:
        via = "a Prefect deployment run" if deployment.id else "a flow parameter"
        proven = {
            "person": operator,
            "method": "none",
            "account": f"{via}: the operator parameter, which nothing proves",
        }
    ctx = RunContext(
        estate=estate,
        region=region,
        trade_date=day,
        prev_trade_date=date.fromisoformat(prev) if prev else None,
        ssh=ssh.SshPool(estate),
        http=http.HttpClient,
        notifier=notify.get_notifier(settings),
        operator=operator,
        progress=progress_listener,
        ledger=Ledger(),
        run_id=run_id,
        runbook=runbook.key,
        parameters=params.model_dump(mode="json"),
        runbook_version=version,
        dry_run=params.dry_run,
    )
    record = RunRecord(
        run_id=run_id,
        runbook=runbook.key,
        region=region,
        trade_date=day,
        dry_run=params.dry_run,
        operator=ctx.operator,
        requester_proof=proven,
        calendar=facts,
        skipped_reason=reason,
        estate_source=estate.source,
        flow_run_id=flow_run.id,
    )
    plan = build_plan(runbook, estate, region, day, params=params)
    record = record.model_copy(update={"plan": plan.model_dump(mode="json")})
    ctx.redo = redo_steps(runbook, params.from_step)
    ctx.params = params
    if runbook.key_version is not None:
        ctx.key_version = await in_thread(ctx, runbook.key_version, params, estate, ctx.ledger)
    await in_thread(
        ctx,
        ctx.ledger.start_run_from_record,
        record,
        parameters=ctx.parameters,
        runbook_version=version,
    )
    await in_thread(ctx, ctx.ledger.record_plan, run_id, record.plan)
    if reason:
        logger.info("%s %s %s skipped: %s", runbook.key, region, day, reason)
    else:
        logger.info(
            "%s %s %s: %s", runbook.key, region, day, "dry run" if params.dry_run else "running"
        )
    return ctx, record


# ---- the steps -----------------------------------------------------------------------------
async def run_steps(ctx: RunContext, runbook: Runbook, from_step: str | None) -> list[StepResult]:
    """Every step, each once the steps it runs after have finished; independent ones at once.

    A gate that does not pass stops the run: the steps not started yet do not run. With
    ``from_step``, the steps before it (gates apart) are recorded as skipped.

    Returns:
        The results in declared order (the order of the plan and the report).
    """
    done: dict[str, asyncio.Future[StepResult | None]] = {}
    stopped: list[str] = []

    async def one(step: Step) -> StepResult | None:
        for dep in step.after:
            await done[dep]
        if stopped:
            return None
        if from_step and not step.gate and step.name not in ctx.redo:
            skipped = skipped_step(step.name, step.title, f"not run: restarting from {from_step}")
            await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, skipped)
            return skipped
        result = await run_step(ctx, step)
        if step.gate and not result.passed:
            stopped.append(step.name)
        return result

    loop = asyncio.get_running_loop()
    for step in runbook.steps:  # declared order: every `after` is already in `done`
        done[step.name] = loop.create_task(one(step))
    results = await asyncio.gather(*done.values())
    return [r for r in results if r is not None]


async def run_step(ctx: RunContext, step: Step) -> StepResult:
    """One step as a Prefect task: approval first where the estate asks for it, then its
    work, timed and recorded. A step whose work raised is recorded as failed."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    call = StepRun(name=step.name, title=step.title, side_effects=step.side_effects)
    started = utcnow()
    try:
        if step.changes is not None:
            await _approve(ctx, step, call)
            started = utcnow()  # the wait for approval is the approval's, not the step's
        work = task(
            name=getattr(step.run, "__name__", step.name),
            task_run_name=step.name,
            cache_policy=NO_CACHE,
        )(step.run)
        chaos.point(f"{step.name}:begin")
        ctx.emit(step.name, "start", step.title)
        outcomes = await work(ctx, call)
        result = StepResult(
            name=step.name,
            title=step.title,
            outcomes=outcomes,
            started_at=started,
            finished_at=utcnow(),
            note=call.note,
        )
    except Exception as exc:
        result = _crashed(step, exc, started)
        await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, result)
        ctx.emit(step.name, "done", result)
        return result
    await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, result)
    chaos.point(f"{step.name}:end")
    ctx.emit(step.name, "done", result)
    return result


async def _approve(ctx: RunContext, step: Step, call: StepRun) -> None:
    """Where the estate says so, read what the step would change and wait for four eyes.

    Only the targets the approval covered may change; when it is rejected or expires,
    each of them is refused with the verdict's reason (the step reports them failed).
    Targets already done for this key (idempotency) are not asked about again.
    """
    from openbell.tasks.approvals.gate import ApprovalOverride, gate, policy_for

    if step.changes is None or ctx.dry_run:
        return
    if step.approval == "policy" and policy_for(ctx, step.name) is None:
        return
    wanted = await step.changes(ctx, call)
    if wanted is None or not wanted.targets:
        return
    if step.approval == "always":
        from openbell.runbooks.schema import ApprovalPolicy

        ctx.approval_overrides[step.name] = ApprovalOverride(
            policy=ApprovalPolicy(
                steps=[step.name],
                required_approvers=wanted.required_approvers,
                ttl_minutes=wanted.ttl_minutes,
                approver_group=wanted.approver_group,
            ),
            emergency=wanted.emergency,
            artifact_sha256=wanted.artifact_sha256,
            bound=dict(wanted.bound),
        )
    targets = wanted.targets
    if step.side_effects and step.name not in ctx.redo:
        from openbell.tasks.idempotency import completion_key

        keys = {t: completion_key(ctx, step.name, t) for t in targets}
        done = [t for t, k in keys.items() if await in_thread(ctx, ctx.ledger.completion, k)]
        targets = [t for t in targets if t not in done]
        if not targets:
            return
    lines = [line for t, line in zip(wanted.targets, wanted.lines, strict=False) if t in targets]
    verdict = await gate(ctx, step.name, targets=targets, changes=lines, summary=wanted.summary)
    call.approval = verdict.status
    call.approved = frozenset(targets) if verdict.satisfied else frozenset()
    call.rejected_by = tuple(verdict.rejected_by)
    if not verdict.satisfied:
        why = f"approval {verdict.status}: {verdict.reason}"
        call.refused = dict.fromkeys(targets, why)


# ---- recovery (a release's rollback) -------------------------------------------------------
def _recovery_ref(ctx: RunContext) -> str:
    """The ledger ref of a recovery: one per (runbook, region, key version)."""
    from openbell.tasks.ledger.chain import canonical_json

    raw = canonical_json(["recovery", ctx.runbook, ctx.region, ctx.key_version])
    return hashlib.sha256(raw.encode()).hexdigest()


async def _unfinished_recovery(ctx: RunContext, runbook: Runbook) -> dict[str, Any] | None:
    """The recovery an earlier run started for this key and never finished, if any."""
    if runbook.recovery is None:
        return None
    ref = _recovery_ref(ctx)
    entries = await in_thread(
        ctx, ctx.ledger.entries, kinds=["recovery_started", "recovery_finished"], ref=ref
    )
    if not entries or entries[-1].kind != "recovery_started":
        return None
    return {"run_id": entries[-1].run_id, **entries[-1].payload}


async def recover_if_needed(
    ctx: RunContext, runbook: Runbook, results: list[StepResult]
) -> list[StepResult]:
    """When a step declared ``recover=True`` did not pass, run the runbook's recovery."""
    if runbook.recovery is None:
        return []
    recoverable = {s.name for s in runbook.steps if s.recover}
    failed = [r for r in results if r.name in recoverable and not r.passed]
    if not failed:
        return []
    cause = "; ".join(
        f"{r.name}: {o.target}: {o.detail}" for r in failed for o in r.outcomes if not o.passed
    )
    return await _run_recovery(
        ctx, runbook, cause[:2000], resumed_from=None, failed=[r.name for r in failed]
    )


async def resume_recovery(
    ctx: RunContext, runbook: Runbook, unfinished: dict[str, Any]
) -> list[StepResult]:
    """A run killed during its recovery: this run does the recovery, not the change.

    The steps whose failure started the recovery are reported failed (with the run they
    failed in): the change did not happen, whatever the recovery's outcome."""
    assert runbook.recovery is not None
    by = str(unfinished.get("run_id") or "?")
    why = f"not run: resuming the {runbook.recovery.name} that run {by[:8]} started"
    cause = str(unfinished.get("cause", ""))
    failed = set(unfinished.get("failed") or [])
    results = []
    for step in runbook.steps:
        if step.name in failed:
            result = skipped_step(
                step.name, step.title, f"failed in run {by[:8]}: {cause}"[:2000], Status.FAILED
            )
        else:
            result = skipped_step(step.name, step.title, why)
        await in_thread(ctx, ctx.ledger.record_step, ctx.run_id, result)
        results.append(result)
    return results + await _run_recovery(
        ctx, runbook, cause, resumed_from=by, failed=sorted(failed)
    )


async def _run_recovery(
    ctx: RunContext,
    runbook: Runbook,
    cause: str,
    *,
    resumed_from: str | None,
    failed: list[str],
) -> list[StepResult]:
    assert runbook.recovery is not None
    ref = _recovery_ref(ctx)
    ctx.scratch["recovery_cause"] = cause
    payload = {
        "step": runbook.recovery.name,
        "cause": cause,
        "resumed_from": resumed_from,
        "failed": failed,
    }
    await in_thread(ctx, ctx.ledger.append, "recovery_started", ctx.run_id, payload, ref=ref)
    chaos.point(f"{runbook.recovery.name}:started")
    result = await run_step(ctx, runbook.recovery)
    if result.passed:
        await in_thread(
            ctx,
            ctx.ledger.append,
            "recovery_finished",
            ctx.run_id,
            {
                "step": runbook.recovery.name,
                "status": result.status.value,
                "region": ctx.region,
                "key_version": ctx.key_version,
                "key_base": ctx.key_version.rsplit("/", 1)[0],
            },
            ref=ref,
        )
    return [result]


def skipped_step(name: str, title: str, why: str, status: Status = Status.SKIPPED) -> StepResult:
    """A step not run this time (or refused), with the reason on its one outcome."""
    return StepResult(
        name=name,
        title=title,
        outcomes=[Outcome(step=name, target=name, status=status, detail=why)],
    )


def _crashed(step: Step, exc: BaseException, started: datetime) -> StepResult:
    """A step whose task itself raised: recorded as failed, never lost."""
    outcome = Outcome(
        step=step.name,
        target=step.name,
        status=Status.FAILED,
        detail=redact(f"step crashed: {type(exc).__name__}: {exc}"),
        started_at=started,
    )
    return StepResult(name=step.name, title=step.title, outcomes=[outcome], started_at=started)


# ---- one run at a time ---------------------------------------------------------------------
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
    from prefect import get_run_logger

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


# ---- sign-off ------------------------------------------------------------------------------
async def finish_run(ctx: RunContext, record: RunRecord, steps: list[StepResult]) -> RunRecord:
    """Sign-off: close the run in the ledger, checkpoint, notify, write the reports.

    The reports are rendered from the ledger alone (``Ledger.load_run``), so
    ``openbell report RUN`` later gives the same bytes.
    """
    from prefect import get_run_logger

    from openbell.tasks.connectors import notify
    from openbell.tasks.reports import report

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
