"""``openbell calendar``, ``deploy``, ``doctor``, ``worker`` and ``catchup``: the schedules.

Over deployments/schedules.py, deploy.py, doctor.py, worker.py and catchup.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from openbell.deployments.cli.common import (
    AsOpt,
    DateOpt,
    EstateOpt,
    JsonOpt,
    KeyOpt,
    Region,
    check_runbook,
    command,
    err,
    out,
    parse_date,
    proven,
    require_entitled,
    require_pinned_estate,
    require_trusted_files,
)
from openbell.settings import get_settings

# Top-level commands: the package puts them on the root app.
app = typer.Typer()

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
        typer.Option(
            "--prefect-yaml", help="prefect.yaml to write (default OPENBELL_HOME/prefect.yaml)"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change")] = False,
    as_json: JsonOpt = False,
    who: AsOpt = None,
    signing_key: KeyOpt = None,
) -> None:
    """Register work pools, deployments and the coming runs, and pin the estate and its
    entitlements (their sha256) per region: runs on other files are refused. Idempotent,
    prints what changed."""
    from openbell.deployments import deploy as dep
    from openbell.deployments.calendar_view import deploy_summary
    from openbell.deployments.prefect_server import ensure_server
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    person, proof = (None, None) if dry_run else may_deploy(estate, who, signing_key)
    api_url = ensure_server()
    report = dep.run_sync(
        lambda: dep.deploy(
            estate,
            api_url,
            horizon_days=horizon_days,
            prefect_yaml=prefect_yaml or "home",
            dry_run=dry_run,
        )
    )
    pins = []
    if person is not None:
        from openbell.deployments.pin import record_pins
        from openbell.tasks.ledger import Ledger

        with Ledger() as ledger:
            pins = record_pins(ledger, estate, by=person, proof=proof)
    if as_json:
        body = report.to_json()
        body["pins"] = [
            {"region": p.region, "estate_sha256": p.estate_sha256,
             "entitlements_sha256": p.entitlements_sha256, "seq": p.seq}
            for p in pins
        ]  # fmt: skip
        out.print_json(json.dumps(body))
    else:
        out.print(deploy_summary(report))
        for p in pins:
            out.print(
                f"pinned {p.region}: estate sha256:{p.estate_sha256[:12]}, entitlements "
                f"sha256:{(p.entitlements_sha256 or '(none)')[:12]} (ledger seq {p.seq})"
            )


def may_deploy(estate: Any, who: str | None, key: Path | None) -> tuple[str, dict[str, Any]]:
    """Who deploys, proven, and entitled to ``deploy`` every runbook of every region by
    the rules in force (a pinned region's pinned rules); a refusal is recorded."""
    from openbell import catalog
    from openbell.deployments.cli.common import rules_in_force
    from openbell.errors import OpenbellError
    from openbell.tasks.ledger import Ledger

    person, proof = None, None
    for region in sorted(estate.regions):
        got = proven(estate, who, key, "deploy", "*", region)
        person, proof = got.person, got.model_dump(mode="json")
        rules = rules_in_force(estate, region)[0]
        for runbook in catalog.names():
            decision = rules.decide(person, "deploy", runbook, region)
            if decision.allowed:
                continue
            with Ledger() as ledger:
                ledger.record_refusal(
                    who=person, action="deploy", runbook=runbook, region=region,
                    reason=decision.reason, rule=decision.rule,
                )  # fmt: skip
            raise OpenbellError(f"refused: {decision.reason}")
    assert person is not None and proof is not None  # an estate has at least one region
    return person, proof


@command(app)
def doctor(
    estate_path: EstateOpt = None,
    horizon_days: HorizonOpt = 14,
    lookback_days: Annotated[
        int, typer.Option("--lookback-days", min=0, max=31, help="days back to look for misses")
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Check calendars, DST ahead, database roles, pools, workers, deployments, the horizon
    and missed runs."""
    from openbell.deployments import doctor as doc
    from openbell.deployments.calendar_view import doctor_table
    from openbell.deployments.deploy import run_sync
    from openbell.deployments.prefect_server import local_url
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    now = doc.utcnow()
    api_url = os.environ.get("PREFECT_API_URL") or local_url(get_settings())
    checks = doc.calendar_checks(estate, now, horizon_days)
    checks += doc.database_checks(estate)
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
    signing_key: KeyOpt = None,
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
        me = proven(estate, who, signing_key, "run", key, region).person
        require_entitled(estate, me, "run", key, region)
        require_trusted_files(estate, me, "run", key, region)
        require_pinned_estate(estate, me, key, region)
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
