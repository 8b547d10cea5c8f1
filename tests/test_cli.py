"""The CLI as a new user meets it: one-line errors with exit codes, plans, runs."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import paramiko
import pytest
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.lab.faults import FaultBook
from openbell.runbooks.schema import Estate
from openbell.tasks.connectors import calendar
from tests.fixtures.people import as_, key_of

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    """The error output must be one line, without a traceback."""
    text = result.stderr.strip()
    assert "Traceback" not in text and "Traceback" not in result.stdout
    assert text.startswith("error: "), text
    assert len(text.splitlines()) == 1, text
    return text


def test_validate_the_lab_estate() -> None:
    result = invoke("validate", str(LAB))
    assert result.exit_code == 0
    assert "3 regions, 6 hosts, 15 apps, 6 FIX sessions" in result.stdout


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("    port: 42211\n", "    port: [42211\n", ["malformed YAML", ":"]),
        (
            "    hosts: [emea-app1]\n",
            "    hosts: [emea-app9]\n",
            ["apps.emea-refdata.hosts[0]", "unknown host 'emea-app9'", "emea-app1, emea-gw1"],
        ),
        ("    timeout_s: 5\n", "    timeout_s: soon\n", ["timeout_s", "'soon'"]),
    ],
    ids=["broken-yaml", "unknown-host", "wrong-type"],
)
def test_validate_bad_estate_is_one_line_with_file_and_line(
    tmp_path: Path, old: str, new: str, words: list[str]
) -> None:
    bad = tmp_path / "estate.yaml"
    bad.write_text(LAB.read_text().replace(old, new, 1))
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert re.search(rf"{re.escape(str(bad))}:\d+: ", line), line
    for word in words:
        assert word in line


def test_unknown_region_lists_the_valid_ones() -> None:
    result = invoke("plan", "sod", "--region", "europe", "--estate", str(LAB), "--as", "carol")
    assert result.exit_code == 1
    assert "unknown region 'europe'; valid regions: amer, apac, emea" in one_error_line(result)


@pytest.mark.parametrize("bad", ["2026-13-01", "tomorrow", "24/11/2026"])
def test_a_date_that_is_not_a_date(bad: str) -> None:
    result = invoke(
        "plan", "sod", "--region", "emea", "--date", bad, "--estate", str(LAB), "--as", "carol"
    )
    assert result.exit_code == 2
    assert "is not a date; expected YYYY-MM-DD" in one_error_line(result)


def test_unknown_runbook() -> None:
    result = invoke("plan", "lunch", "--region", "emea", "--estate", str(LAB), "--as", "carol")
    assert result.exit_code == 2
    assert "unknown runbook 'lunch'; valid runbooks: eod, release, sod" in one_error_line(result)


def test_plan_prints_the_calendar_decision() -> None:
    result = invoke(
        "plan",
        "sod",
        "--region",
        "amer",
        "--date",
        "2026-11-26",
        "--estate",
        str(LAB),
        "--as",
        "carol",
    )
    assert result.exit_code == 0
    assert (
        "2026-11-26 is not an XNYS session (holiday: Thanksgiving): start of day skipped"
        in result.stdout
    )


def test_plan_eod_shows_the_close_the_sweep_and_the_archive() -> None:
    result = invoke(
        "plan",
        "eod",
        "--region",
        "amer",
        "--date",
        "2026-11-27",
        "--estate",
        str(LAB),
        "--json",
        "--as",
        "dave",
    )
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["runbook"] == "eod" and plan["runs"] is True
    steps = {s["name"]: s for s in plan["steps"]}
    assert steps["close"]["note"].startswith("closes 13:00 EST (XNYS half day")
    actions = [a["action"] for s in plan["steps"] for a in s["actions"]]
    assert any("POST http://127.0.0.1:42510/oms/amer-oms/cancel-sweep" in a for a in actions)
    assert any(
        "tar -czf var/archive/2026-11-27/amer-gw1-20261127.tar.gz.part" in a for a in actions
    )
    holiday = invoke(
        "plan",
        "eod",
        "--region",
        "amer",
        "--date",
        "2026-11-26",
        "--estate",
        str(LAB),
        "--as",
        "dave",
    )
    assert holiday.exit_code == 0 and "Thanksgiving" in holiday.stdout


def test_plan_json_has_the_exact_commands() -> None:
    result = invoke(
        "plan",
        "sod",
        "--region",
        "emea",
        "--date",
        "2026-11-24",
        "--estate",
        str(LAB),
        "--json",
        "--as",
        "carol",
    )
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["runs"] is True and plan["trade_date"] == "2026-11-24"
    actions = [a["action"] for s in plan["steps"] for a in s["actions"]]
    assert (
        "ssh openbell@emea-gw1 (127.0.0.1:42212) $ test -d var/fix/store -a -w var/fix/store"
        in actions
    )


def test_who_may_not_is_refused_in_one_line_and_the_refusal_is_in_the_ledger() -> None:
    from openbell.tasks.ledger import Ledger

    result = invoke("plan", "sod", "--region", "emea", "--estate", str(LAB), "--as", "mallory")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "refused: 'mallory' may not plan sod in emea" in line
    assert "--as or OPENBELL_OPERATOR" in line
    result = invoke("run", "sod", "--region", "amer", "--estate", str(LAB), *as_("erin"))
    assert result.exit_code == 1
    assert "erin may not run sod in amer: denied by" in one_error_line(result)
    with Ledger() as ledger:
        refusals = [e.payload for e in ledger.entries(kinds=["refusal"])]
    assert {"who": "erin", "action": "run", "runbook": "sod", "region": "amer"}.items() <= (
        refusals[-1].items()
    )
    assert refusals[-1]["rule"].endswith("entitlements.yaml:75")
    assert any(r["who"] == "mallory" and r["action"] == "plan" for r in refusals)


def test_audit_verify_finds_a_row_altered_with_sqlite3(tmp_path: Path) -> None:
    from openbell.settings import get_settings
    from openbell.tasks.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url) as ledger:
        for i in range(12):
            ledger.append("note", None, {"n": i})
    env = {"OPENBELL_LEDGER_URL": url, "OPENBELL_HOME": str(tmp_path)}
    get_settings.cache_clear()
    ok = runner.invoke(
        app, ["audit", "verify", *as_("carol", tmp_path), "--estate", str(LAB)], env=env
    )
    assert ok.exit_code == 0, ok.stderr
    assert "OK: 12 entries" in ok.stdout
    # What a database owner could do behind openbell's back: drop the guard, edit a row.
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{name}"')
        db.execute("""UPDATE entries SET payload = '{"n":700}' WHERE seq = 7""")
    get_settings.cache_clear()
    bad = runner.invoke(
        app, ["audit", "verify", *as_("carol", tmp_path), "--estate", str(LAB)], env=env
    )
    assert bad.exit_code == 1
    assert "BROKEN at entry 7: altered" in bad.stderr
    get_settings.cache_clear()
    denied = runner.invoke(
        app, ["audit", "verify", *as_("bob", tmp_path), "--estate", str(LAB)], env=env
    )
    assert denied.exit_code == 1
    assert "bob may not audit" in one_error_line(denied)


def test_audit_export_writes_a_bundle_that_verifies_offline(tmp_path: Path) -> None:
    from openbell.settings import get_settings
    from openbell.tasks.ledger import Ledger

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger(url) as ledger:
        for i in range(5):
            ledger.append("note", None, {"n": i})
    get_settings.cache_clear()
    bundle = tmp_path / "bundle.json"
    result = runner.invoke(
        app,
        ["audit", "export", "--out", str(bundle), *as_("carol", tmp_path), "--estate", str(LAB)],
        env={"OPENBELL_LEDGER_URL": url, "OPENBELL_HOME": str(tmp_path)},
    )
    assert result.exit_code == 0, result.stderr
    assert "OK: 5 entries" in result.stdout
    data = json.loads(bundle.read_text())
    data["entries"][2]["payload"] = {"n": 3}
    bundle.write_text(json.dumps(data))
    broken = runner.invoke(app, ["audit", "verify-bundle", str(bundle)])
    assert broken.exit_code == 1
    assert "BROKEN at entry 3" in broken.stderr


def test_lab_fault_add_rejects_an_unknown_kind() -> None:
    result = invoke("lab", "fault", "add", "meteor_strike", "emea-app1")
    assert result.exit_code == 2
    assert "unknown fault kind 'meteor_strike'; valid kinds:" in one_error_line(result)


# ---- runs against the lab ------------------------------------------------------------
@pytest.fixture
def lab(prefect_server: str, lab_estate: tuple[Path, Estate], lab_faults: FaultBook):  # type: ignore[no-untyped-def]
    return lab_estate[0], lab_estate[1], lab_faults


def _day(estate: Estate) -> str:
    return calendar.previous_session(
        estate.region("emea").primary_calendar, date.today()
    ).isoformat()


@pytest.mark.integration
def test_run_json_exit_code_follows_the_checks(lab) -> None:  # type: ignore[no-untyped-def]
    path, estate, book = lab
    ok = invoke(
        "run",
        "sod",
        "--region",
        "emea",
        "--date",
        _day(estate),
        "--estate",
        str(path),
        "--json",
        *as_("emea-oncall"),
    )
    assert ok.exit_code == 0, ok.stdout[-2000:]
    record = json.loads(ok.stdout)
    assert record["status"] in ("ok", "changed") and record["region"] == "emea"

    book.add("stale_feed", sorted(estate.feeds_in("emea"))[0], seconds=120)
    bad = invoke(
        "run",
        "sod",
        "--region",
        "emea",
        "--date",
        _day(estate),
        "--estate",
        str(path),
        "--json",
        *as_("emea-oncall"),
    )
    assert bad.exit_code == 1
    assert json.loads(bad.stdout)["status"] == "failed"


@pytest.mark.integration
def test_unreachable_host_and_wrong_host_key_are_named(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, estate, _ = lab
    host = sorted(estate.hosts_in("emea"))[0]
    # A known_hosts where every key is some other key: the run must refuse to log in.
    other = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else None
    if other is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        raw = (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
    else:
        raw = f"{other.get_name()} {other.get_base64()}"
    lines = [
        f"{ln.split()[0]} {raw}"
        for ln in Path(estate.known_hosts).read_text().splitlines()
        if ln.strip()
    ]
    wrong = tmp_path / "known_hosts"
    wrong.write_text("\n".join(lines) + "\n")
    text = path.read_text()
    text = re.sub(r"(?m)^known_hosts: .*$", f"known_hosts: {wrong}", text)
    text = text.replace(
        f"    port: {estate.host(host).port}\n", "    port: 9\n", 1
    )  # discard: closed
    estate_file = tmp_path / "estate.yaml"
    estate_file.write_text(text)
    shutil.copy(path.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")

    result = invoke(
        "run",
        "sod",
        "--region",
        "emea",
        "--date",
        _day(estate),
        "--estate",
        str(estate_file),
        *as_("emea-oncall"),
    )
    assert result.exit_code == 1
    out = " ".join(result.stdout.split())
    assert host in out and "refused" in out.lower()
    assert "host key" in out.lower()
    assert "Traceback" not in result.stdout + result.stderr


# ---- openbell report ---------------------------------------------------------------------


@pytest.fixture
def report_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OPENBELL_LEDGER_URL pointing at a ledger holding the sample run of emea 2026-11-24."""
    from openbell.tasks.ledger import Ledger
    from tests.fixtures.report_sample import record_sample_run

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OPENBELL_LEDGER_URL", url)
    with Ledger(url) as ledger:
        record_sample_run(ledger, tmp_path)
    return tmp_path / "reports"


def test_report_writes_a_run_report_from_its_id_or_prefix(report_ledger: Path) -> None:
    full = invoke(
        "report", "4f1c2d3e-5a6b-4c7d-8e9f-0123456789ab", "--out", str(report_ledger), *as_("bob")
    )
    by_prefix = invoke("report", "4f1c2d3e", "--out", str(report_ledger), "--json", *as_("bob"))
    denied = invoke("report", "4f1c2d3e", "--out", str(report_ledger), *as_("alice"))
    assert denied.exit_code == 1
    assert "alice may not report sod in emea" in one_error_line(denied)

    assert full.exit_code == 0, full.stderr
    html = report_ledger / "sod-emea-2026-11-24-4f1c2d3e.html"
    assert f"report (html): {html}" in full.stdout
    assert "Start of day EMEA 2026-11-24" in html.read_text()
    assert by_prefix.exit_code == 0 and json.loads(by_prefix.stdout)["html"] == str(html)


def test_report_writes_the_daily_rollup(report_ledger: Path) -> None:
    result = invoke(
        "report",
        "--region",
        "EMEA",
        "--date",
        "2026-11-24",
        "--out",
        str(report_ledger),
        *as_("carol"),
    )

    assert result.exit_code == 0, result.stderr
    md = report_ledger / "rollup-emea-2026-11-24.md"
    assert f"report (md): {md}" in result.stdout
    assert "**1** runs" in md.read_text()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nope"], ["no run 'nope' in the ledger"]),
        ([], ["give a run id, or --region and --date"]),
        (["4f1c2d3e", "--region", "emea"], ["not both"]),
        (["--region", "emea"], ["--region needs --date"]),
        (["--region", "emae", "--date", "2026-11-24"], ["no run in region 'emae'", "emea"]),
        (["--region", "emea", "--date", "24/11/2026"], ["is not a date"]),
    ],
    ids=["unknown-run", "nothing", "both", "no-date", "unknown-region", "bad-date"],
)
def test_report_errors_are_one_line(report_ledger: Path, args: list[str], words: list[str]) -> None:
    result = invoke("report", *args, *as_("carol"))

    assert result.exit_code == 2
    text = one_error_line(result)
    for word in words:
        assert word in text


def test_calendar_shows_holidays_half_days_and_run_times() -> None:
    result = invoke(
        "calendar", "--region", "amer", "--from", "2026-11-25", "-n", "5", "--estate", str(LAB)
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("amer: XNYS, America/New_York; sod at open - 45 min, eod at close")
    assert "2026-11-26 Thu  holiday: Thanksgiving" in lines
    assert (
        "2026-11-27 Fri  half day   09:30-13:00  sod 08:45 EST = 13:45 UTC  "
        "eod 13:20 EST = 18:20 UTC  Black Friday"
    ) in lines
    assert "(2 weekend days not listed)" in lines


def test_calendar_json_puts_tokyo_start_of_day_on_the_previous_utc_day() -> None:
    result = invoke(
        "calendar", "-r", "apac", "--from", "2026-11-24", "-n", "1", "--json", "--estate", str(LAB)
    )
    assert result.exit_code == 0, result.output
    (day,) = json.loads(result.stdout)["apac"]
    sod = next(r for r in day["runs"] if r["runbook"] == "sod")
    assert (sod["name"], sod["run_local"], sod["run_utc"]) == (
        "sod-apac-2026-11-24",
        "2026-11-24T08:15:00+09:00",
        "2026-11-23T23:15:00+00:00",
    )


def test_calendar_unknown_region_is_one_line() -> None:
    result = invoke("calendar", "--region", "europe", "--estate", str(LAB))
    assert result.exit_code == 1
    assert "unknown region 'europe'; valid regions: amer, apac, emea" in one_error_line(result)


def test_catchup_of_an_unknown_runbook_lists_the_registered_ones() -> None:
    result = invoke("catchup", "eodx", "--region", "emea", "--estate", str(LAB))
    assert result.exit_code == 2
    assert "unknown runbook 'eodx'; valid runbooks: eod, release, sod" in one_error_line(result)


def test_validate_refuses_an_approval_for_a_step_end_of_day_does_not_have(tmp_path: Path) -> None:
    text = LAB.read_text().replace(
        "    before_close: refuse\n", "    approvals: {steps: [nonsense]}\n"
    )
    bad = tmp_path / "lab.yaml"
    bad.write_text(text)
    shutil.copy(LAB.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    assert "runbooks.eod.approvals.steps[0]: eod has no step 'nonsense'" in result.output
    assert "steps that can wait for approval: day_orders, fix_eod, archive" in result.output


def test_several_apps_of_a_region_are_planned_in_dependency_order(tmp_path: Path) -> None:
    at = "2026-12-05T03:00:00+00:00"  # a Saturday: apac's window is open
    base = ("plan", "release", "--region", "apac", "--estate", str(LAB), "--as", "carol")
    result = invoke(
        *base, "--app", "apac-oms", "--app", "apac-refdata", "--version", "5.0.4",
        "--version", "7.2.1", "--at", at, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plans = json.loads(result.stdout)
    # apac-oms depends on apac-refdata: refdata goes first, each with its own version
    assert [(p["app"], p["version"]) for p in plans] == [
        ("apac-refdata", "7.2.1"),
        ("apac-oms", "5.0.4"),
    ]
    assert all(p["plan"]["runbook"] == "release" for p in plans)
    counts = invoke(*base, "--app", "apac-oms", "--app", "apac-refdata", "--version", "5.0.4")
    assert "2 --app but 1 --version: give one --version per --app" in one_error_line(counts)
    twice = invoke(*base, "--app", "apac-oms", "--app", "apac-oms")
    assert "apac-oms: named more than once in one release" in one_error_line(twice)
    unknown = invoke(*base, "--app", "apac-oms", "--app", "emea-oms")
    assert "unknown releasable app in apac 'emea-oms'; valid" in one_error_line(unknown)


def test_input_is_shown_as_text_not_markup_and_dates_stay_in_range() -> None:
    base = ("plan", "sod", "--estate", str(LAB), "--as", "carol")
    markup = invoke(*base, "--region", "[/x]eu\x1b[2J")
    line = one_error_line(markup)  # no traceback: Rich would raise on a closing tag
    assert "'[/x]eu" in line and "\x1b" not in line and "\\x1b" in line
    for day in ("1989-12-31", "2101-01-01"):
        old = invoke(*base, "--region", "emea", "--date", day)
        assert old.exit_code == 2
        assert f"--date {day}: outside 1990-01-01 to 2100-12-31" in one_error_line(old)


def test_validate_checks_the_entitlements_a_run_would_read(tmp_path: Path) -> None:
    estate = tmp_path / "lab.yaml"
    shutil.copy(LAB, estate)  # without its entitlements.yaml beside it
    missing = invoke("validate", str(estate))
    assert missing.exit_code == 1
    assert f"{tmp_path / 'entitlements.yaml'}: no such file" in one_error_line(missing)
    shutil.copy(LAB.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    ok = invoke("validate", str(estate))
    assert ok.exit_code == 0 and "rules" in ok.stdout


def test_validate_warns_when_the_allowed_signers_file_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every --key would be refused without it: validate says so (exit 0: an OS account
    that is a person of the estate still proves who it is)."""
    from openbell.settings import get_settings

    monkeypatch.setenv("OPENBELL_HOME", str(tmp_path / "fresh-home"))
    get_settings.cache_clear()
    try:
        result = invoke("validate", str(LAB))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip()
    assert warning.startswith("warning: identity.allowed_signers: "), warning
    assert str(tmp_path / "fresh-home" / "lab" / "allowed_signers") in warning
    assert "--key is refused until it exists" in warning
    key_of("bob")  # writes the session home's allowed_signers
    assert "warning" not in invoke("validate", str(LAB)).stderr


def test_an_escape_in_an_estate_name_never_reaches_the_terminal(tmp_path: Path) -> None:
    bad = tmp_path / "lab.yaml"
    bad.write_text(LAB.read_text().replace("  emea-app1:\n", '  "emea-app1\\e[2J":\n', 1))
    result = invoke("validate", str(bad))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "\x1b" not in line and "letters, digits" in line


@pytest.mark.parametrize("which", ["estate", "entitlements"])
def test_a_run_on_rules_others_could_rewrite_is_refused(tmp_path: Path, which: str) -> None:
    """The issue's "bring your own estate", at its simplest: a group-writable file."""
    from openbell.tasks.ledger import Ledger

    estate = tmp_path / "lab.yaml"
    shutil.copy(LAB, estate)
    shutil.copy(LAB.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")
    shared = estate if which == "estate" else tmp_path / "entitlements.yaml"
    shared.chmod(0o664)
    result = invoke("run", "sod", "--region", "emea", "--estate", str(estate), *as_("carol"))
    assert result.exit_code == 1
    line = one_error_line(result)
    assert f"{which} {shared} is writable by its group or by everyone" in line, line
    with Ledger() as ledger:
        refusal = ledger.entries(kinds=["refusal"])[-1].payload
    assert (refusal["who"], refusal["action"], refusal["region"]) == ("carol", "run", "emea")
    plan = invoke("plan", "sod", "--region", "emea", "--estate", str(estate), "--as", "carol")
    assert plan.exit_code == 0, plan.stderr  # a plan reads any file
