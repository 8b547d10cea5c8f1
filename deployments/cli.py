"""The ``openbell`` command line: thin, over flows/ and lab/.

Errors are one red line and a non-zero exit code; ``--json`` gives machine-readable
output where a script would want it.
"""

from __future__ import annotations

import os

# Keep Prefect's console chatter out of the live progress table; the logs still reach
# the Prefect server (and its UI). --verbose turns them back on.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")

import functools
import getpass
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from openbell.flows.runbook import Runbook

from openbell.errors import OpenbellError, UnknownNameError
from openbell.secrets import redact
from openbell.settings import get_settings

app = typer.Typer(
    help="openbell: trading-desk runbooks as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
lab_app = typer.Typer(help="The simulated trading estate.", no_args_is_help=True)
fault_app = typer.Typer(help="Inject faults into the running lab.", no_args_is_help=True)
audit_app = typer.Typer(help="Check and export the run ledger.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
lab_app.add_typer(fault_app, name="fault")
app.add_typer(audit_app, name="audit")

P = ParamSpec("P")
R = TypeVar("R")

# soft_wrap: a line longer than the terminal stays one line (paths and commands are
# copied from here), and what a test or a script reads does not depend on its width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


Region = Annotated[str, typer.Option("--region", "-r", help="region name, e.g. emea")]
DateOpt = Annotated[
    str | None, typer.Option("--date", "-d", help="trade date YYYY-MM-DD (default: today)")
]
EstateOpt = Annotated[
    Path | None, typer.Option("--estate", help="estate YAML (default OPENBELL_ESTATE)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
FromStep = Annotated[
    str | None,
    typer.Option("--from-step", help="re-do this step and the ones after it"),
]
AsOpt = Annotated[
    str | None,
    typer.Option("--as", help="who you are (default: OPENBELL_OPERATOR, else your login)"),
]


class CliError(OpenbellError):
    """A usage problem: one line, exit code 2."""


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(
        f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True, markup=True
    )
    raise typer.Exit(code)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn openbell errors into one red line and an exit code (2 for usage, else 1)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            fail(str(exc), code=2)
        except OpenbellError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def command(
    target: typer.Typer, name: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``@target.command`` with friendly errors."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        target.command(name)(friendly(fn))
        return fn

    return deco


def parse_date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--date {text!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-24"
        ) from None


def check_runbook(runbook: str) -> Runbook:
    """The declared runbook ``runbook`` (any case), or a usage error listing them."""
    from openbell import catalog

    try:
        return catalog.get(runbook)
    except UnknownNameError:
        raise CliError(
            f"unknown runbook {runbook!r}; valid runbooks: {', '.join(catalog.names())}"
        ) from None


def whoami(given: str | None) -> str:
    """The identity a command acts as: ``--as``, else OPENBELL_OPERATOR, else the login."""
    return given or get_settings().operator or getpass.getuser()


def require_entitled(
    estate: Any, who: str, action: str, runbook: str, region: str, run_id: str | None = None
) -> None:
    """Refuse (and record the refusal in the ledger) unless the rules allow it."""
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.tasks.ledger import Ledger

    decision = entitlements_for(estate).decide(who, action, runbook, region)
    if decision.allowed:
        return
    with Ledger() as ledger:
        ledger.record_refusal(
            who=who,
            action=action,
            runbook=runbook,
            region=region.lower(),
            reason=decision.reason,
            rule=decision.rule,
            run_id=run_id,
        )
    hint = "" if decision.person else " (say who you are with --as or OPENBELL_OPERATOR)"
    raise OpenbellError(f"refused: {decision.reason}{hint}")


@command(app)
def validate(path: Annotated[Path | None, typer.Argument(help="estate YAML")] = None) -> None:
    """Check an estate file: schema, cross-references, dependency cycles."""
    from openbell.runbooks.loader import load_estate

    estate = load_estate(path)
    out.print(
        f"[green]ok[/] {estate.source}: {len(estate.regions)} regions, {len(estate.hosts)} hosts, "
        f"{len(estate.apps)} apps, {len(estate.fix_sessions)} FIX sessions, "
        f"{len(estate.feeds)} feeds, "
        f"{len(estate.databases)} databases"
    )


@command(app)
def plan(
    runbook: Annotated[str, typer.Argument(help="a runbook: sod, eod, ...")],
    region: Region,
    day: DateOpt = None,
    estate_path: EstateOpt = None,
    as_json: JsonOpt = False,
    who: AsOpt = None,
    from_step: FromStep = None,
) -> None:
    """Print what a run would do, touching nothing (and what a re-run would skip)."""
    from openbell.deployments.display import plan_renderable
    from openbell.flows.engine import today_in
    from openbell.flows.plan import annotate_rerun, build_plan
    from openbell.runbooks.loader import load_estate
    from openbell.tasks.ledger import Ledger

    rb = check_runbook(runbook)
    trade_date = parse_date(day)
    estate = load_estate(estate_path)
    estate.region(region)
    require_entitled(estate, whoami(who), "plan", rb.key, region)
    the_plan = build_plan(
        rb, estate, region.lower(), trade_date or today_in(estate, region.lower())
    )
    with Ledger() as ledger:
        the_plan = annotate_rerun(the_plan, ledger, from_step)
    if as_json:
        out.print_json(the_plan.model_dump_json())
    else:
        out.print(plan_renderable(the_plan), soft_wrap=True)


@command(app)
def run(
    runbook: Annotated[str, typer.Argument(help="a runbook: sod, eod, ...")],
    region: Region,
    day: DateOpt = None,
    estate_path: EstateOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="plan and record, touch nothing")
    ] = False,
    as_json: JsonOpt = False,
    who: AsOpt = None,
    from_step: FromStep = None,
) -> None:
    """Run a runbook as a Prefect flow; exit 0 only when every check passed."""
    from openbell.deployments import runner
    from openbell.flows.plan import redo_steps
    from openbell.runbooks.loader import load_estate

    rb = check_runbook(runbook)
    trade_date = parse_date(day)
    estate = load_estate(estate_path)
    estate.region(region)
    operator = whoami(who)
    require_entitled(estate, operator, "run", rb.key, region)
    redo_steps(rb, from_step)  # a typo fails now, not after the Prefect server started
    record = runner.run_runbook(
        rb.key,
        region,
        trade_date,
        estate=estate_path,
        dry_run=dry_run,
        operator=operator,
        from_step=from_step,
        console=None if as_json else out,
    )
    if as_json:
        out.print_json(json.dumps(record.model_dump(mode="json") | {"status": record.status.value}))
    else:
        from openbell.deployments.display import summary_table

        out.print(summary_table(record))
        for kind in ("html", "md", "json"):
            if kind in record.reports:
                out.print(f"report ({kind}): {record.reports[kind]}")
    raise typer.Exit(0 if record.passed else 1)


# ---- approvals ---------------------------------------------------------------------------
Reason = Annotated[str, typer.Option("--reason", help="your justification (kept in the ledger)")]
StepOpt = Annotated[str | None, typer.Option("--step", help="the step, if the run has several")]


def _decide(run: str, step: str | None, who: str | None, verb: str, reason: str) -> None:
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.loader import load_estate
    from openbell.tasks.approvals.gate import decide, resume_run
    from openbell.tasks.ledger import Ledger

    approver = whoami(who)
    with Ledger() as ledger:
        run_id, started = _find_run(ledger, run)
        estate = load_estate(started.get("estate_source"))
        runbook, region = started["runbook"], started["region"]
        require_entitled(estate, approver, "approve", runbook, region, run_id=run_id)
        decided = decide(
            ledger,
            estate,
            entitlements_for(estate),
            run_id=run_id,
            approver=approver,
            decision="reject" if verb == "reject" else "approve",
            justification=reason,
            step=step,
            via="cli",
        )
        req = decided.request.request
        out.print(
            f"[green]{verb}d[/] {runbook} {region.upper()} {started['trade_date']} step {req.step} "
            f"(run {run_id}) as {approver}: {decided.verdict.status}: {decided.verdict.reason}"
        )
        flow_run_id = started.get("flow_run_id")
        if flow_run_id:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from openbell.deployments.prefect_server import ensure_server

            with temporary_settings({PREFECT_API_URL: ensure_server()}):
                out.print(resume_run(flow_run_id, decided, approver, verb, ledger=ledger))


def _find_run(ledger: Any, ref: str) -> tuple[str, dict[str, Any]]:
    """A run by id, unique id prefix, or name (``sod-emea-2026-11-27``: the latest)."""
    starts = ledger.entries(kinds=["run_started"])
    exact = [e for e in starts if e.run_id == ref]
    if not exact:
        exact = (
            [e for e in starts if e.run_id and e.run_id.startswith(ref)] if len(ref) >= 6 else []
        )
    if not exact:
        named = [
            e
            for e in starts
            if f"{e.payload['runbook']}-{e.payload['region']}-{e.payload['trade_date']}" == ref
        ]
        exact = named[-1:]
    ids = {e.run_id for e in exact}
    if not ids:
        raise CliError(
            f"no run {ref!r} in the ledger; give a run id (or 6+ characters of it) or a "
            "run name such as sod-emea-2026-11-27 (`openbell approvals` lists waiting runs)"
        )
    if len(ids) > 1:
        raise CliError(f"{ref!r} matches {len(ids)} runs: {', '.join(sorted(map(str, ids)))}")
    entry = exact[-1]
    return str(entry.run_id), dict(entry.payload)


@command(app)
def approve(
    run: Annotated[str, typer.Argument(help="run id, id prefix, or name like sod-emea-2026-11-27")],
    reason: Reason,
    step: StepOpt = None,
    who: AsOpt = None,
) -> None:
    """Approve a step a run is waiting on (four-eyes: never your own run)."""
    _decide(run, step, who, "approve", reason)


@command(app)
def reject(
    run: Annotated[str, typer.Argument(help="run id, id prefix, or name like sod-emea-2026-11-27")],
    reason: Reason,
    step: StepOpt = None,
    who: AsOpt = None,
) -> None:
    """Reject a step a run is waiting on; the run then changes nothing there."""
    if not reason.strip():
        raise CliError("a reject needs a justification: --reason '...'")
    _decide(run, step, who, "reject", reason)


@command(app)
def approvals(as_json: JsonOpt = False) -> None:
    """List the approval requests that are waiting, with the command to answer each."""
    from openbell.tasks.approvals.gate import pending_requests
    from openbell.tasks.ledger import Ledger

    with Ledger() as ledger:
        waiting = pending_requests(ledger)
    rows = [
        {
            "run_id": r.request.run_id,
            "runbook": r.request.runbook,
            "region": r.request.region,
            "step": r.request.step,
            "requester": r.request.requester,
            "approver_group": r.request.approver_group,
            "required": r.request.required_approvers,
            "decisions": len(r.decisions),
            "expires_at": r.request.expires_at.isoformat(),
            "binding_hash": r.request.binding_hash,
            "summary": r.summary,
        }
        for r in waiting
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no approval requests waiting")
    for row in rows:
        out.print(
            f"{row['runbook']} {str(row['region']).upper()} step {row['step']}: {row['summary']} "
            f"(requested by {row['requester']}, {row['required']} from {row['approver_group']}, "
            f"expires {row['expires_at']})\n  openbell approve {row['run_id']} "
            f"--step {row['step']} --as <you> --reason '...'"
        )


# ---- the ledger ----------------------------------------------------------------------------
def _require_audit(who: str | None, everywhere: bool, estate_path: Path | None) -> None:
    """``audit`` rights: somewhere to verify, everywhere to export (the content itself)."""
    from openbell import catalog
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    ents = entitlements_for(estate)
    me = whoami(who)
    cells = [(rb, r) for rb in catalog.names() for r in estate.regions]
    allowed = [ents.decide(me, "audit", rb, r).allowed for rb, r in cells]
    if all(allowed) or (any(allowed) and not everywhere):
        return
    rb, r = next(c for c, ok in zip(cells, allowed, strict=True) if not ok)
    require_entitled(estate, me, "audit", rb, r)


@command(audit_app, "verify")
def audit_verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="checkpoint file (default: the reports' ledger-checkpoints.jsonl)"),
    ] = None,
    as_json: JsonOpt = False,
    who: AsOpt = None,
    estate_path: EstateOpt = None,
) -> None:
    """Walk the ledger's hash chain: OK, or the first bad entry and its position."""
    from openbell.tasks.ledger import Ledger

    _require_audit(who, everywhere=False, estate_path=estate_path)
    default = get_settings().reports_dir / "ledger-checkpoints.jsonl"
    cps = checkpoint or (default if default.exists() else None)
    with Ledger() as ledger:
        result = ledger.verify(checkpoint=cps)
    if as_json:
        out.print_json(json.dumps(result.as_dict(), default=str))
    elif result.ok:
        out.print(f"[green]{result.describe()}[/]" + (f" (checkpoints: {cps})" if cps else ""))
    if not result.ok:
        if not as_json:
            err.print(f"[bold red]{result.describe()}[/]", highlight=False)
        raise typer.Exit(1)


@command(audit_app, "export")
def audit_export(
    output: Annotated[Path, typer.Option("--out", "-o", help="bundle file to write")],
    start: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD (UTC), inclusive")] = None,
    end: Annotated[str | None, typer.Option("--to", help="YYYY-MM-DD (UTC), exclusive")] = None,
    who: AsOpt = None,
    estate_path: EstateOpt = None,
) -> None:
    """Write the entries of a date range as a bundle that verifies offline."""
    from openbell.tasks.ledger import Ledger, verify_bundle

    _require_audit(who, everywhere=True, estate_path=estate_path)
    start_d, end_d = parse_date(start), parse_date(end)
    with Ledger() as ledger:
        path = ledger.export(output, start_d, end_d)
    result = verify_bundle(path)
    out.print(f"wrote {path}: {result.describe()}")


@command(audit_app, "verify-bundle")
def audit_verify_bundle(bundle: Annotated[Path, typer.Argument(help="an exported bundle")]) -> None:
    """Verify an exported bundle offline (no database needed)."""
    from openbell.tasks.ledger import verify_bundle

    result = verify_bundle(bundle)
    if not result.ok:
        err.print(f"[bold red]{result.describe()}[/]", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]{result.describe()}[/]")


@command(app, "report")
def report_cmd(
    run_id: Annotated[str | None, typer.Argument(help="a run id (or its first characters)")] = None,
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="daily rollup of this region")
    ] = None,
    day: DateOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="where to write (default OPENBELL_HOME/reports)")
    ] = None,
    as_json: JsonOpt = False,
    who: AsOpt = None,
) -> None:
    """Write a run's report, or a region's daily rollup, from the ledger alone.

    `openbell report RUN_ID` or `openbell report --region emea --date 2026-11-24`.
    """
    from openbell.tasks.ledger import Ledger
    from openbell.tasks.reports.report import write_run_report
    from openbell.tasks.reports.rollup import write_rollup

    if (run_id is None) == (region is None):
        raise CliError("give a run id, or --region and --date for a daily rollup (not both)")
    if run_id is not None and day is not None:
        raise CliError("--date goes with --region (a run's report needs only its id)")
    from openbell.runbooks.loader import load_estate

    me = whoami(who)
    with Ledger() as ledger:
        if run_id is not None:
            rid, started = _find_run(ledger, run_id)
            estate = load_estate(started.get("estate_source"))
            require_entitled(estate, me, "report", started["runbook"], started["region"], rid)
            paths = write_run_report(ledger, rid, out_dir)
        else:
            assert region is not None
            trade_date = parse_date(day)
            if trade_date is None:
                raise CliError("--region needs --date YYYY-MM-DD, e.g. --date 2026-11-24")
            known = sorted({str(e.payload.get("region")) for e in ledger.find_runs()})
            if region.lower() not in known:
                raise CliError(
                    f"no run in region {region!r} in the ledger; regions with runs: "
                    f"{', '.join(known) or 'none'}"
                )
            day_runs = ledger.find_runs(region=region.lower(), trade_date=trade_date)
            estate = load_estate(None)
            for rb in sorted({str(e.payload["runbook"]) for e in day_runs}):
                require_entitled(estate, me, "report", rb, region)
            paths = write_rollup(ledger, region, trade_date, out_dir)
    if as_json:
        out.print_json(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        for kind, path in paths.items():
            out.print(f"report ({kind}): {path}", highlight=False)


@command(lab_app, "up")
def lab_up(estate_path: EstateOpt = None) -> None:
    """Start the simulated estate in the background and print its endpoints."""
    from openbell.lab import supervisor

    status = supervisor.up(estate_path or get_settings().estate)
    _print_lab(status)


@command(lab_app, "down")
def lab_down() -> None:
    """Stop the simulated estate and every app it started."""
    from openbell.lab import supervisor

    supervisor.down()
    out.print("lab stopped")


@command(lab_app, "status")
def lab_status(as_json: JsonOpt = False) -> None:
    """Show whether the lab runs and its endpoints."""
    from openbell.lab import supervisor

    status = supervisor.status()
    if as_json:
        out.print_json(json.dumps(_jsonable(status)))
    else:
        _print_lab(status)


@command(fault_app, "add")
def fault_add(
    kind: str,
    target: str,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
) -> None:
    """Inject a fault, e.g. `openbell lab fault add slow_host emea-app1 -p seconds=20`."""
    from openbell.lab.faults import FaultBook

    params: dict[str, Any] = {}
    for item in param or []:
        if "=" not in item:
            raise CliError(f"--param {item!r}: expected key=value")
        k, v = item.split("=", 1)
        params[k] = int(v) if v.lstrip("-").isdigit() else v
    try:
        fault = FaultBook(get_settings().lab_dir / "faults.json").add(kind, target, **params)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    from openbell.lab import supervisor

    applied = supervisor.status(probe=False).running and supervisor.wait_faults_applied(
        timeout_s=10
    )
    note = "" if applied else " (the lab is not running: it applies when it starts)"
    out.print(f"fault set: {fault.kind} on {fault.target} {fault.params or ''}{note}")


@command(fault_app, "clear")
def fault_clear() -> None:
    """Remove every injected fault."""
    from openbell.lab.faults import FaultBook

    FaultBook(get_settings().lab_dir / "faults.json").clear()
    out.print("faults cleared")


@command(fault_app, "list")
def fault_list() -> None:
    """List the injected faults."""
    from openbell.lab.faults import FaultBook

    faults = FaultBook(get_settings().lab_dir / "faults.json").active()
    for f in faults:
        out.print(f"{f.kind} {f.target} {f.params or ''}")
    if not faults:
        out.print("no faults")


# ---- schedules, deployments, workers (deployments/schedules.py, deploy.py, doctor.py) ------
HorizonOpt = Annotated[
    int, typer.Option("--horizon-days", min=1, max=90, help="days of runs kept scheduled ahead")
]


@command(app, "calendar")
def calendar_cmd(
    region: Annotated[
        str | None, typer.Option("--region", "-r", help="region (default: every region)")
    ] = None,
    days: Annotated[int, typer.Option("--days", "-n", min=1, max=400, help="days to show")] = 14,
    start: Annotated[
        str | None, typer.Option("--from", help="first day YYYY-MM-DD (default: today)")
    ] = None,
    estate_path: EstateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sessions, half days, holidays and each runbook's exact run times (local and UTC)."""
    from openbell.deployments.calendar_view import calendar_table
    from openbell.deployments.schedules import calendar_days
    from openbell.flows.engine import today_in
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    if region:
        estate.region(region)
    regions = [region.lower()] if region else sorted(estate.regions)
    first = parse_date(start)
    found = {r: calendar_days(estate, r, first or today_in(estate, r), days) for r in regions}
    if as_json:
        out.print_json(json.dumps({r: [d.to_json() for d in ds] for r, ds in found.items()}))
        return
    for r, ds in found.items():
        out.print(calendar_table(estate, r, ds))
        out.print()


@command(app)
def deploy(
    estate_path: EstateOpt = None,
    horizon_days: HorizonOpt = 14,
    prefect_yaml: Annotated[
        Path | None,
        typer.Option("--prefect-yaml", help="where to keep prefect.yaml (default deployments/)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Register work pools, deployments and the coming runs; idempotent, prints what changed."""
    from openbell.deployments import deploy as dep
    from openbell.deployments.calendar_view import deploy_summary
    from openbell.deployments.prefect_server import ensure_server
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    api_url = ensure_server()
    report = dep.run_sync(
        lambda: dep.deploy(
            estate,
            api_url,
            horizon_days=horizon_days,
            prefect_yaml=prefect_yaml or dep.PREFECT_YAML,
            dry_run=dry_run,
        )
    )
    if as_json:
        out.print_json(json.dumps(report.to_json()))
    else:
        out.print(deploy_summary(report))


@command(app)
def doctor(
    estate_path: EstateOpt = None,
    horizon_days: HorizonOpt = 14,
    lookback_days: Annotated[
        int, typer.Option("--lookback-days", min=0, max=31, help="days back to look for misses")
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Check calendars, DST ahead, pools, workers, deployments, the horizon and missed runs."""
    from openbell.deployments import doctor as doc
    from openbell.deployments.calendar_view import doctor_table
    from openbell.deployments.deploy import run_sync
    from openbell.deployments.prefect_server import local_url
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    now = doc.utcnow()
    api_url = os.environ.get("PREFECT_API_URL") or local_url(get_settings())
    checks = doc.calendar_checks(estate, now, horizon_days)
    checks += run_sync(
        lambda: doc.prefect_checks(
            estate, api_url, now, horizon_days=horizon_days, lookback_days=lookback_days
        )
    )
    if as_json:
        out.print_json(json.dumps([c.to_json() for c in checks]))
    else:
        out.print(doctor_table(checks))
    raise typer.Exit(1 if any(c.level == "fail" for c in checks) else 0)


@command(app)
def worker(
    region: Region,
    estate_path: EstateOpt = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="flow runs at once on this worker")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="worker name")] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="print the command instead of starting it")
    ] = False,
) -> None:
    """Start a Prefect worker for the region's work pool (runs its runbooks near its hosts)."""
    from openbell.deployments.deploy import run_sync
    from openbell.deployments.prefect_server import ensure_server
    from openbell.deployments.worker import check_pool, worker_command
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    pool = estate.region(region).work_pool
    api_url = ensure_server()
    argv, env = worker_command(estate, region, api_url, name=name, limit=limit)
    if print_only:
        shown = {k: env[k] for k in ("PREFECT_API_URL", "OPENBELL_ESTATE") if k in env}
        out.print(" ".join(f"{k}={v}" for k, v in shown.items()) + " " + " ".join(argv))
        return
    run_sync(lambda: check_pool(api_url, pool))
    err.print(f"worker for region {region.lower()} on work pool {pool} ({api_url})")
    os.execve(argv[0], argv, env)  # noqa: S606  (argv is a list: no shell)


@command(app)
def catchup(
    runbook: Annotated[str, typer.Argument(help="sod")],
    region: Region,
    day: DateOpt = None,
    estate_path: EstateOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what it would do")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="wait until the run ends")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds --wait waits")] = 1800,
    as_json: JsonOpt = False,
    who: AsOpt = None,
) -> None:
    """Run a missed scheduled run on its region's worker; never runs one twice."""
    from openbell.deployments import catchup as cu
    from openbell.deployments.calendar_view import catchup_line
    from openbell.deployments.deploy import prefect_client, run_sync
    from openbell.deployments.prefect_server import ensure_server
    from openbell.flows.engine import today_in
    from openbell.runbooks.loader import load_estate

    key = check_runbook(runbook).key
    trade_date = parse_date(day)
    estate = load_estate(estate_path)
    estate.region(region)
    if not dry_run:
        require_entitled(estate, whoami(who), "run", key, region)
    api_url = ensure_server()

    async def go() -> tuple[cu.CatchUp, str | None]:
        async with prefect_client(api_url) as client:
            result = await cu.catch_up(
                client,
                estate,
                key,
                region,
                trade_date or today_in(estate, region.lower()),
                now=cu.utcnow(),
                dry_run=dry_run,
            )
            final = None
            if wait and result.flow_run is not None and result.action in ("created", "queued"):
                run = await cu.wait_for(client, result.flow_run.id, timeout_s=timeout)
                final = run.state_name
        return result, final

    result, final = run_sync(go)
    if as_json:
        body = {"action": result.action, "message": result.message, "final_state": final}
        body["flow_run_id"] = str(result.flow_run.id) if result.flow_run else None
        out.print_json(json.dumps(body))
    else:
        out.print(catchup_line(result))
        if final:
            out.print(f"{result.run.name}: {final}")
    failed = not result.ok or (final is not None and final != "Completed")
    raise typer.Exit(1 if failed else 0)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return obj


def _print_lab(status: Any) -> None:
    data = _jsonable(status)
    out.print(f"lab: {'running' if data.get('running') else 'stopped'} (pid {data.get('pid')})")
    for ep in data.get("endpoints", []):
        mark = "[green]up[/]" if ep.get("listening") else "[red]down[/]"
        out.print(f"  {mark} {ep.get('kind'):<6} {ep.get('name'):<20} {ep.get('address')}")


def main() -> None:
    """Entry point. Set OPENBELL_DEBUG=1 to see tracebacks of unexpected errors."""
    try:
        app()
    except Exception as exc:
        if os.environ.get("OPENBELL_DEBUG"):
            raise
        err.print(
            f"[bold red]error:[/] {redact(f'{type(exc).__name__}: {exc}')} "
            "(set OPENBELL_DEBUG=1 for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
