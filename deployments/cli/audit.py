"""``openbell audit verify``, ``export`` and ``verify-bundle``: check and export the ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from openbell.deployments.cli.common import (
    AsOpt,
    EstateOpt,
    JsonOpt,
    KeyOpt,
    command,
    err,
    out,
    parse_date,
    proven,
    require_entitled,
)
from openbell.settings import get_settings

app = typer.Typer(help="Check and export the run ledger.", no_args_is_help=True)


def _require_audit(
    who: str | None, key: Path | None, everywhere: bool, estate_path: Path | None
) -> None:
    """``audit`` rights: somewhere to verify, everywhere to export (the content itself)."""
    from openbell import catalog
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.loader import load_estate

    estate = load_estate(estate_path)
    ents = entitlements_for(estate)
    me = proven(estate, who, key, "audit", "*", "*").person
    cells = [(rb, r) for rb in catalog.names() for r in estate.regions]
    allowed = [ents.decide(me, "audit", rb, r).allowed for rb, r in cells]
    if all(allowed) or (any(allowed) and not everywhere):
        return
    rb, r = next(c for c, ok in zip(cells, allowed, strict=True) if not ok)
    require_entitled(estate, me, "audit", rb, r)


@command(app, "verify")
def audit_verify(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="checkpoint file (default: the reports' ledger-checkpoints.jsonl)"),
    ] = None,
    as_json: JsonOpt = False,
    who: AsOpt = None,
    estate_path: EstateOpt = None,
    key: KeyOpt = None,
) -> None:
    """Walk the ledger's hash chain: OK, or the first bad entry and its position."""
    from openbell.tasks.ledger import Ledger

    _require_audit(who, key, everywhere=False, estate_path=estate_path)
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


@command(app, "export")
def audit_export(
    output: Annotated[Path, typer.Option("--out", "-o", help="bundle file to write")],
    start: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD (UTC), inclusive")] = None,
    end: Annotated[str | None, typer.Option("--to", help="YYYY-MM-DD (UTC), exclusive")] = None,
    who: AsOpt = None,
    estate_path: EstateOpt = None,
    key: KeyOpt = None,
) -> None:
    """Write the entries of a date range as a bundle that verifies offline."""
    from openbell.tasks.ledger import Ledger, verify_bundle

    _require_audit(who, key, everywhere=True, estate_path=estate_path)
    start_d, end_d = parse_date(start), parse_date(end)
    with Ledger() as ledger:
        path = ledger.export(output, start_d, end_d)
    result = verify_bundle(path)
    out.print(f"wrote {path}: {result.describe()}")


@command(app, "verify-bundle")
def audit_verify_bundle(bundle: Annotated[Path, typer.Argument(help="an exported bundle")]) -> None:
    """Verify an exported bundle offline (no database needed)."""
    from openbell.tasks.ledger import verify_bundle

    result = verify_bundle(bundle)
    if not result.ok:
        err.print(f"[bold red]{result.describe()}[/]", highlight=False)
        raise typer.Exit(1)
    out.print(f"[green]{result.describe()}[/]")
