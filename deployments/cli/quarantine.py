"""``openbell quarantine``: hosts a release left quarantined, and clearing one after a fix.

A release whose rollback could not finish on a host quarantines it in the ledger; start
of day fails on it ("do not open with this host"). A re-run of the release that finishes
the rollback clears it by itself. A host fixed by hand is cleared here, by one proven
person entitled to approve releases in the region (their own account or key, never a
service account), with a reason; the clearance is in the ledger.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

from openbell.deployments.cli.common import (
    AsOpt,
    EstateOpt,
    JsonOpt,
    KeyOpt,
    Region,
    as_text,
    command,
    out,
    proven,
    require_entitled,
)
from openbell.errors import OpenbellError

app = typer.Typer(help="Hosts a release left quarantined (start of day fails on them).")


def _rows(ledger: Any, region: str) -> list[dict[str, Any]]:
    from openbell.tasks.release import records

    return [
        {
            "host": host,
            "app": e.payload["app"],
            "release": e.payload["key"],
            "run_id": e.run_id,
            "at": e.ts.isoformat(),
            "reason": e.payload["reason"],
        }
        for host, e in sorted(records.quarantined(ledger, region).items())
    ]


@command(app, name="list")
def list_(region: Region, estate_path: EstateOpt = None, as_json: JsonOpt = False) -> None:
    """The quarantined hosts of a region; exit 1 when there is one."""
    from openbell.runbooks.loader import load_estate
    from openbell.tasks.ledger import Ledger

    estate = load_estate(estate_path)
    estate.region(region)
    with Ledger() as ledger:
        rows = _rows(ledger, region.lower())
    if as_json:
        out.print_json(json.dumps(rows))
    elif not rows:
        out.print(f"no host of {region.lower()} is quarantined")
    for r in [] if as_json else rows:
        out.print(
            as_text(
                f"{r['host']}: {r['app']} quarantined by {r['release']} (run {r['run_id']}, "
                f"{r['at']}): {r['reason']}"
            )
        )
    raise typer.Exit(1 if rows else 0)


def clear_statement(*, region: str, host: str, person: str, reason: str) -> str:
    """What a key signs to clear a host: which host, where, who, why, when."""
    from openbell.outcome import utcnow

    why = " ".join(reason.split())
    return (
        f"openbell quarantine-clear v1\nregion {region}\nhost {host}\nperson {person}\n"
        f"reason {why}\nat {utcnow().isoformat()}\nnonce {os.urandom(8).hex()}\n"
    )


@command(app)
def clear(
    host: Annotated[str, typer.Argument(help="the host, as the estate names it")],
    region: Region,
    reason: Annotated[str, typer.Option("--reason", help="what was fixed (kept in the ledger)")],
    estate_path: EstateOpt = None,
    who: AsOpt = None,
    key: KeyOpt = None,
) -> None:
    """Take a host fixed by hand out of quarantine (proven, entitled to approve releases)."""
    from openbell.runbooks.loader import load_estate
    from openbell.settings import get_settings
    from openbell.tasks.ledger import Ledger
    from openbell.tasks.release import records

    estate = load_estate(estate_path)
    region = region.lower()
    estate.region(region)
    claimed = who or get_settings().operator
    statement = clear_statement(
        region=region, host=host, person=claimed or "(key owner)", reason=reason
    )
    # A decision, like an approval: the person's own account or key, never a service account.
    proof = proven(estate, claimed, key, "approve", "release", region, statement=statement)
    person = claimed or proof.person
    require_entitled(estate, person, "approve", "release", region)
    with Ledger() as ledger:
        held = records.quarantined(ledger, region)
        if not reason.strip():
            ledger.record_refusal(
                who=person,
                action="quarantine-clear",
                runbook="release",
                region=region,
                reason=f"clearing {host} with a blank reason",
            )
            raise OpenbellError("to clear a host, say what was fixed: --reason '...' (not blank)")
        entry = held.get(host)
        if entry is None:
            valid = ", ".join(sorted(held)) or "none"
            raise OpenbellError(
                f"{host} is not quarantined in {region}; quarantined hosts there: {valid}"
            )
        records.record_cleared(
            ledger,
            entry.run_id,
            region=region,
            app=str(entry.payload["app"]),
            host=host,
            how="cleared by hand",
            by=person,
            reason=reason,
        )
    out.print(
        f"[green]cleared[/] {as_text(host)} in {region} as {as_text(person)} "
        f"({as_text(proof.describe())}): {as_text(reason)}"
    )
