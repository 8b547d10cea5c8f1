"""``appctl`` and the simulated apps, driven over SSH like a runbook would."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabPaths
from openbell.runbooks.schema import Estate
from tests.fixtures.lab import ssh_run

pytestmark = pytest.mark.integration


@pytest.fixture
def app(
    lab_estate: tuple[Path, Estate], request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    """(app, host): a different app per test, stopped afterwards whatever happened."""
    _, estate = lab_estate
    names = sorted(estate.apps)
    name = names[zlib.crc32(request.node.name.encode()) % len(names)]
    host = estate.app(name).hosts[0]
    yield name, host
    ssh_run(estate, host, f"bin/appctl stop {name}")


def _health(estate: Estate, name: str) -> httpx.Response:
    host = estate.host(estate.app(name).hosts[0])
    url = (estate.app(name).health_url or "").replace("{host}", host.address)
    return httpx.get(url, timeout=5)


def test_start_status_stop_cycle(lab_estate: tuple[Path, Estate], app: tuple[str, str]) -> None:
    _, estate = lab_estate
    name, host = app
    assert ssh_run(estate, host, f"bin/appctl status {name}")[:2] == (3, f"{name}: not running\n")

    rc, out, _ = ssh_run(estate, host, f"bin/appctl start {name}")
    assert rc == 0 and out.startswith(f"{name}: started (pid ")
    pid = int(out.split("pid ")[1].split(",")[0])

    rc, out, _ = ssh_run(estate, host, f"bin/appctl start {name}")
    assert (rc, out) == (0, f"{name}: already running (pid {pid})\n")

    rc, out, _ = ssh_run(estate, host, f"bin/appctl status {name}")
    assert (rc, out) == (0, f"{name}: running (pid {pid})\n")
    rc, out, _ = ssh_run(estate, host, f"bin/appctl status -l {name}")
    assert rc == 0 and f"pid {pid}" in out and str(estate.app(name).expected_version) in out

    rc, out, _ = ssh_run(estate, host, f"bin/appctl stop {name}")
    assert (rc, out) == (0, f"{name}: stopped (pid {pid})\n")
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert ssh_run(estate, host, f"bin/appctl stop {name}")[:2] == (0, f"{name}: not running\n")
    assert ssh_run(estate, host, f"bin/appctl status {name}")[0] == 3


def test_health_answers_with_the_expected_version(
    lab_estate: tuple[Path, Estate], app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    assert ssh_run(estate, host, f"bin/appctl start {name}")[0] == 0
    resp = _health(estate, name)
    body = resp.json()
    assert resp.status_code == 200
    assert (body["app"], body["status"], body["version"]) == (
        name,
        "ok",
        estate.app(name).expected_version,
    )
    assert body["started_at"].endswith("Z")


def test_app_runs_detached_with_pidfile_and_log_in_the_host_root(
    lab_estate: tuple[Path, Estate], app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    root = LabPaths.of().host_root(host)
    ssh_run(estate, host, f"bin/appctl start {name}")
    pid = int((root / "var" / "run" / f"{name}.pid").read_text())
    assert _health(estate, name).json()["pid"] == pid
    assert (root / "var" / "log" / f"{name}.log").exists()
    assert Path(f"/proc/{pid}/cwd").resolve() == root


def test_app_fails_to_start_fault(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook, app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    lab_faults.add("app_fails_to_start", name)
    rc, _, err = ssh_run(estate, host, f"bin/appctl start {name}")
    assert rc == 1 and err.startswith(f"{name}: refused to start: config error")
    assert ssh_run(estate, host, f"bin/appctl status {name}")[0] == 3
    lab_faults.remove("app_fails_to_start", name)
    assert ssh_run(estate, host, f"bin/appctl start {name}")[0] == 0


def test_wrong_version_fault(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook, app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    ssh_run(estate, host, f"bin/appctl start {name}")
    lab_faults.add("wrong_version", name, version="0.0.1-hotfix")
    assert _health(estate, name).json()["version"] == "0.0.1-hotfix"
    assert "version 0.0.1-hotfix" in ssh_run(estate, host, f"bin/appctl status -l {name}")[1]
    lab_faults.remove("wrong_version", name)
    assert _health(estate, name).json()["version"] == estate.app(name).expected_version


def test_start_fails_clearly_when_the_port_is_taken(
    lab_estate: tuple[Path, Estate], app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    port = int((estate.app(name).health_url or "").rsplit(":", 1)[1].split("/")[0])
    ssh_run(estate, host, f"bin/appctl stop {name}")  # other tests share the lab's apps
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        rc, _, err = ssh_run(estate, host, f"bin/appctl start {name}")
    assert rc == 1
    assert err.startswith(f"{name}: refused to start: cannot bind 127.0.0.1:{port}: ")
    assert ssh_run(estate, host, f"bin/appctl status {name}")[0] == 3


def test_unknown_app(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    host = next(iter(estate.hosts))
    rc, _, err = ssh_run(estate, host, "bin/appctl start no-such-app")
    assert rc == 5 and "unknown app 'no-such-app'" in err
    assert ssh_run(estate, host, "bin/appctl status no-such-app")[0] == 4


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def test_start_succeeds_under_latency(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook, app: tuple[str, str]
) -> None:
    _, estate = lab_estate
    name, host = app
    lab_faults.add("latency", "*", ms=400)  # slower than appctl's 0.25 s health probe
    rc, out, _ = ssh_run(estate, host, f"bin/appctl start {name}")
    assert rc == 0 and out.startswith(f"{name}: started")
