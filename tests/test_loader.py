"""Estate loading: the lab file validates; every bad input names file, line and key."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from openbell.errors import EstateError, UnknownNameError
from openbell.runbooks.loader import load_estate

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "estate.yaml"
    p.write_text(text)
    return p


def mutate(tmp_path: Path, old: str, new: str) -> Path:
    text = LAB.read_text()
    assert old in text, old
    return write(tmp_path, text.replace(old, new, 1))


def test_lab_estate_loads_with_three_regions() -> None:
    estate = load_estate(LAB)
    assert sorted(estate.regions) == ["amer", "apac", "emea"]
    assert estate.region("amer").primary_calendar == "XNYS"
    assert estate.fix_sessions["amer-oe"].default_appl_ver_id == "9"
    assert estate.app_tiers("emea")[0] == ["emea-refdata"]


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, "version: 1\nregions:\n  emea: {timezone: Europe/London\n  bad\n")
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert str(p) in str(exc.value)
    assert exc.value.line is not None and exc.value.line >= 3
    assert "malformed YAML" in str(exc.value)


def test_unknown_key_names_line_and_path(tmp_path: Path) -> None:
    p = mutate(
        tmp_path, "    command_timeout_s: 10\n", "    command_timeout_s: 10\n    colour: blue\n"
    )
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    err = exc.value
    assert err.key_path == "hosts.apac-app1.colour"
    assert "unknown key 'colour'" in str(err)
    assert p.read_text().splitlines()[err.line - 1].strip() == "colour: blue"


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    p = mutate(tmp_path, "    port: 42201\n", "    port: twenty-two\n")
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert exc.value.key_path == "hosts.apac-app1.port"
    assert "integer" in str(exc.value) and "twenty-two" in str(exc.value)
    assert "port: twenty-two" in p.read_text().splitlines()[exc.value.line - 1]


def test_app_on_unknown_host_lists_known_hosts(tmp_path: Path) -> None:
    p = mutate(tmp_path, "    hosts: [emea-app1]\n", "    hosts: [emea-app9]\n")
    with pytest.raises(UnknownNameError) as exc:
        load_estate(p)
    msg = str(exc.value)
    assert "unknown host 'emea-app9'" in msg
    assert "emea-app1, emea-gw1" in msg
    assert exc.value.key_path is not None and exc.value.key_path.endswith(".hosts[0]")
    assert exc.value.line is not None


def test_the_oms_block_is_checked(tmp_path: Path) -> None:
    estate = load_estate(LAB)
    amer = estate.databases["amer-oms"].oms
    assert amer is not None and amer.cancel_sweep and amer.trade_file is not None
    assert amer.trade_file.path_for(date(2026, 11, 27)) == "var/venue/inbound/trades-20261127.csv"
    assert estate.store_host("amer-oe") == "amer-gw1"
    assert estate.policy("eod").before_close == "refuse"
    p = mutate(tmp_path, "{host: amer-gw1, path:", "{host: amer-gw9, path:")
    with pytest.raises(UnknownNameError) as exc:
        load_estate(p)
    assert exc.value.key_path == "databases.amer-oms.oms.trade_file.host"
    assert "amer-gw1" in str(exc.value) and exc.value.line is not None
    p = mutate(tmp_path, "      admin_url: http://127.0.0.1:42510/oms/apac-oms\n", "")
    with pytest.raises(EstateError) as err:
        load_estate(p)
    assert "cancel_sweep needs admin_url" in str(err.value)
    p = mutate(tmp_path, "    before_close: refuse", "    before_close: maybe")
    with pytest.raises(EstateError) as err:
        load_estate(p)
    assert "runbooks.eod.before_close" in str(err.value) and "wait" in str(err.value)


def test_dependency_cycle_is_shown(tmp_path: Path) -> None:
    text = LAB.read_text().replace(
        "  emea-refdata:\n    hosts: [emea-app1]\n",
        "  emea-refdata:\n    hosts: [emea-app1]\n    depends_on: [emea-algo]\n",
        1,
    )
    with pytest.raises(EstateError) as exc:
        load_estate(write(tmp_path, text))
    msg = str(exc.value)
    assert "dependency cycle" in msg
    assert "emea-algo" in msg and "emea-refdata" in msg
    chain = msg.split("dependency cycle: ")[1].split(" -> ")
    assert chain[0] == chain[-1]


def test_unknown_calendar_and_timezone(tmp_path: Path) -> None:
    with pytest.raises(EstateError, match="unknown exchange calendar"):
        load_estate(mutate(tmp_path, "calendars: [XNYS]", "calendars: [XNYZ]"))
    with pytest.raises(EstateError, match="unknown timezone"):
        load_estate(mutate(tmp_path, "timezone: Europe/London", "timezone: Europe/Londres"))


def test_missing_required_key(tmp_path: Path) -> None:
    p = mutate(tmp_path, "    user: openbell\n", "")
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert "required key is missing" in str(exc.value)
    assert exc.value.key_path == "hosts.apac-app1.user"


def test_unknown_region_lists_valid_ones() -> None:
    estate = load_estate(LAB)
    with pytest.raises(UnknownNameError, match="valid regions: amer, apac, emea"):
        estate.region("europe")


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(EstateError, match="no such file"):
        load_estate(tmp_path / "nope.yaml")
    with pytest.raises(EstateError, match="expected a mapping"):
        load_estate(write(tmp_path, "- just\n- a list\n"))


def test_home_is_expanded(openbell_home: Path) -> None:
    estate = load_estate(LAB)
    assert estate.known_hosts == openbell_home / "lab" / "known_hosts"


@pytest.mark.parametrize(
    ("new", "words"),
    [
        (
            "{at: noon, offset_minutes: -45}",
            ["runbooks.sod.schedule.at", "'open' or 'close'", "'noon'"],
        ),
        (
            "{at: open, offset_minutes: -900}",
            ["runbooks.sod.schedule.offset_minutes", "-720", "-900"],
        ),
        ("{at: open, offset: -45}", ["runbooks.sod.schedule.offset", "unknown key 'offset'"]),
        ("{offset_minutes: -45}", ["runbooks.sod.schedule", "required key is missing"]),
    ],
    ids=["unknown-event", "offset-too-far", "misspelt-key", "no-event"],
)
def test_a_bad_schedule_names_its_line_and_key(tmp_path: Path, new: str, words: list[str]) -> None:
    p = mutate(tmp_path, "schedule: {at: open, offset_minutes: -45}", f"schedule: {new}")
    line = next(
        i for i, text in enumerate(p.read_text().splitlines(), 1) if f"schedule: {new}" in text
    )
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert str(exc.value).startswith(f"{p}:{line}: "), str(exc.value)
    for word in words:
        assert word in str(exc.value)


def test_lab_schedules_start_and_end_of_day() -> None:
    estate = load_estate(LAB)
    sod, eod = estate.policy("sod").schedule, estate.policy("eod").schedule
    assert sod is not None and (sod.at, sod.offset_minutes) == ("open", -45)
    assert eod is not None and (eod.at, eod.offset_minutes) == ("close", 20)
    # a runbook the estate names no block for gets its model's defaults, and no schedule
    assert estate.policy("release").schedule is None
    with pytest.raises(UnknownNameError, match="unknown runbook 'deploy'"):
        estate.policy("deploy")


# ---- what cannot work is refused when the file is loaded ---------------------------------------
def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path: Path) -> None:
    p = mutate(
        tmp_path,
        "known_hosts: ${OPENBELL_HOME}/lab/known_hosts\n",
        "known_hosts: ${OPENBELL_HOME}/lab/known_hosts\nknown_hosts: /tmp/elsewhere\n",
    )
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert exc.value.key_path == "known_hosts"
    assert exc.value.line == 6 and "first at line 5" in str(exc.value)


def test_an_approval_for_a_step_that_does_not_exist_lists_the_valid_ones(tmp_path: Path) -> None:
    p = mutate(tmp_path, "    before_close: refuse\n", "    approvals: {steps: [nonsense]}\n")
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert exc.value.key_path == "runbooks.eod.approvals.steps[0]"
    assert "eod has no step 'nonsense'" in str(exc.value)
    assert "steps that can wait for approval: day_orders, fix_eod, archive" in str(exc.value)
    assert p.read_text().splitlines()[exc.value.line - 1].strip().startswith("approvals:")


def test_an_approval_for_a_step_that_changes_nothing_is_refused(tmp_path: Path) -> None:
    p = mutate(tmp_path, "approvals: {steps: [apps]", "approvals: {steps: [apps, disk]")
    with pytest.raises(EstateError, match="step 'disk' of sod changes nothing") as exc:
        load_estate(p)
    assert exc.value.key_path == "runbooks.sod.approvals.steps[1]"


def test_a_policy_field_the_runbook_does_not_have_is_refused(tmp_path: Path) -> None:
    p = mutate(
        tmp_path,
        "    approvals: {steps: [apps]",
        "    before_close: wait\n    approvals: {steps: [apps]",
    )
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert exc.value.key_path == "runbooks.sod.before_close"
    assert "unknown key 'before_close'" in str(exc.value)


def test_an_unknown_runbook_lists_the_declared_ones(tmp_path: Path) -> None:
    p = mutate(tmp_path, "  eod:\n", "  eodd:\n")
    with pytest.raises(
        UnknownNameError, match="unknown runbook 'eodd'; valid runbooks: eod, release, sod"
    ):
        load_estate(p)


def test_a_sql_check_for_a_step_no_runbook_runs_is_refused(tmp_path: Path) -> None:
    text = LAB.read_text()
    assert "step: refdata" in text
    p = write(tmp_path, text.replace("step: refdata", "step: refdta", 1))
    with pytest.raises(EstateError, match="refdta") as exc:
        load_estate(p)
    assert "refdata" in str(exc.value)  # the valid ones are listed


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("    log_dir: var/log\n", '    log_dir: "-delete"\n', "log_dir"),
        ("    disk_paths: [.]\n", "    disk_paths: [., -h]\n", "disk_paths[1]"),
        ("    archive_dir: var/archive\n", "    archive_dir: --version\n", "archive_dir"),
        (
            "    order_records_dir: var/oms/records\n",
            "    order_records_dir: -r\n",
            "order_records_dir",
        ),
    ],
)
def test_a_host_path_that_would_read_as_an_option_is_refused(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    """find, tar and df take such a value as an option (``-delete`` deletes), quoted or not."""
    p = mutate(tmp_path, old, new)
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert exc.value.key_path is not None and exc.value.key_path.endswith(key), exc.value.key_path
    assert "starts with '-'" in str(exc.value) and str(p) in str(exc.value)
    assert exc.value.line is not None
    assert new.strip() in p.read_text().splitlines()[exc.value.line - 1] or key.endswith("]")


@pytest.mark.parametrize(
    "name", ["emea-app1\x1b[2J", "emea app1", "emea-[red]app1", "-app1", "é-app1"]
)
def test_names_are_printable_text_without_markup(tmp_path: Path, name: str) -> None:
    """A name reaches terminals, reports and Slack: an escape or markup in it is refused."""
    p = mutate(tmp_path, "  emea-app1:\n", f'  "{name}":\n'.replace("\x1b", "\\e"))
    with pytest.raises(EstateError) as exc:
        load_estate(p)
    assert "letters, digits and _ . @ + - only" in str(exc.value)
    assert exc.value.key_path is not None and exc.value.key_path.startswith("hosts.")
    assert exc.value.line is not None  # the name's line (the CLI shows escapes as text)
