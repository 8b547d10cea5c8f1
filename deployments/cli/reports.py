"""``openbell report``: a run's report, or a region's daily rollup, from the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from openbell.deployments.cli.approvals import _find_run
from openbell.deployments.cli.common import (
    AsOpt,
    CliError,
    DateOpt,
    JsonOpt,
    KeyOpt,
    command,
    out,
    parse_date,
    proven,
    require_entitled,
)

# Top-level commands: the package puts them on the root app.
app = typer.Typer()


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
    key: KeyOpt = None,
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

    with Ledger() as ledger:
        if run_id is not None:
            rid, started = _find_run(ledger, run_id)
            estate = load_estate(started.get("estate_source"))
            rb_, region_ = started["runbook"], started["region"]
            me = proven(estate, who, key, "report", rb_, region_, run_id=rid).person
            require_entitled(estate, me, "report", rb_, region_, rid)
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
            me = proven(estate, who, key, "report", "*", region).person
            for rb in sorted({str(e.payload["runbook"]) for e in day_runs}):
                require_entitled(estate, me, "report", rb, region)
            paths = write_rollup(ledger, region, trade_date, out_dir)
    if as_json:
        out.print_json(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        for kind, path in paths.items():
            out.print(f"report ({kind}): {path}", highlight=False)
