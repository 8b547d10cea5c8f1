"""The plan: steps, targets, exact commands and the calendar's decision, touching nothing."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from openbell import catalog
from openbell.errors import UnknownNameError
from openbell.flows.plan import build_plan, redo_steps
from openbell.plan import Plan
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"


@pytest.fixture(scope="module")
def estate():  # type: ignore[no-untyped-def]
    return load_estate(LAB)


def build_sod_plan(estate: Estate, region: str, day: date) -> Plan:
    return build_plan(catalog.get("sod"), estate, region, day)


def build_eod_plan(estate: Estate, region: str, day: date) -> Plan:
    return build_plan(catalog.get("eod"), estate, region, day)


def test_holiday_skips_with_reason(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_sod_plan(estate, "amer", date(2026, 11, 26))
    assert not plan.runs
    assert plan.skip_reason == "2026-11-26 is not an XNYS session (holiday: Thanksgiving)"
    assert [s.name for s in plan.steps] == ["calendar"]


def test_weekend_skips(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_sod_plan(estate, "emea", date(2026, 11, 28))
    assert not plan.runs and "weekend" in (plan.skip_reason or "")


def test_half_day_is_noted(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_sod_plan(estate, "amer", date(2026, 11, 27))
    assert plan.runs
    assert plan.calendar["half_day"] is True
    assert plan.calendar["close_local"].startswith("2026-11-27T13:00:00-05:00")
    assert "half day" in plan.steps[0].note


def test_session_plan_has_every_step_with_exact_commands(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_sod_plan(estate, "emea", date(2026, 11, 24))
    names = [s.name for s in plan.steps]
    assert names[:6] == ["calendar", "disk", "clock", "fix_store", "logs", "apps"]
    for step in (
        "fix",
        "feeds",
        "refdata",
        "positions",
        "limits",
        "controls",
        "batch",
        "alert_path",
        "quarantine",
    ):
        assert step in names
    assert names[-1] == "signoff"
    disk = next(s for s in plan.steps if s.name == "disk")
    assert disk.actions[0].action == "ssh openbell@emea-app1 (127.0.0.1:42211) $ df -P -k ."
    apps = next(s for s in plan.steps if s.name == "apps")
    assert apps.after == ["calendar"]
    assert apps.note == (
        "in dependency order: tier 0: emea-refdata; tier 1: emea-risk; tier 2: emea-oms; "
        "tier 3: emea-fixgw; tier 4: emea-algo"
    )
    starts = [a.action for a in apps.actions if a.action.startswith("if down:")]
    assert [a.rsplit(" ", 1)[-1] for a in starts] == [
        "emea-refdata",
        "emea-risk",
        "emea-oms",
        "emea-fixgw",
        "emea-algo",
    ]
    fix = next(s for s in plan.steps if s.name == "fix")
    assert any("FIX.4.4" in a.action and "108=30" in a.action for a in fix.actions)
    refdata = next(s for s in plan.steps if s.name == "refdata")
    assert any("SELECT COUNT(*) FROM instruments" in a.action for a in refdata.actions)


def test_only_the_regions_targets(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_sod_plan(estate, "apac", date(2026, 11, 24))
    targets = [a.target for s in plan.steps for a in s.actions]
    assert targets and not any("emea" in t or "amer" in t for t in targets)


def test_unknown_region(estate) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownNameError, match="valid regions: amer, apac, emea"):
        build_sod_plan(estate, "mars", date(2026, 11, 24))


def test_eod_plan_on_a_half_day_lists_every_step_and_target(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_eod_plan(estate, "amer", date(2026, 11, 27))
    assert plan.runbook == "eod" and plan.runs
    assert [s.name for s in plan.steps] == [
        "calendar",
        "close",
        "day_orders",
        "fills_booked",
        "recon",
        "positions_rolled",
        "fix_eod",
        "archive",
        "disk_after_archive",
        "signoff",
    ]
    steps = {s.name: s for s in plan.steps}
    assert steps["close"].note == (
        "closes 13:00 EST (XNYS half day: Black Friday); before the close: refuse"
    )
    fix = [a.action for a in steps["fix_eod"].actions]
    # amer-oe resets daily; amer-dc weekly on Sunday, which falls before Monday's session.
    assert sum("reset due" in a for a in fix) == 2
    assert any("Logout 58='End of day 2026-11-27'" in a for a in fix)
    assert {a.target for a in steps["archive"].actions} == {"amer-app1", "amer-gw1"}
    assert plan.command_count() > 10


def test_eod_plan_keeps_the_store_when_no_reset_is_due(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_eod_plan(estate, "amer", date(2026, 11, 24))  # a Tuesday
    fix = {s.name: s for s in plan.steps}["fix_eod"]
    dc = [a.action for a in fix.actions if a.target == "amer-dc"]
    assert any("no reset tonight" in a and "mv -n" in a for a in dc)
    assert any("no reset tonight" in a and "seqnums-20261124" in a for a in dc)


def test_eod_plan_on_a_holiday_is_only_the_calendar(estate) -> None:  # type: ignore[no-untyped-def]
    plan = build_eod_plan(estate, "emea", date(2026, 12, 25))
    assert not plan.runs and [s.name for s in plan.steps] == ["calendar"]
    assert "Christmas" in (plan.skip_reason or "")


def test_from_step_redoes_that_step_and_the_ones_after_it() -> None:
    assert sorted(redo_steps(catalog.get("eod"), "archive")) == ["archive", "disk_after_archive"]
    assert redo_steps(catalog.get("sod"), None) == frozenset()
    with pytest.raises(UnknownNameError, match="unknown sod step 'apps_tier0'; valid sod steps"):
        redo_steps(catalog.get("sod"), "apps_tier0")


# ---- the same plans as before runbooks were declarations -------------------------------------
BEFORE = Path(__file__).resolve().parent / "fixtures" / "plans_before_declarations.json"
#: steps added to a runbook after BEFORE was recorded: start of day's release quarantine.
ADDED_SINCE = {"sod": ("quarantine",)}


def _fold_app_tiers(plan: dict[str, Any]) -> dict[str, Any]:
    """The old plan with its ``apps_tier<N>`` steps as the one ``apps`` step (tier order)."""
    steps: list[dict[str, Any]] = []
    apps: dict[str, Any] | None = None
    for s in plan["steps"]:
        if s["name"].startswith("apps_tier"):
            if apps is None:
                apps = {**s, "name": "apps", "title": "Apps running", "after": ["calendar"]}
                apps["actions"] = []
                steps.append(apps)
            apps["actions"] += s["actions"]
        else:
            steps.append(s)
    for s in steps:
        tiers = ["apps" if a.startswith("apps_tier") else a for a in s["after"]]
        s["after"] = list(dict.fromkeys(tiers))
    return {**plan, "steps": steps}


@pytest.mark.parametrize("key", sorted(json.loads(BEFORE.read_text())))
def test_plans_are_the_same_as_before_the_declarations(
    key: str, estate: Estate, openbell_home: Path
) -> None:
    """Plans recorded from the hand-written planners (commit 106757b), for the lab estate.

    One thing differs on purpose: the apps step has one name now, so the old steps
    ``apps_tier0``... are folded into it, in order, and it notes the tiers.
    """
    runbook, region, day = key.split("/")
    before = _fold_app_tiers(json.loads(BEFORE.read_text())[key])
    plan = build_plan(catalog.get(runbook), estate, region, date.fromisoformat(day))
    now = json.loads(plan.model_dump_json().replace(str(openbell_home), "$OPENBELL_HOME"))
    # Steps declared since those plans were recorded (new checks, not changed ones).
    added = ADDED_SINCE.get(runbook, ())
    now["steps"] = [s for s in now["steps"] if s["name"] not in added]
    for s in now["steps"]:
        s["after"] = [a for a in s["after"] if a not in added]  # the sign-off waits for it
    for step in now["steps"]:
        if step["name"] == "apps":
            assert step["note"].startswith("in dependency order: tier 0: ")
            step["note"] = ""
    assert now == before
