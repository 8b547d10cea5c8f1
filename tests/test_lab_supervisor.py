"""Starting, inspecting and stopping the lab as a whole."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from openbell.lab import supervisor
from openbell.lab.generate import generate_estate
from openbell.lab.hostroot import rotate_logs
from openbell.lab.paths import LabError, LabPaths, pid_alive
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.settings import get_settings
from tests.fixtures.lab import ssh_run
from tests.fixtures.services import port_open

pytestmark = pytest.mark.integration


def test_status_lists_every_endpoint_listening(lab_estate: tuple[Path, Estate]) -> None:
    path, estate = lab_estate
    st = supervisor.status()
    assert st.running and st.ready and st.estate == str(path.resolve())
    kinds = {e.kind for e in st.endpoints}
    assert kinds == {"ssh", "feed", "fix", "oms_admin", "artifacts"}
    ssh = {e.name: e for e in st.endpoints if e.kind == "ssh"}
    assert set(ssh) == set(estate.hosts)
    served = [e for e in st.endpoints if e.served]
    assert all(e.listening for e in served), [e for e in served if not e.listening]
    assert st.to_json()["pid"] == st.pid


def test_up_is_idempotent_for_the_same_estate(lab_estate: tuple[Path, Estate]) -> None:
    path, _ = lab_estate
    before = supervisor.status(probe=False).pid
    assert supervisor.up(path).pid == before


def test_up_refuses_another_estate_while_running(
    lab_estate: tuple[Path, Estate], tmp_path: Path
) -> None:
    other = generate_estate(tmp_path / "other.yaml", hosts=3)
    with pytest.raises(LabError, match="already runs"):
        supervisor.up(other)


def test_down_leaves_no_process_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("OPENBELL_HOME", str(home))
    get_settings.cache_clear()
    path = generate_estate(
        tmp_path / "estate.yaml", hosts=3, apps_per_host=1, tiers=1, fix_sessions=0, feeds=1
    )
    estate = load_estate(path)
    with ThreadPoolExecutor(2) as pool:  # two callers at once still get one lab
        first, second = pool.map(lambda _: supervisor.up(path, home=home), range(2))
    st = first
    assert st.running and second.pid == st.pid
    assert all(e.listening for e in st.endpoints)
    app = next(iter(estate.apps))
    assert ssh_run(estate, estate.app(app).hosts[0], f"bin/appctl start {app}")[0] == 0
    app_pid = int(next(LabPaths(home.resolve()).hosts_dir.glob(f"*/var/run/{app}.pid")).read_text())

    stopped = supervisor.down(home)

    assert stopped == [st.pid, app_pid]
    assert not pid_alive(st.pid or 0) and not pid_alive(app_pid)
    assert not any(port_open(e.address, e.port, timeout=0.2) for e in st.endpoints)
    assert not supervisor.status(home).running
    assert supervisor.down(home) == []


def test_a_port_in_use_fails_up_with_the_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    home = tmp_path / "home"
    monkeypatch.setenv("OPENBELL_HOME", str(home))
    get_settings.cache_clear()
    path = generate_estate(
        tmp_path / "estate.yaml", hosts=3, apps_per_host=1, tiers=1, fix_sessions=0, feeds=1
    )
    host = next(iter(load_estate(path).hosts.values()))
    with socket.socket() as squatter:
        squatter.bind((host.address, host.port))
        squatter.listen()
        with pytest.raises(LabError, match=f"cannot listen on {host.address}:{host.port}"):
            supervisor.up(path, home=home)
    assert not supervisor.status(home).running


def test_logs_are_rotated_at_local_midnight(tmp_path: Path) -> None:
    tz = "Europe/London"
    logs = tmp_path / "var" / "log"
    logs.mkdir(parents=True)
    old, fresh = logs / "oms.log", logs / "risk.log"
    old.write_text("yesterday\n")
    fresh.write_text("today\n")
    now = datetime.now(ZoneInfo(tz))
    yesterday = (now - timedelta(days=1)).replace(hour=12).timestamp()
    os.utime(old, (yesterday, yesterday))

    rotated = rotate_logs(tmp_path, "var/log", tz, now=now)

    day = (now - timedelta(days=1)).strftime("%Y%m%d")
    assert rotated == [logs / f"oms.log-{day}"]
    assert rotated[0].read_text() == "yesterday\n"
    assert old.read_text() == "" and old.stat().st_mtime >= now.timestamp() - 1
    assert fresh.read_text() == "today\n"
    assert rotate_logs(tmp_path, "var/log", tz, now=now) == []
