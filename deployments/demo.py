"""``make demo``: the lab, a local Prefect server, start of day everywhere with four eyes,
and end of day.

1. validate the lab estate (runbooks/lab.yaml);
2. start the lab (SSH hosts, FIX venue, market-data feed, OMS databases);
3. start a local Prefect server (UI at http://127.0.0.1:4200) unless one answers;
4. run start of day for every region on today's date there, as carol (a desk lead). The
   lab's apps start out down and the estate says starting them needs approval, so each
   run pauses; a second person from the region's approver group approves it from the
   CLI (``openbell approve``), and the run goes on. A region whose date is not a session
   is skipped with the calendar's reason;
5. run the first region again: every app is up, nothing to approve, nothing changes;
6. end of day for AMER on a trade date the lab traded (the latest half day if there is
   one): orders, fills, three-way reconciliation, positions, FIX, archive; then again,
   which re-does nothing and names the run that did it;
7. ``openbell audit verify`` on the ledger, then on a copy of it with one row altered
   behind openbell's back (sqlite3): the walk names that row;
8. print where the reports are.

Each run and each approval is a separate ``openbell`` process, as it would be for two
people at two terminals.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from openbell.deployments.prefect_server import ensure_server
from openbell.errors import OpenbellError
from openbell.lab import supervisor
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings

console = Console(soft_wrap=True)
OPENBELL = str(Path(sys.executable).with_name("openbell"))
REQUESTER = "carol"
#: Who approves in each lab region: someone of its approver group who is not carol.
APPROVER = {"apac": "alice", "emea": "bob", "amer": "dave"}


def key_of(person: str) -> str:
    """The lab's signing key of ``person``: how the demo proves who acts (``--key``)."""
    from openbell.runbooks.identity import lab_people_dir

    return str(lab_people_dir(get_settings().home) / person)


def as_(person: str) -> list[str]:
    """``--as PERSON --key THEIR_KEY``: a typed name alone proves nothing."""
    return ["--as", person, "--key", key_of(person)]


def openbell(*args: str, check: bool = False) -> int:
    """Run the openbell CLI as a separate process, its output on this terminal."""
    console.print(f"[dim]$ openbell {' '.join(args)}[/]")
    sys.stdout.flush()
    code = subprocess.call([OPENBELL, *args])
    if check and code != 0:
        raise OpenbellError(f"`openbell {' '.join(args)}` exited {code}")
    return code


def run_with_approval(region: str) -> int:
    """Start of day as carol; when it asks, the region's approver says yes from the CLI."""
    from openbell.tasks.approvals.gate import pending_requests
    from openbell.tasks.ledger import Ledger

    console.print(f"[dim]$ openbell run sod --region {region} --as {REQUESTER}[/]")
    sys.stdout.flush()
    started = time.time()
    proc = subprocess.Popen([OPENBELL, "run", "sod", "--region", region, *as_(REQUESTER)])
    answered = False
    while proc.poll() is None:
        time.sleep(1)
        if answered:
            continue
        with Ledger() as ledger:
            waiting = [
                r
                for r in pending_requests(ledger)
                if r.request.region == region and r.request.created_at.timestamp() >= started
            ]
        if waiting:
            run_id = waiting[-1].request.run_id
            approver = APPROVER[region]
            console.print(
                Rule(f"{approver}, in {region.upper()}'s approver group, approves from the CLI")
            )
            openbell("approve", run_id, *as_(approver), "--reason", "demo: plan reviewed, go ahead")
            answered = True
    return proc.wait()


def eod_day(estate: Estate, region: str) -> date:
    """The trade date end of day closes: the lab's latest closed half day, else its latest
    closed session."""
    import exchange_calendars as xcals

    from openbell.lab import trades

    reg = estate.region(region)
    days = trades.recent_sessions(xcals.get_calendar(reg.primary_calendar), reg.timezone)
    day = trades.last_closed_session([d for d in days if d.closes - d.opens < timedelta(hours=5)])
    day = day or trades.last_closed_session(days)
    if day is None:
        raise OpenbellError(f"the lab has no closed session of {reg.primary_calendar} yet")
    return day


def tamper_demo(ledger_db: Path) -> None:
    """Alter one row of a copy of the ledger with sqlite3 and show verify find it."""
    copy = ledger_db.with_name("ledger-tampered-copy.db")
    shutil.copy(ledger_db, copy)
    with sqlite3.connect(copy) as db:
        # A database owner can drop openbell's guard triggers; the hash chain remains.
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{name}"')
        row = db.execute(
            "SELECT seq, payload FROM entries WHERE kind = 'approval_decided' ORDER BY seq"
        ).fetchone()
        if row is None:
            console.print("no approval in the ledger to alter")
            return
        seq, payload = row
        who = next(a for a in APPROVER.values() if f'"{a}"' in payload)
        db.execute(
            "UPDATE entries SET payload = ? WHERE seq = ?",
            (payload.replace(f'"{who}"', '"mallory"'), seq),
        )
    console.print(
        f"with sqlite3, on a copy of the ledger ({copy}): entry {seq}, {who}'s approval, "
        "now says mallory approved"
    )
    env = {**os.environ, "OPENBELL_LEDGER_URL": f"sqlite:///{copy}"}
    console.print(f"[dim]$ OPENBELL_LEDGER_URL=sqlite:///{copy} openbell audit verify[/]")
    sys.stdout.flush()
    subprocess.call([OPENBELL, "audit", "verify", *as_(REQUESTER)], env=env)


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
    os.environ.setdefault("PREFECT_API_URL", api)

    codes: dict[str, int] = {}
    for region in estate.regions:
        console.print(Rule(f"start of day {region.upper()}"))
        codes[region] = run_with_approval(region)

    first = next(iter(estate.regions))
    console.print(Rule(f"start of day {first.upper()} again: nothing to approve or change"))
    codes[f"{first} again"] = openbell("run", "sod", "--region", first, *as_(REQUESTER))

    eod = "amer" if "amer" in estate.regions else first
    day = eod_day(estate, eod).isoformat()
    console.print(Rule(f"end of day {eod.upper()} {day}"))
    codes[f"eod {eod}"] = openbell("run", "eod", "--region", eod, "--date", day, *as_(REQUESTER))
    console.print(Rule(f"end of day {eod.upper()} {day} again: nothing is done twice"))
    codes[f"eod {eod} again"] = openbell(
        "run", "eod", "--region", eod, "--date", day, *as_(REQUESTER)
    )

    console.print(Rule("the ledger"))
    codes["audit"] = openbell("audit", "verify", *as_(REQUESTER))
    ledger_db = settings.home / "ledger.db"
    if ledger_db.exists():
        tamper_demo(ledger_db)

    console.print(Rule("reports"))
    for report in sorted(settings.reports_dir.glob("*.html")):
        console.print(str(report))
    console.print(f"\nall reports: {settings.reports_dir}")
    console.print("Prefect UI: " + api.removesuffix("/api"))
    console.print("stop the lab and the Prefect server with `make stop`")
    failed = {k: v for k, v in codes.items() if v != 0}
    if failed:
        console.print(f"[red]not everything passed: {failed}[/]")
    return 0 if not failed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OpenbellError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        sys.exit(1)
