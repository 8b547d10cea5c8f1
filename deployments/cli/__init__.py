"""The ``openbell`` command line: thin, over flows/ and lab/.

Errors are one red line and a non-zero exit code; ``--json`` gives machine-readable
output where a script would want it.

One module per command group: ``runs`` (validate, plan, run), ``approvals`` (approve,
reject, approvals), ``reports`` (report), ``versions`` (versions) and
``schedule`` (calendar, deploy, doctor, worker, catchup), ``slack`` (the Slack app) put
their commands on the root app; ``lab``, ``audit`` and ``quarantine`` are groups of their
own; ``common`` holds what they share (consoles, errors, option types, checks).
Each keeps its heavy imports inside its commands: ``openbell --help`` imports no Prefect.
"""

from __future__ import annotations

import os

# Keep Prefect's console chatter out of the live progress table; the logs still reach
# the Prefect server (and its UI). --verbose turns them back on.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")

import sys

import typer

from openbell.deployments.cli import (
    approvals,
    audit,
    lab,
    quarantine,
    reports,
    runs,
    schedule,
    slack,
    versions,
)
from openbell.deployments.cli.common import err
from openbell.secrets import redact

app = typer.Typer(
    help="openbell: trading-desk runbooks as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# These modules' commands are top-level commands, not groups: the root app takes them
# over, in this order (the order `openbell --help` lists them in).
for _module in (runs, approvals, reports, schedule, versions, slack):
    app.registered_commands += _module.app.registered_commands
app.add_typer(lab.app, name="lab")
app.add_typer(audit.app, name="audit")
app.add_typer(quarantine.app, name="quarantine")


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
