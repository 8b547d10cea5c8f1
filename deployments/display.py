"""Terminal rendering for the CLI: plans, live progress, run summaries (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from openbell.plan import Plan
from openbell.run import RunRecord, StepResult

STYLE = {
    "ok": "green",
    "changed": "blue",
    "skipped": "dim",
    "failed": "bold red",
    "unknown": "yellow",
    "running": "cyan",
    "waiting": "bold magenta",
}


def status_text(status: str) -> Text:
    return Text(status, style=STYLE.get(status, ""))


def plan_renderable(plan: Plan) -> Group:
    """The plan as a header line and one table per step."""
    head = Text(f"Plan: {plan.runbook} {plan.region.upper()} {plan.trade_date}", style="bold")
    parts: list[Any] = [head]
    if not plan.runs:
        parts.append(
            Text(f"{plan.skip_reason}: {_runbook_name(plan.runbook)} skipped", style="yellow")
        )
    for i, step in enumerate(plan.steps, 1):
        after = f" (after {', '.join(step.after)})" if step.after else ""
        parts.append(Text(f"\n{i}. {step.title}{after}", style="bold cyan"))
        if step.note:
            parts.append(Text(f"   {step.note}"))
        if step.rerun:
            parts.append(Text(f"   re-run: {step.rerun}", style="magenta"))
        for a in step.actions:
            parts.append(Text(f"   - {a.target}: {a.action}"))
    parts.append(
        Text(f"\n{len(plan.steps)} steps, {plan.command_count()} actions; nothing was touched.")
    )
    return Group(*parts)


def _runbook_name(runbook: str) -> str:
    from openbell import catalog

    return catalog.title(runbook)


def summary_table(record: RunRecord) -> Table:
    """One row per step with its status and the first problem."""
    table = Table(title=f"{record.title}: {record.status.value.upper()}", title_justify="left")
    table.add_column("Step")
    table.add_column("Status")
    table.add_column("Targets", justify="right")
    table.add_column("Summary", overflow="fold")
    for s in record.steps:
        table.add_row(s.title, status_text(s.status.value), str(len(s.outcomes)), s.summary())
    if record.skipped_reason:
        table.add_row("Calendar gate", status_text("skipped"), "0", record.skipped_reason)
    return table


class Progress:
    """Progress of a run: a live table on a terminal, else one line per finished step."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[str, tuple[str, str, str]] = {}
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(self._table(), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> Progress:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.__exit__(None, None, None)

    def __call__(self, step: str, event: str, detail: Any) -> None:
        if event == "start":
            self.rows[step] = (str(detail), "running", "")
        elif event in ("waiting", "decided"):
            status = "waiting" if event == "waiting" else "approval"
            self.rows[f"approval:{step}"] = (f"Approval of {step}", status, str(detail))
            if not self.live:
                line = Text(f"{status:>8}  ", style=STYLE.get(status, ""))
                line.append(f"approval of {step}: {detail}")
                self.console.print(line, soft_wrap=True)
        elif isinstance(detail, StepResult):
            self.rows[step] = (detail.title, detail.status.value, detail.summary())
            if not self.live:
                line = Text(f"{detail.status.value:>8}  ", style=STYLE.get(detail.status.value, ""))
                line.append(f"{detail.title}: {detail.summary()}")
                self.console.print(line, soft_wrap=True)
        if self.live:
            self.live.update(self._table())

    def _table(self) -> Table:
        table = Table(title="running…", title_justify="left")
        table.add_column("Step")
        table.add_column("Status")
        table.add_column("Detail", overflow="fold")
        for title, status, detail in self.rows.values():
            table.add_row(title, status_text(status), detail)
        return table
