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
    KeyOpt,
    Region,
    as_text,
    check_runbook,
    command,
    err,
    out,
    parse_date,
    proven,
    require_entitled,
    require_pinned_estate,
    require_trusted_files,
    whoami,
)

# Top-level commands: the package puts them on the root app.
app = typer.Typer()

# A release's options; a runbook without them refuses them (never silently ignored).
AppOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        help="release: the app, e.g. emea-oms; repeat it for several apps of the region "
        "(released in dependency order, one run each, stopping at the first that fails)",
    ),
]
VersionOpt = Annotated[
    list[str] | None,
    typer.Option("--version", help="release: the version (one per --app, in the same order)"),
]
ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="release: a configuration-only change: put this configuration bundle in force "
        "(the binary stays; not with --version)",
    ),
]
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
    wanted = {k: v for k, v in given.items() if v not in (None, False, [])}
    unknown = sorted(k for k in wanted if k not in fields)
    if unknown:
        opts = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise typer.BadParameter(f"{rb.key} takes no {opts}")
    return wanted


def each_app(rb: Any, estate: Any, region: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One set of run parameters per ``--app`` (with its ``--version``), in dependency order.

    A runbook without apps, or one app, is one run with ``extra`` as given.
    """
    from openbell.tasks.release.target import ReleaseError, release_order

    apps: list[str] = list(extra.pop("app", None) or [])
    versions: list[str] = list(extra.pop("version", None) or [])
    if extra.get("config") and len(apps) > 1:
        raise ReleaseError("--config changes the configuration of one app: give one --app")
    if len(apps) <= 1:
        if len(versions) > 1:
            raise ReleaseError(f"{len(versions)} --version for {len(apps)} --app")
        one = dict(extra)
        if apps:
            one["app"] = apps[0]
        if versions:
            one["version"] = versions[0]
        return [one]
    if versions and len(versions) != len(apps):
        raise ReleaseError(
            f"{len(apps)} --app but {len(versions)} --version: give one --version per --app, "
            "in the same order"
        )
    given: list[str | None] = list(versions) if versions else [None] * len(apps)
    pairs = list(zip(apps, given, strict=True))
    ordered = release_order(estate, region, pairs, rollback=bool(extra.get("rollback")))
    found = []
    for name, version in ordered:
        one = {**extra, "app": name}
        if version:
            one["version"] = version
        found.append(one)
    return found


@command(app)
def validate(path: Annotated[Path | None, typer.Argument(help="estate YAML")] = None) -> None:
    """Check an estate file and its entitlements: schema, cross-references, dependency
    cycles, identities (everything a later command would refuse)."""
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.identity import IdentityError, allowed_signers
    from openbell.runbooks.loader import load_estate

    estate = load_estate(path)
    ents = entitlements_for(estate)
    out.print(
        f"[green]ok[/] {as_text(str(estate.source))}: {len(estate.regions)} regions, "
        f"{len(estate.hosts)} hosts, {len(estate.apps)} apps, "
        f"{len(estate.fix_sessions)} FIX sessions, {len(estate.feeds)} feeds, "
        f"{len(estate.databases)} databases; entitlements {as_text(str(estate.entitlements))}: "
        f"{len(ents.rules)} rules"
    )
    try:
        allowed_signers(ents)
    except IdentityError as exc:
        # Not fatal (an OS account that is a person of the estate still proves who it
        # is), but every --key would be refused: say so now.
        err.print(f"[yellow]warning[/]: {as_text(str(exc))}; --key is refused until it exists")


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
    config: ConfigOpt = None,
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
        config=config,
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
    plans = []
    runs = each_app(rb, estate, region.lower(), extra)
    for one in runs:
        params = rb.params(region=region.lower(), **one)
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
            if rb.key_version is not None and one:
                try:
                    kv = rb.key_version(params, estate, ledger)
                except Exception:  # the plan already says what is missing
                    kv = None
            plans.append(annotate_rerun(the_plan, ledger, from_step, kv))
    if as_json:
        if len(plans) == 1:
            out.print_json(plans[0].model_dump_json())
        else:
            docs = [
                {
                    "app": one.get("app"),
                    "version": one.get("version"),
                    "plan": p.model_dump(mode="json"),
                }
                for one, p in zip(runs, plans, strict=True)
            ]
            out.print_json(json.dumps(docs))
        return
    for n, the_plan in enumerate(plans, start=1):
        if len(plans) > 1:
            out.print(f"[bold]{n} of {len(plans)}: {runs[n - 1]['app']}[/]")
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
    config: ConfigOpt = None,
    change: ChangeOpt = None,
    reason: ReasonOpt = None,
    rollback: RollbackOpt = False,
    emergency: EmergencyOpt = False,
    key: KeyOpt = None,
) -> None:
    """Run a runbook as a Prefect flow; exit 0 only when every check passed."""
    from openbell.deployments import runner
    from openbell.flows.plan import redo_steps
    from openbell.runbooks.loader import load_estate

    rb = check_runbook(runbook)
    trade_date = parse_date(day)
    estate = load_estate(estate_path)
    estate.region(region)
    # A dry run touches nothing (like a plan): the name it goes by is a claim. A run that
    # acts must prove who starts it.
    if dry_run:
        from openbell.runbooks.identity import unproven

        operator = whoami(who)
        proof = unproven(operator, "a dry run: the name given or the OS account, a claim")
    else:
        proof = proven(estate, who, key, "run", rb.key, region)
        operator = proof.person
    require_entitled(estate, operator, "run", rb.key, region)
    if not dry_run:
        require_trusted_files(estate, operator, "run", rb.key, region)
        require_pinned_estate(estate, operator, rb.key, region)
    redo_steps(rb, from_step)  # a typo fails now, not after the Prefect server started
    extra = runbook_params(
        rb,
        app=app_name,
        version=version,
        config=config,
        change=change,
        reason=reason,
        rollback=rollback,
        emergency=emergency,
    )
    runs = each_app(rb, estate, region.lower(), extra)
    if rb.key_version is not None:  # an unknown app or a missing version fails now too
        from openbell.tasks.ledger import Ledger

        with Ledger() as ledger:
            for one in runs:
                rb.key_version(rb.params(region=region.lower(), **one), estate, ledger)
    records = []
    for n, one in enumerate(runs, start=1):
        if len(runs) > 1 and not as_json:
            out.print(f"[bold]{n} of {len(runs)}: {one['app']}[/]")
        record = runner.run_runbook(
            rb.key,
            region,
            trade_date,
            estate=estate_path,
            dry_run=dry_run,
            operator=operator,
            proof=proof,
            from_step=from_step,
            extra=one,
            console=None if as_json else out,
        )
        records.append(record)
        if not as_json:
            from openbell.deployments.display import summary_table

            out.print(summary_table(record))
            for kind in ("html", "md", "json"):
                if kind in record.reports:
                    out.print(f"report ({kind}): {record.reports[kind]}")
        if not record.passed:
            break
    left = [one["app"] for one in runs[len(records) :]]
    if left and not as_json:
        out.print(
            f"[red]stopped[/]: {records[-1].runbook} of {runs[len(records) - 1]['app']} did "
            f"not pass; not started: {', '.join(left)}"
        )
    if as_json:
        docs = [r.model_dump(mode="json") | {"status": r.status.value} for r in records]
        if len(runs) == 1:
            out.print_json(json.dumps(docs[0]))
        else:
            out.print_json(json.dumps({"runs": docs, "not_started": left}))
    raise typer.Exit(0 if all(r.passed for r in records) and not left else 1)
