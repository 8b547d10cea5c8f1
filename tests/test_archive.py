"""The end-of-day archive on hosts with real tools: run twice, a stopped run, strays."""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
from datetime import date
from pathlib import Path

import pytest

from openbell.outcome import Outcome, Status
from openbell.runbooks.loader import load_estate
from openbell.tasks.archive import archive_plan, find_argv, parse_sha256sum
from openbell.tasks.connectors.ssh import CommandResult, FakeSshRunner
from openbell.tasks.context import RunContext
from tests.fixtures.localhosts import LocalHosts
from tests.fixtures.steps import run_declared

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
DAY = date(2026, 11, 27)
FILES = {
    "amer-app1": [
        "var/log/amer-oms.log-20261127",
        "var/log/amer-risk.log-20261127.1",
        "var/oms/records/orders-20261127.jsonl",
    ],
    "amer-gw1": ["var/fix/store/amer-oe/messages.log-20261127", "var/log/amer-fixgw.log-20261127"],
}
OTHER_DAY = "var/log/amer-oms.log-20261126"


def lay_out(root: Path) -> LocalHosts:
    hosts = LocalHosts(root)
    for host, files in FILES.items():
        for rel in [*files, OTHER_DAY, "var/log/amer-oms.log"]:
            path = hosts.home(host) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{host} {rel}\n")
    return hosts


def ctx(ssh: object) -> RunContext:
    return RunContext(
        estate=load_estate(LAB),
        region="amer",
        trade_date=DAY,
        prev_trade_date=None,
        ssh=ssh,
        http=None,
        notifier=None,
    )


def archive(ssh: object) -> dict[str, Outcome]:
    async def go() -> dict[str, Outcome]:
        c = ctx(ssh)
        try:
            result = await run_declared(c, "eod", "archive")
        finally:
            await c.close()
        return {o.target: o for o in result.outcomes}

    return asyncio.run(go())


def test_plan_and_commands() -> None:
    estate = load_estate(LAB)
    plan = archive_plan("amer-gw1", estate.host("amer-gw1"), DAY)
    assert plan is not None
    assert plan.archive == "var/archive/2026-11-27/amer-gw1-20261127.tar.gz"
    assert plan.sources == ["var/log", "var/fix/store"]
    assert find_argv(plan)[:3] == ["find", "var/log", "var/fix/store"]
    assert parse_sha256sum("\\" + "a" * 64 + "  odd\\nname\n") == {"odd\\nname": "a" * 64}


def test_archive_twice_writes_verifies_removes_then_changes_nothing(tmp_path: Path) -> None:
    hosts = lay_out(tmp_path)
    first = archive(hosts)
    assert {t: o.status for t, o in first.items()} == {
        "amer-app1": Status.CHANGED,
        "amer-gw1": Status.CHANGED,
    }
    for host, files in FILES.items():
        home = hosts.home(host)
        tarball = home / f"var/archive/2026-11-27/{host}-20261127.tar.gz"
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        assert (home / f"{tarball.relative_to(home)}.sha256").read_text() == (
            f"{digest}  {tarball.name}\n"
        )
        with tarfile.open(tarball) as tar:
            assert sorted(tar.getnames()) == sorted(files)
            member = tar.extractfile(files[0])
            assert member is not None and member.read() == f"{host} {files[0]}\n".encode()
        assert not any((home / f).exists() for f in files), "archived files must be removed"
        assert (home / OTHER_DAY).exists() and (home / "var/log/amer-oms.log").exists()
        outcome = first[host]
        assert outcome.evidence["sha256"] == digest
        assert sorted(outcome.evidence["files"]) == sorted(files)
        assert "verified" in outcome.detail
    tars = len(hosts.commands("tar"))
    second = archive(hosts)
    assert {o.status for o in second.values()} == {Status.OK}
    assert all("already archived" in o.detail for o in second.values())
    assert len(hosts.commands("tar")) == tars and len(hosts.commands("rm")) == 2


def test_a_run_stopped_before_removing_removes_on_the_next_run(tmp_path: Path) -> None:
    hosts = lay_out(tmp_path)
    archive(hosts)
    # Put the files back as they were: the archive holds exactly this content.
    for host, files in FILES.items():
        for rel in files:
            (hosts.home(host) / rel).write_text(f"{host} {rel}\n")
    again = archive(hosts)
    assert {o.status for o in again.values()} == {Status.CHANGED}
    assert "removed 3 archived file(s)" in again["amer-app1"].detail
    assert len([a for a in hosts.commands("tar") if a[1] == "-czf"]) == 2  # not written twice


def test_a_file_that_changed_since_it_was_archived_is_not_removed(tmp_path: Path) -> None:
    hosts = lay_out(tmp_path)
    archive(hosts)
    changed = hosts.home("amer-app1") / FILES["amer-app1"][0]
    changed.write_text("late write\n")
    again = archive(hosts)
    outcome = again["amer-app1"]
    assert outcome.status == Status.FAILED
    assert "changed since" in outcome.detail and changed.exists()


def test_a_file_of_the_day_appearing_after_the_archive_fails_naming_it(tmp_path: Path) -> None:
    hosts = lay_out(tmp_path)
    archive(hosts)
    late = hosts.home("amer-gw1") / "var/log/amer-algo.log-20261127"
    late.write_text("late\n")
    outcome = archive(hosts)["amer-gw1"]
    assert outcome.status == Status.FAILED
    assert "appeared after" in outcome.detail and "amer-algo.log-20261127" in outcome.detail
    assert late.exists()


def test_nothing_to_archive_is_ok(tmp_path: Path) -> None:
    outcomes = archive(LocalHosts(tmp_path))
    assert {o.status for o in outcomes.values()} == {Status.OK}
    assert all("nothing to archive" in o.detail for o in outcomes.values())


def test_a_corrupt_archive_is_written_again_and_nothing_removed_before(tmp_path: Path) -> None:
    hosts = lay_out(tmp_path)
    archive(hosts)
    home = hosts.home("amer-app1")
    tarball = home / "var/archive/2026-11-27/amer-app1-20261127.tar.gz"
    tarball.write_bytes(b"not the archive")
    for rel in FILES["amer-app1"]:
        (home / rel).write_text(f"amer-app1 {rel}\n")
    outcome = archive(hosts)["amer-app1"]
    assert outcome.status == Status.CHANGED
    assert outcome.detail.startswith("archived 3 file(s)")
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == outcome.evidence["sha256"]


def test_a_failing_tar_leaves_every_file_in_place() -> None:
    listing = "var/log/amer-oms.log-20261127\n"
    digest = "b" * 64
    fake = FakeSshRunner(
        {
            ("*", ("find",)): CommandResult("", (), "", 0, stdout=listing),
            ("*", ("cat",)): CommandResult("", (), "", 1, stderr="No such file"),
            ("*", ("test",)): CommandResult("", (), "", 1),
            ("*", ("sha256sum",)): CommandResult("", (), "", 0, stdout=f"{digest}  {listing}"),
            ("*", ("mkdir",)): CommandResult("", (), "", 0),
            ("*", ("tar",)): CommandResult("", (), "", 2, stderr="tar: No space left on device"),
        }
    )
    outcomes = archive(fake)
    assert {o.status for o in outcomes.values()} == {Status.FAILED}
    assert "No space left on device" in outcomes["amer-app1"].detail
    assert not [argv for _, argv in fake.calls if argv[0] in ("rm", "mv")]


@pytest.mark.parametrize("host", ["amer-app1", "amer-gw1"])
def test_hosts_without_an_archive_dir_are_left_out(host: str) -> None:
    estate = load_estate(LAB)
    bare = estate.host(host).model_copy(update={"archive_dir": None})
    assert archive_plan(host, bare, DAY) is None
