"""What the command modules share: the consoles, one-red-line errors, option types, checks.

Errors, as :func:`friendly` turns them into one red line and an exit code::

    OpenbellError     (openbell.errors) exit code 1
     └── CliError     a usage problem: exit code 2
    KeyboardInterrupt "interrupted": exit code 130

:func:`command` registers a function on a Typer with :func:`friendly` around it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from openbell.flows.runbook import Runbook

from openbell.errors import OpenbellError, UnknownNameError
from openbell.secrets import redact
from openbell.settings import get_settings

P = ParamSpec("P")
R = TypeVar("R")

# soft_wrap: a line longer than the terminal stays one line (paths and commands are
# copied from here), and what a test or a script reads does not depend on its width.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


Region = Annotated[str, typer.Option("--region", "-r", help="region name, e.g. emea")]
DateOpt = Annotated[
    str | None, typer.Option("--date", "-d", help="trade date YYYY-MM-DD (default: today)")
]
EstateOpt = Annotated[
    Path | None, typer.Option("--estate", help="estate YAML (default OPENBELL_ESTATE)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
FromStep = Annotated[
    str | None,
    typer.Option("--from-step", help="re-do this step and the ones after it"),
]
AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="who you act as (default: OPENBELL_OPERATOR, else your OS account's person); "
        "proven by your OS account, your --key, or a service account allowed to act for them",
    ),
]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="OPENBELL_KEY",
        help="your SSH private key: signs what you do, checked against the entitlements' "
        "identity.allowed_signers",
    ),
]


#: The trade dates a command accepts (the exchange calendars cover these and more).
FIRST_DATE, LAST_DATE = date(1990, 1, 1), date(2100, 12, 31)


class CliError(OpenbellError):
    """A usage problem: one line, exit code 2."""


def as_text(value: str) -> str:
    """Input (a name, a reason, a path) as plain text for the terminal: Rich markup escaped,
    control characters (ANSI escapes among them) shown as ``\\x..``."""
    from rich.markup import escape

    shown = "".join(ch if ch.isprintable() or ch == "\n" else f"\\x{ord(ch):02x}" for ch in value)
    return escape(shown)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(
        f"[bold red]error:[/] {as_text(redact(message))}",
        highlight=False,
        soft_wrap=True,
        markup=True,
    )
    raise typer.Exit(code)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn openbell errors into one red line and an exit code (2 for usage, else 1)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CliError as exc:
            fail(str(exc), code=2)
        except OpenbellError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def command(
    target: typer.Typer, name: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``@target.command`` with friendly errors."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        target.command(name)(friendly(fn))
        return fn

    return deco


def parse_date(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--date {text!r} is not a date; expected YYYY-MM-DD, e.g. 2026-11-24"
        ) from None
    if not FIRST_DATE <= day <= LAST_DATE:
        raise CliError(
            f"--date {text}: outside {FIRST_DATE} to {LAST_DATE}, the dates openbell schedules"
        )
    return day


def check_runbook(runbook: str) -> Runbook:
    """The declared runbook ``runbook`` (any case), or a usage error listing them."""
    from openbell import catalog

    try:
        return catalog.get(runbook)
    except UnknownNameError:
        raise CliError(
            f"unknown runbook {runbook!r}; valid runbooks: {', '.join(catalog.names())}"
        ) from None


def whoami(given: str | None) -> str:
    """The name a read-only command (``plan``) goes by: ``--as``, else OPENBELL_OPERATOR,
    else the OS account. A claim, not a proof: anything that acts uses :func:`proven`."""
    from openbell.runbooks.identity import os_account

    return given or get_settings().operator or os_account()[0]


def proven(
    estate: Any,
    given: str | None,
    key: Path | None,
    action: str,
    runbook: str,
    region: str,
    *,
    run_id: str | None = None,
    statement: str | None = None,
) -> Any:
    """Who runs this command, proven (a :class:`~openbell.runbooks.identity.Proof`).

    ``--as``/``OPENBELL_OPERATOR`` is only a claim: the OS account, ``--key`` or a service
    account must back it. A claim nothing backs is refused, and the refusal recorded.
    """
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.runbooks.identity import IdentityError, action_statement, os_account, prove
    from openbell.tasks.ledger import Ledger

    claimed = given or get_settings().operator
    text = statement or action_statement(
        action=action, runbook=runbook, region=region.lower(), person=claimed or "(key owner)"
    )
    # The rules in force prove who acts: when the files differ from the region's pin,
    # the pinned entitlements (their allowed signers, their service accounts), never
    # the ones the operator brought along.
    rules = rules_in_force(estate, region)[0] if region != "*" else entitlements_for(estate)
    try:
        return prove(rules, claimed=claimed, action=action, statement=text, key=key)
    except IdentityError as exc:
        account, host, _ = os_account()
        with Ledger() as ledger:
            ledger.record_refusal(
                who=claimed or account,
                action=action,
                runbook=runbook,
                region=region.lower(),
                reason=f"identity not proven (OS account {account} on {host}): {exc}",
                run_id=run_id,
            )
        raise OpenbellError(f"refused: {exc}") from None


def rules_in_force(estate: Any, region: str) -> tuple[Any, Any, list[str]]:
    """(entitlements, pin, differences) for acting in ``region``.

    The estate's own entitlements when the region was never deployed or its files are the
    pinned ones; otherwise the pinned entitlements (deployments/pin.py), with the ways the
    files differ from the pin.
    """
    from openbell.deployments.pin import latest_pin, pinned_entitlements
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.tasks.ledger import Ledger

    with Ledger() as ledger:
        pin = latest_pin(ledger, region)
    if pin is None:
        return entitlements_for(estate), None, []
    differences = pin.differences(estate)
    if not differences:
        return entitlements_for(estate), pin, []
    return pinned_entitlements(pin), pin, differences


def require_pinned_estate(
    estate: Any, who: str, runbook: str, region: str, *, action: str = "run"
) -> None:
    """Refuse (and record) a run on an estate other than the one ``openbell deploy`` pinned.

    Allowed all the same when the pinned rules (never the new files' own) entitle ``who``
    to ``run-unpinned`` and to ``action``; that is recorded as an ``estate_unpinned_run``.
    """
    from openbell.tasks.ledger import Ledger

    rules, pin, differences = rules_in_force(estate, region)
    if pin is None or not differences:
        return
    region = region.lower()
    decisions = []
    for needed in ("run-unpinned", action):
        decision = rules.decide(who, needed, runbook, region)
        decisions.append(decision)
        if not decision.allowed:
            reason = (
                f"{'; '.join(differences)}: the estate of {region} was {pin.describe()}, and "
                f"by the pinned rules {decision.reason}"
            )
            with Ledger() as ledger:
                ledger.record_refusal(
                    who=who,
                    action=action,
                    runbook=runbook,
                    region=region,
                    reason=reason,
                    rule=decision.rule,
                )
            raise OpenbellError(
                f"refused: {reason}. Pin the changed files with openbell deploy, or try it "
                "with --dry-run"
            )
    with Ledger() as ledger:
        ledger.append(
            "estate_unpinned_run",
            None,
            {
                "who": who,
                "action": action,
                "runbook": runbook,
                "region": region,
                "differences": differences,
                "pin_seq": pin.seq,
                "rules": [d.rule for d in decisions],
                "reasons": [d.reason for d in decisions],
            },
        )


def require_trusted_files(estate: Any, who: str, action: str, runbook: str, region: str) -> None:
    """Refuse (and record) a run on rules someone else could have rewritten.

    The estate and its entitlements hold the rules a run obeys (who approves, what needs
    approval): a file others can write (group- or world-writable) or that belongs to an
    account other than yours or root's is refused for a run. Plans, dry runs and
    ``validate`` read any file.
    """
    import stat

    from openbell.tasks.ledger import Ledger

    problems = []
    for kind, path in (("estate", estate.source), ("entitlements", estate.entitlements)):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            problems.append(f"{kind} {path}: {exc.strerror}")
            continue
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(
                f"{kind} {path} is writable by its group or by everyone (mode "
                f"{stat.filemode(st.st_mode)}): chmod go-w it"
            )
        if st.st_uid not in (0, os.geteuid()):
            problems.append(
                f"{kind} {path} belongs to uid {st.st_uid}, neither you nor root: whoever "
                "owns it could rewrite the rules this run obeys"
            )
    if not problems:
        return
    reason = "; ".join(problems)
    with Ledger() as ledger:
        ledger.record_refusal(
            who=who, action=action, runbook=runbook, region=region.lower(), reason=reason
        )
    raise OpenbellError(f"refused: {reason}")


def require_entitled(
    estate: Any, who: str, action: str, runbook: str, region: str, run_id: str | None = None
) -> None:
    """Refuse (and record the refusal in the ledger) unless the rules allow it."""
    from openbell.runbooks.entitlements import entitlements_for
    from openbell.tasks.ledger import Ledger

    decision = entitlements_for(estate).decide(who, action, runbook, region)
    if decision.allowed:
        return
    with Ledger() as ledger:
        ledger.record_refusal(
            who=who,
            action=action,
            runbook=runbook,
            region=region.lower(),
            reason=decision.reason,
            rule=decision.rule,
            run_id=run_id,
        )
    hint = "" if decision.person else " (say who you are with --as or OPENBELL_OPERATOR)"
    raise OpenbellError(f"refused: {decision.reason}{hint}")
