"""Entitlements: the lab's rules as a full matrix, identities, and errors with file and line."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from openbell import catalog
from openbell.errors import EstateError, NotEntitledError, UnknownNameError
from openbell.runbooks.entitlements import (
    ACTIONS,
    LAB_ENTITLEMENTS,
    Entitlements,
    load_entitlements,
    resolve_person,
)
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"

MINIMAL = """\
version: 1
groups:
  night-shift: {members: [alice, bob]}
rules:
  - allow: [plan, run]
    who: group:night-shift
    runbooks: [sod]
    regions: [emea]
"""


@pytest.fixture(scope="module")
def estate() -> Estate:
    return load_estate(LAB)


@pytest.fixture(scope="module")
def ents(estate: Estate) -> Entitlements:
    return load_entitlements(LAB_ENTITLEMENTS, estate)


def write(tmp_path: Path, text: str, name: str = "entitlements.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def mutate(tmp_path: Path, old: str, new: str) -> Path:
    text = LAB_ENTITLEMENTS.read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def estate_with_identities(tmp_path: Path, bob: str = "[bob.okafor, bokafor-adm]") -> Estate:
    text = LAB.read_text()
    old = "bob: {name: Bob Okafor, slack_id: UBOB}"
    assert old in text
    p = tmp_path / "estate.yaml"
    p.write_text(text.replace(old, f"bob: {{name: Bob Okafor, slack_id: UBOB, identities: {bob}}}"))
    return load_estate(p)


def line_at(path: Path, line: int | None) -> str:
    assert line is not None
    return path.read_text().splitlines()[line - 1].strip()


# ---- the matrix ---------------------------------------------------------------------------


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def expected_rule(
    raw: dict[str, Any], groups: dict[str, list[str]], cell: tuple[str, str, str, str]
) -> tuple[bool, int | None, bool]:
    """The documented semantics, plainly: (allowed, deciding rule index, an allow matched).

    A rule matches when the person is a subject (``*``, by name, or as a member of
    ``group:NAME``) and the action, runbook and region are listed or ``*``. Any matching
    deny decides (the first); else any matching allow (the first); else default deny.
    """
    person, action, runbook, region = cell

    def subject(who: str) -> bool:
        if who == "*" or who == person:
            return True
        return who.startswith("group:") and person in groups[who[len("group:") :]]

    matching = [
        (i, "deny" if "deny" in rule else "allow")
        for i, rule in enumerate(raw["rules"])
        if any(subject(w) for w in as_list(rule["who"]))
        and action in as_list(rule.get("allow") or rule.get("deny"))
        and {"*", runbook} & set(as_list(rule["runbooks"]))
        and {"*", region} & set(as_list(rule["regions"]))
    ]
    allows = [i for i, effect in matching if effect == "allow"]
    denies = [i for i, effect in matching if effect == "deny"]
    if denies:
        return False, denies[0], bool(allows)
    return (True, allows[0], True) if allows else (False, None, False)


def test_matrix_agrees_with_the_documented_semantics(ents: Entitlements) -> None:
    estate_raw = yaml.safe_load(LAB.read_text())
    raw = yaml.safe_load(LAB_ENTITLEMENTS.read_text())
    groups = {name: g["members"] for name, g in estate_raw["groups"].items()}
    groups.update({name: g["members"] for name, g in raw["groups"].items()})
    rule_lines = [
        n
        for n, text in enumerate(LAB_ENTITLEMENTS.read_text().splitlines(), start=1)
        if text.lstrip().startswith(("- allow:", "- deny:"))
    ]
    assert len(rule_lines) == len(raw["rules"])
    cells = list(
        itertools.product(estate_raw["people"], ACTIONS, catalog.names(), estate_raw["regions"])
    )
    assert len(cells) == 6 * len(ACTIONS) * len(catalog.names()) * 3
    allowed = deny_won = 0
    for cell in cells:
        want, index, allow_matched = expected_rule(raw, groups, cell)
        got = ents.decide(*cell)
        assert got.allowed is want, (cell, got.reason)
        if index is None:
            assert got.rule is None and "no rule allows it (default deny)" in got.reason, cell
        else:
            assert got.rule == f"{LAB_ENTITLEMENTS}:{rule_lines[index]}", (cell, got.reason)
            assert got.rule in got.reason
        allowed += want
        deny_won += allow_matched and not want
    # The lab's rules exercise every outcome: allows, default denies, and a deny that wins
    # over an allow (erin may not run sod or eod in amer, though amer on-call may).
    assert 0 < allowed < len(cells)
    assert deny_won == 2


@pytest.mark.parametrize(
    ("who", "action", "runbook", "region", "allowed"),
    [
        ("alice", "plan", "eod", "amer", True),  # everybody plans everywhere
        ("alice", "run", "sod", "apac", True),  # apac on-call
        ("alice", "run", "sod", "emea", False),  # not emea on-call
        ("frank", "run", "eod", "emea", True),  # on call in two regions
        ("dave", "run", "eod", "emea", True),  # desk lead
        ("erin", "run", "sod", "amer", False),  # suspended: the deny wins over amer-oncall
        ("erin", "plan", "sod", "amer", True),  # the suspension is from running only
        ("erin", "approve", "eod", "amer", True),  # ... and she still approves
        ("dave", "approve", "sod", "emea", False),  # approvers approve in their region only
        ("bob", "approve", "eod", "emea", True),
        ("bob", "cancel", "sod", "emea", False),  # only leads cancel
        ("carol", "cancel", "eod", "apac", True),
        ("alice", "audit", "sod", "apac", False),
        ("carol", "audit", "sod", "amer", True),
        ("frank", "report", "sod", "apac", True),
        ("carol", "deploy", "sod", "emea", True),  # desk leads deploy (pin the estate)
        ("bob", "deploy", "sod", "emea", False),
        ("carol", "run-unpinned", "sod", "emea", False),  # no one in the lab
    ],
)
def test_hand_picked_cells(
    ents: Entitlements, who: str, action: str, runbook: str, region: str, allowed: bool
) -> None:
    assert ents.decide(who, action, runbook, region).allowed is allowed


def test_deny_names_its_rule_and_why(ents: Entitlements) -> None:
    d = ents.decide("erin", "run", "sod", "amer")
    assert not d.allowed and d.person == "erin"
    assert d.rule is not None
    file, line = d.rule.rsplit(":", 1)
    assert file == str(LAB_ENTITLEMENTS)
    assert line_at(LAB_ENTITLEMENTS, int(line)) == "- deny: [run]"
    assert d.reason == (
        f"erin may not run sod in amer: denied by {d.rule}: "
        "erin is suspended from running in amer pending review (INC-4711)"
    )


def test_allow_and_default_deny_reasons(ents: Entitlements) -> None:
    d = ents.decide("bob", "run", "sod", "emea")
    assert d.allowed and d.rule is not None
    assert d.reason.startswith(f"bob may run sod in emea: allowed by {d.rule}: emea on-call")
    d = ents.decide("bob", "cancel", "sod", "emea")
    assert not d.allowed and d.rule is None
    assert d.reason == "bob may not cancel sod in emea: no rule allows it (default deny)"


def test_region_is_case_insensitive(ents: Entitlements) -> None:
    assert ents.decide("bob", "run", "sod", "EMEA").allowed


def test_require_raises_with_the_reason(ents: Entitlements) -> None:
    assert ents.require("dave", "run", "sod", "amer").allowed
    with pytest.raises(NotEntitledError) as exc:
        ents.require("erin", "run", "eod", "amer")
    err = exc.value
    assert (err.who, err.action, err.runbook, err.region) == ("erin", "run", "eod", "amer")
    assert err.rule is not None and err.rule in str(err)
    assert "suspended" in str(err)


def test_unknown_question_lists_valid_names(ents: Entitlements) -> None:
    with pytest.raises(UnknownNameError, match="valid actions: approve, audit, cancel, deploy"):
        ents.decide("bob", "launch", "sod", "emea")
    with pytest.raises(UnknownNameError, match="valid runbooks: eod, release, sod"):
        ents.decide("bob", "run", "*", "emea")
    with pytest.raises(UnknownNameError, match="valid regions: amer, apac, emea"):
        ents.decide("bob", "run", "sod", "europe")


def test_people_allowed(ents: Entitlements) -> None:
    assert ents.people_allowed("approve", "sod", "emea") == ["bob", "carol"]
    assert ents.people_allowed("run", "sod", "amer") == ["carol", "dave"]  # not erin
    assert ents.people_allowed("cancel", "eod", "apac") == ["carol", "dave"]


# ---- identities ---------------------------------------------------------------------------


def test_any_identity_resolves_to_its_person(tmp_path: Path) -> None:
    estate = estate_with_identities(tmp_path)
    ents = load_entitlements(LAB_ENTITLEMENTS, estate)
    assert resolve_person(estate, "bokafor-adm") == "bob"
    assert ents.person_of("bob.okafor") == "bob"
    d = ents.decide("bob.okafor", "run", "sod", "emea")
    assert d.allowed and d.person == "bob"
    assert d.reason.startswith("bob (as 'bob.okafor') may run sod in emea")
    assert not ents.decide("bokafor-adm", "run", "sod", "apac").allowed


def test_unknown_identity_is_denied_even_where_everybody_may(ents: Entitlements) -> None:
    d = ents.decide("mallory", "plan", "sod", "emea")
    assert not d.allowed and d.person is None and d.rule is None
    assert d.reason == (
        "'mallory' may not plan sod in emea: unknown identity, no rule allows it (default deny)"
    )


def test_identity_claimed_twice_is_an_estate_error(tmp_path: Path) -> None:
    estate = estate_with_identities(tmp_path, bob="[bob.okafor, carol]")
    with pytest.raises(EstateError) as exc:
        load_entitlements(LAB_ENTITLEMENTS, estate)
    err = exc.value
    assert err.file == estate.source
    assert err.key_path == "people.bob.identities[1]"
    assert "identity 'carol' already belongs to 'carol'" in str(err)
    assert err.line is not None and "bob:" in line_at(Path(err.file or ""), err.line)


# ---- YAML errors ----------------------------------------------------------------------------


def test_minimal_file_with_its_own_group(tmp_path: Path, estate: Estate) -> None:
    ents = load_entitlements(write(tmp_path, MINIMAL), estate)
    assert ents.members("night-shift") == {"alice", "bob"}
    assert ents.members("emea-approvers") == {"bob", "carol"}
    assert ents.decide("alice", "run", "sod", "emea").allowed
    assert not ents.decide("alice", "run", "eod", "emea").allowed
    with pytest.raises(UnknownNameError, match=r"valid groups: .*night-shift"):
        ents.members("day-shift")


@pytest.mark.parametrize(
    ("old", "new", "key_path", "message", "line_text"),
    [
        (
            "    who: erin\n",
            "    who: eric\n",
            "rules[8].who[0]",
            "unknown person 'eric'; valid persons: alice, bob, carol, dave, erin, frank",
            "who: eric",
        ),
        (
            "    who: group:emea-oncall\n",
            "    who: [group:emea-on-call]\n",
            "rules[2].who[0]",
            "unknown group 'emea-on-call'; valid groups: amer-approvers, amer-oncall,",
            "who: [group:emea-on-call]",
        ),
        (
            "    who: group:emea-oncall\n",
            "    who: emea-oncall\n",
            "rules[2].who[0]",
            "'emea-oncall' is a group; write 'group:emea-oncall'",
            "who: emea-oncall",
        ),
        (
            "  - deny: [run]\n",
            "  - deny: [run, launch]\n",
            "rules[8].deny[1]",
            "unknown action 'launch'; valid actions: approve, audit, cancel, deploy, plan, "
            "report, run, run-unpinned",
            "- deny: [run, launch]",
        ),
        (
            "    runbooks: [sod, eod]\n    regions: [apac]\n",
            "    runbooks: [sod, eod, sad]\n    regions: [apac]\n",
            "rules[1].runbooks[2]",
            "unknown runbook 'sad'; valid runbooks: *, eod, release, sod",
            "runbooks: [sod, eod, sad]",
        ),
        (
            "    regions: [amer]\n    why: erin",
            "    regions: [americas]\n    why: erin",
            "rules[8].regions[0]",
            "unknown region 'americas'; valid regions: *, amer, apac, emea",
            "regions: [americas]",
        ),
        (
            "    regions: [amer]\n    why: erin",
            '    regions: [amer, "*"]\n    why: erin',
            "rules[8].regions[1]",
            "'*' already means every region; give '*' or names, not both",
            'regions: [amer, "*"]',
        ),
        (
            "  desk-leads: {members: [carol, dave]}\n",
            "  desk-leads: {members: [carol, dan]}\n",
            "groups.desk-leads.members[1]",
            "unknown person 'dan'",
            "desk-leads: {members: [carol, dan]}",
        ),
        (
            "  desk-leads: {members: [carol, dave]}\n",
            "  emea-approvers: {members: [carol, dave]}\n",
            "groups.emea-approvers",
            "group 'emea-approvers' is already defined in the estate",
            "emea-approvers: {members: [carol, dave]}",
        ),
        (
            "  - deny: [run]\n    who: erin\n",
            "  - deny: [run]\n    allow: [plan]\n    who: erin\n",
            "rules[8]",
            "give exactly one of allow or deny",
            "- deny: [run]",
        ),
        (
            "    who: erin\n",
            "    who: erin\n    region: [amer]\n",
            "rules[8].region",
            "unknown key 'region' (expected one of: allow, deny, who, runbooks, regions, why)",
            "region: [amer]",
        ),
        (
            "    who: erin\n",
            "",
            "rules[8].who",
            "required key is missing",
            "- deny: [run]",
        ),
        (
            "    who: erin\n",
            "    who: []\n",
            "rules[8].who",
            "needs at least one entry (names, or '*' for all)",
            "who: []",
        ),
        (
            "  - deny: [run]\n",
            "  - deny: run\n",
            None,
            None,
            None,
        ),
    ],
)
def test_bad_rules_name_file_line_and_key(
    tmp_path: Path,
    estate: Estate,
    old: str,
    new: str,
    key_path: str | None,
    message: str | None,
    line_text: str | None,
) -> None:
    p = mutate(tmp_path, old, new)
    if key_path is None:  # a single name is as good as a list of one
        assert not load_entitlements(p, estate).decide("erin", "run", "sod", "amer").allowed
        return
    with pytest.raises(EstateError) as exc:
        load_entitlements(p, estate)
    err = exc.value
    assert err.file == str(p)
    assert err.key_path == key_path
    assert message is not None and message in str(err)
    assert line_text is not None and line_at(p, err.line) == line_text
    assert str(err).startswith(f"{p}:{err.line}: {key_path}: ")


def test_identity_named_in_a_rule_says_which_person(tmp_path: Path) -> None:
    estate = estate_with_identities(tmp_path)
    p = mutate(tmp_path, "    who: erin\n", "    who: [erin, bob.okafor]\n")
    with pytest.raises(EstateError, match=r"'bob\.okafor' is an identity of 'bob'; name"):
        load_entitlements(p, estate)


def test_unquoted_star_gets_a_hint(tmp_path: Path, estate: Estate) -> None:
    p = mutate(tmp_path, '    who: "*"\n', "    who: *\n")
    with pytest.raises(EstateError) as exc:
        load_entitlements(p, estate)
    assert "malformed YAML" in str(exc.value) and "write '*' in quotes" in str(exc.value)
    assert line_at(p, exc.value.line) == "who: *"


def test_duplicate_key_is_refused(tmp_path: Path, estate: Estate) -> None:
    p = mutate(
        tmp_path,
        "  desk-leads: {members: [carol, dave]}\n",
        "  desk-leads: {members: [carol, dave]}\n  apac-oncall: {members: [erin]}\n",
    )
    with pytest.raises(EstateError) as exc:
        load_entitlements(p, estate)
    err = exc.value
    assert err.key_path == "groups.apac-oncall"
    assert "duplicate key 'apac-oncall' (first at line 25)" in str(err)
    assert line_at(p, err.line) == "apac-oncall: {members: [erin]}"


def test_missing_file_and_non_mapping(tmp_path: Path, estate: Estate) -> None:
    with pytest.raises(EstateError, match="no such file"):
        load_entitlements(tmp_path / "nope.yaml", estate)
    with pytest.raises(EstateError, match="expected a mapping at the top"):
        load_entitlements(write(tmp_path, "- allow: [plan]\n"), estate)


def test_no_rules_denies_everything(tmp_path: Path, estate: Estate) -> None:
    ents = load_entitlements(write(tmp_path, "version: 1\n"), estate)
    assert not any(
        ents.decide(*cell).allowed
        for cell in itertools.product(estate.people, ACTIONS, catalog.names(), estate.regions)
    )
