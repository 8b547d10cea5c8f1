"""``make demo``: start the lab and a local Prefect server, run start of day everywhere.

1. validate the lab estate (runbooks/lab.yaml);
2. start the lab (SSH hosts, FIX venue, market-data feed, OMS databases);
3. start a local Prefect server (UI at http://127.0.0.1:4200) unless one answers;
4. run start of day for every region on today's date in that region: a region whose
   date is not a session is skipped with the calendar's reason;
5. run start of day for the first region that ran again: nothing changes the second time;
6. print where the reports are.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.rule import Rule

from deployments.display import summary_table
from deployments.prefect_server import ensure_server
from deployments.runner import run_runbook
from lab import supervisor
from openbell.errors import OpenbellError
from openbell.run import RunRecord
from openbell.settings import get_settings
from runbooks.loader import load_estate

console = Console()


def _show(record: RunRecord) -> None:
    console.print(summary_table(record))
    if record.reports:
        console.print(f"  report: {record.reports['html']}")


def main() -> int:
    settings = get_settings()
    estate = load_estate(settings.estate)
    console.print(Rule("openbell demo"))
    console.print(
        f"estate {estate.source}: regions {', '.join(estate.regions)}; home {settings.home}"
    )
    status = supervisor.up(settings.estate)
    console.print(f"lab up: {len(status.endpoints)} endpoints (`openbell lab status` lists them)")
    api = ensure_server(settings)
    console.print(f"Prefect server: {api.removesuffix('/api')} (runs stay visible in its UI)")

    records: list[RunRecord] = []
    for region in estate.regions:
        console.print(Rule(f"start of day {region.upper()}"))
        record = run_runbook("sod", region, None, console=console)
        _show(record)
        records.append(record)

    ran = [r for r in records if not r.skipped_reason]
    if ran:
        first = ran[0]
        console.print(Rule(f"start of day {first.region.upper()} again: nothing should change"))
        again = run_runbook("sod", first.region, first.trade_date, console=console)
        _show(again)
        changed = again.counts().get("changed", 0)
        console.print(f"second run: {changed} change(s), status {again.status.value}")
        records.append(again)

    console.print(Rule("reports"))
    for r in records:
        console.print(f"{r.title:<32} {r.status.value:<8} {r.reports.get('html', '')}")
    console.print(f"\nall reports: {settings.reports_dir}")
    console.print("stop the lab and the Prefect server with `make stop`")
    return 0 if all(r.passed for r in records) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OpenbellError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
