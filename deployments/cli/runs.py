"""``openbell validate``, ``plan`` and ``run``: check an estate, show a run, do one."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from openbell.deployments.cli.common import (
    AsOpt,
    DateOpt,
    EstateOpt,
    FromStep,
    JsonOpt,
    Region,
    check_runbook,
    command,
    out,
    parse_date,
    require_entitled,
    whoami,
)

# Top-level commands: the package puts them on the root app.
app = typer.Typer()

# A release's options; a runbook without them refuses them (never silently ignored).
AppOpt = Annotated[str | None, typer.Option("--app", help="release: the app, e.g. emea-oms")]
VersionOpt = Annotated[str | None, typer.Option("--version", help="release: the version")]
ChangeOpt = Annotated[str | None, typer.Option("--change", help="release: change reference")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="release: why")]
RollbackOpt = Annotated[
    bool, typer.Option("--rollback", help="release: back to the version before the last release")
]
EmergencyOpt = Annotated[
    bool, typer.Option("--emergency", help="release: outside the window, two approvers")
]


def runbook_params(rb: Any, **given: Any) -> dict[str, Any]:
    """The options given that the runbook's parameters model has; refuses the others."""
    fields = rb.params.model_fields
    wanted = {k: v for k, v in given.items() if v not in (None, False)}
    unknown = sorted(k for k in wanted if k not in fields)
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise typer.BadParameter(f"{rb.key} takes no {opts}")
    return wanted


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
    app_name: AppOpt = None,
    version: VersionOpt = None,
    change: ChangeOpt = None,
    reason: ReasonOpt = None,
    rollback: RollbackOpt = False,
    emergency: EmergencyOpt = False,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="plan for this moment (ISO time with zone), e.g. a release window"
        ),
    ] = None,
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
    extra = runbook_params(
        rb,
        app=app_name,
        version=version,
        change=change,
        reason=reason,
        rollback=rollback,
        emergency=emergency,
    )
    when = None
    if at is not None:
        try:
            when = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise typer.BadParameter(
                f"--at {at!r}: expected an ISO time, e.g. 2026-12-02T14:00Z"
            ) from None
        if when.tzinfo is None:
            raise typer.BadParameter(f"--at {at!r}: give its zone, e.g. 2026-12-02T14:00+00:00")
    params = rb.params(region=region.lower(), **extra)
    the_plan = build_plan(
        rb,
        estate,
        region.lower(),
        trade_date or today_in(estate, region.lower()),
        params=params,
        at=when,
    )
    with Ledger() as ledger:
        kv = None
        if rb.key_version is not None and extra:
            try:
                kv = rb.key_version(params, estate, ledger)
            except Exception:  # the plan already says what is missing
                kv = None
        the_plan = annotate_rerun(the_plan, ledger, from_step, kv)
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
    app_name: AppOpt = None,
    version: VersionOpt = None,
    change: ChangeOpt = None,
    reason: ReasonOpt = None,
    rollback: RollbackOpt = False,
    emergency: EmergencyOpt = False,
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
    extra = runbook_params(
        rb,
        app=app_name,
        version=version,
        change=change,
        reason=reason,
        rollback=rollback,
        emergency=emergency,
    )
    if rb.key_version is not None:  # an unknown app or a missing version fails now too
        from openbell.tasks.ledger import Ledger

        with Ledger() as ledger:
            rb.key_version(rb.params(region=region.lower(), **extra), estate, ledger)
    record = runner.run_runbook(
        rb.key,
        region,
        trade_date,
        estate=estate_path,
        dry_run=dry_run,
        operator=operator,
        from_step=from_step,
        extra=extra,
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
