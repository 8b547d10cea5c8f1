"""``openbell lab up|down|status`` and ``lab fault add|clear|list``: the simulated estate."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from openbell.deployments.cli.common import CliError, EstateOpt, JsonOpt, command, out
from openbell.settings import get_settings

app = typer.Typer(help="The simulated trading estate.", no_args_is_help=True)
fault_app = typer.Typer(help="Inject faults into the running lab.", no_args_is_help=True)
app.add_typer(fault_app, name="fault")


@command(app, "up")
def lab_up(estate_path: EstateOpt = None) -> None:
    """Start the simulated estate in the background and print its endpoints."""
    from openbell.lab import supervisor

    status = supervisor.up(estate_path or get_settings().estate)
    _print_lab(status)


@command(app, "down")
def lab_down() -> None:
    """Stop the simulated estate and every app it started."""
    from openbell.lab import supervisor

    supervisor.down()
    out.print("lab stopped")


@command(app, "status")
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
