"""Installed, openbell is one import name: nothing in a working directory can stand in for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.people import as_

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(REPO)],
        check=True,
        cwd=out,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip
    (found,) = out.glob("openbell-*.whl")
    return found


def test_the_wheel_has_one_top_level_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"openbell", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for data in (
        "openbell/runbooks/lab.yaml",
        "openbell/runbooks/entitlements.yaml",
        "openbell/tasks/reports/templates/run.html.j2",
        "openbell/tasks/ledger/migrations/script.py.mako",
        "openbell/lab/bin/appctl",
        "openbell/flows/start_of_day.py",
    ):
        assert data in names, data
    assert not any(n.startswith(("openbell/flows/flows", "tests/", "benchmarks/")) for n in names)
    # every module of the tree is in the wheel (a folder without __init__.py is left out)
    root = REPO / "openbell"
    modules = {
        f"openbell/{Path(folder).relative_to(root) / name}"
        for folder, _, files in os.walk(root, followlinks=True)  # flows/, tasks/, ... are links
        for name in files
        if name.endswith(".py") and "__pycache__" not in folder
    }
    assert len(modules) > 100
    assert modules - set(names) == set()


@pytest.mark.integration
def test_a_run_started_beside_its_own_tasks_and_flows_runs_openbells_code(
    tmp_path: Path, prefect_server: str, openbell_home: Path
) -> None:
    """A worker's directory may hold a ``tasks.py`` or a ``flows/`` of its own: the current
    directory comes first on ``sys.path`` (``python -m``, Prefect's entrypoint loader)."""
    marker = tmp_path / "imported"
    trap = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\nraise SystemExit(97)\n"
    (tmp_path / "tasks.py").write_text(trap)
    (tmp_path / "runbooks.py").write_text(trap)
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text(trap)
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "__init__.py").write_text(trap)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OPENBELL_HOME": str(openbell_home)}
    result = subprocess.run(
        [sys.executable, "-m", "openbell.deployments.cli", "run", "sod", "--region", "emea",
         "--date", "2026-11-24", "--dry-run", "--json", "--as", "carol"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert not marker.exists(), marker.read_text()
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout)
    assert (record["runbook"], record["dry_run"], record["region"]) == ("sod", True, "emea")
    assert [s["name"] for s in record["plan"]["steps"]][:3] == ["calendar", "disk", "clock"]


@pytest.mark.integration
def test_an_installed_openbell_writes_nothing_inside_its_package(
    wheel: Path, tmp_path: Path
) -> None:
    """Installed from the wheel, a deploy and a run keep what they write under OPENBELL_HOME:
    the package folder may be read-only (site-packages of a root-owned venv)."""
    from tests.fixtures.prefect import running_server

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        check=True, env={**os.environ, "PIP_NO_INPUT": "1"},
    )  # fmt: skip

    def tree() -> dict[str, int]:
        return {str(p.relative_to(target)): p.stat().st_mtime_ns for p in target.rglob("*")}

    before = tree()
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    with running_server(tmp_path / "prefect") as api_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(target),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PREFECT_API_URL": api_url,
            "OPENBELL_HOME": str(home),
        }
        for argv in (
            ["deploy", "--horizon-days", "1", *as_("carol", home)],
            ["run", "sod", "--region", "emea", "--date", "2026-11-24", "--dry-run", "--as",
             "carol"],
        ):  # fmt: skip
            result = subprocess.run(
                [sys.executable, "-c",
                 "import sys, openbell; assert openbell.__file__.startswith(sys.argv.pop(1)), "
                 "openbell.__file__; from openbell.deployments.cli import main; main()",
                 str(target), *argv],
                cwd=work, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
    assert tree() == before, sorted(set(tree()) ^ set(before))
    assert (home / "prefect.yaml").read_text().startswith("# Generated by `openbell deploy`")
    assert list(home.glob("reports/**/*.html")), sorted(str(p) for p in home.rglob("*"))[:20]
