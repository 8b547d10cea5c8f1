"""What a runbook is: a declared value that one engine runs.

A runbook declares its key and title, the model of its parameters, the model of its
policy (the estate's ``runbooks.<key>`` block) and its steps. Each :class:`Step` is
declared once, and everything reads that one declaration: the engine
(:mod:`openbell.flows.engine`: order, concurrency, gates, approvals, idempotency keys,
``--from-step``, the run lock), the plan (:mod:`openbell.flows.plan`), the estate's
validation (an approval for a step that changes nothing is refused when the file is
loaded), the report's order, the CLI's help and the deployments (:mod:`openbell.catalog`).

Example, a runbook of two steps::

    TIDY = Runbook(
        key="tidy",
        title="tidy up",
        flow_name="tidy-up",
        steps=(
            Step("disk", "Disk use under threshold", check_disk, plan=plan_disk),
            Step(
                "logs", "Old logs removed", ensure_logs_removed, plan=plan_logs,
                after=("disk",), side_effects=True, changes=logs_to_remove,
            ),
        ),
    )

Nothing here imports Prefect: ``TIDY.flow`` builds the Prefect flow when it is first
asked for (a run, a deployment), so listing, validating and planning stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openbell.errors import UnknownNameError
from openbell.outcome import Outcome
from openbell.plan import PlannedAction, StepPlan
from openbell.runbooks.schema import RunbookPolicy
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun

if TYPE_CHECKING:
    from prefect import Flow

#: A step's work: (the run, this step) -> one Outcome per target.
StepFn = Callable[[RunContext, StepRun], Awaitable[list[Outcome]]]
#: A step's plan: (what planning sees) -> the actions, or the actions and a note.
PlanFn = Callable[[PlanContext], list[PlannedAction] | StepPlan]
#: What a step would change now (read-only), for its approval; None or empty: nothing.
ChangesFn = Callable[[RunContext, StepRun], Awaitable[Changes | None]]
#: (parameters, estate, ledger) -> the run's key version (``emea-oms@5.0.4``).
KeyVersionFn = Callable[[Any, Any, Any], str]


class RunParams(BaseModel):
    """The parameters of a runbook run: its identity is (runbook, region, trade date)."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(description="region name, e.g. emea")
    trade_date: date | None = Field(default=None, description="default: today in the region")
    dry_run: bool = Field(default=False, description="plan only, touch nothing")
    estate: str | None = Field(default=None, description="estate YAML (default OPENBELL_ESTATE)")
    operator: str | None = Field(default=None, description="who started the run")
    from_step: str | None = Field(
        default=None,
        description="re-do this step and the ones after it, whatever was recorded as done",
    )


@dataclass(frozen=True)
class Step:
    """One step of a runbook, declared once.

    Attributes:
        name: the one name of the step, everywhere (``apps``, ``fix_eod``).
        title: what people call it (``Apps running``).
        run: its task: ``async (ctx, step) -> list[Outcome]``; the engine makes it a
            Prefect task, times it, records it and reports its progress.
        plan: what it will do, without touching anything (built from the same command
            and URL builders ``run`` uses).
        after: the steps that must finish first (declared earlier in the runbook).
        gate: a gate: when it does not pass, nothing after it runs.
        side_effects: its targets get idempotency keys: a re-run for the same key does
            nothing to a target that completed, and says which run did it.
        changes: what it would change now (read-only); a step with ``changes`` may be
            named in the estate's ``runbooks.<key>.approvals.steps``, and then waits for
            a second person before it changes anything.
        approval: ``always``: the step waits for approval whenever it has something to
            change, from the approvers its ``changes`` names (a release's designated
            group), whatever the estate's ``approvals`` block says.
        recover: when this step does not pass, the engine runs the runbook's
            ``recovery`` step (a release's rollback) before it signs off.
    """

    name: str
    title: str
    run: StepFn
    plan: PlanFn
    after: tuple[str, ...] = ()
    gate: bool = False
    side_effects: bool = False
    changes: ChangesFn | None = None
    approval: Literal["policy", "always"] = "policy"
    recover: bool = False


def _declaring_module() -> str:
    """The module whose top level declares the runbook (two frames up: __init__, caller)."""
    return str(sys._getframe(2).f_globals.get("__name__", "__main__"))


@dataclass(frozen=True)
class Runbook:
    """A runbook: its identity, its models and its steps.

    Attributes:
        key: short name used everywhere (``sod``), in run names (``sod-emea-2026-11-27``)
            and in the estate (``runbooks.sod``).
        title: what people call it (``start of day``).
        flow_name: the Prefect flow's name (``start-of-day``).
        steps: in the order a person would read them; each step's ``after`` names steps
            declared before it, so the order is also a valid order to run them in.
        params: the model of its parameters.
        policy: the model of its block in the estate (``runbooks.<key>``).
        session_gate: runs only on sessions of the region's primary calendar; another day
            is skipped with the calendar's reason, not failed.
        lock: one run per (runbook, region, trade date) acts at a time.
        signoff: what the sign-off does, for the plan.
        recovery: the step that undoes what the run changed when a step declared with
            ``recover=True`` fails (a release's rollback). The engine records that it
            started and that it finished: a run killed during the recovery is resumed as
            the recovery, never as the change.
        key_version: what makes a run's idempotency keys its own beyond (runbook, region,
            trade date), from its parameters: a release's ``app@version``.
        module: the module that declares it (found by itself).
    """

    key: str
    title: str
    flow_name: str
    steps: tuple[Step, ...]
    params: type[RunParams] = RunParams
    policy: type[RunbookPolicy] = RunbookPolicy
    session_gate: bool = True
    lock: bool = False
    signoff: str = "summary to Slack, report (HTML, Markdown, JSON)"
    recovery: Step | None = None
    key_version: KeyVersionFn | None = None
    module: str = field(default_factory=_declaring_module)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for s in self.steps:
            if s.name in seen or s.name in RESERVED_STEPS:
                raise ValueError(f"runbook {self.key}: step name {s.name!r} is used twice")
            for dep in s.after:
                if dep not in seen:
                    raise ValueError(
                        f"runbook {self.key}: step {s.name!r} runs after {dep!r}, which is not "
                        f"declared before it (declared so far: {', '.join(sorted(seen)) or '-'})"
                    )
            seen.add(s.name)
        if self.recovery is not None and self.recovery.name in seen | set(RESERVED_STEPS):
            raise ValueError(f"runbook {self.key}: recovery step {self.recovery.name!r} is a step")

    # ---- lookups -----------------------------------------------------------------------
    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> Step:
        """The step called ``name``.

        Raises:
            UnknownNameError: listing the runbook's steps.
        """
        for s in self.steps:
            if s.name == name:
                return s
        raise UnknownNameError(f"{self.key} step", name, self.step_names)

    def approvable_steps(self) -> list[str]:
        """The steps an approval may be asked for: those that declare what they change."""
        return [s.name for s in self.steps if s.changes is not None]

    def side_effect_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.side_effects]

    def leaves(self) -> list[str]:
        """The steps no other step runs after (the sign-off waits for them)."""
        needed = {dep for s in self.steps for dep in s.after}
        return [s.name for s in self.steps if s.name not in needed]

    def deployment_name(self, region: str) -> str:
        """The Prefect deployment of this runbook in ``region``: ``sod-emea``."""
        return f"{self.key}-{region}"

    def default_policy(self) -> RunbookPolicy:
        return self.policy()

    # ---- the Prefect flow --------------------------------------------------------------
    @property
    def entrypoint(self) -> str:
        """Where a worker finds the flow: ``openbell.flows.start_of_day:START_OF_DAY.flow``."""
        module = sys.modules.get(self.module)
        names = [n for n, v in vars(module).items() if v is self] if module else []
        if not names:
            raise LookupError(
                f"runbook {self.key}: declared in {self.module}, but no top-level name of that "
                "module holds it; a worker could not find its flow"
            )
        return f"{self.module}:{names[0]}.flow"

    @cached_property
    def flow(self) -> Flow[Any, Any]:
        """The Prefect flow that runs this runbook (built on first use)."""
        from openbell.flows.engine import flow_for

        return flow_for(self)


#: Step names the engine itself uses in plans and records.
RESERVED_STEPS = ("calendar", "signoff", "lock")
