"""A canary secret never leaves the process: not in Prefect's logs, the ledger, the reports,
the run records, or Slack, on a run that passes and on one that fails.

The canary has regex metacharacters (``+++``, ``$``, a backslash). It is a real secret
of the estate twice over: the password in a PostgreSQL URL read from the environment
(a read-only check runs on it), and a FIX drop-copy password read from a Prefect Secret
block (sent on the wire as tag 554). The failing run makes an app's start script print
the canary on stderr, which a run reports as the reason the app did not start.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from openbell.deployments.runner import run_runbook
from openbell.lab.faults import FaultBook
from openbell.outcome import Status
from openbell.run import RunRecord
from openbell.runbooks.schema import Estate
from openbell.secrets import MASK
from openbell.settings import get_settings
from openbell.tasks.connectors import calendar
from openbell.tasks.connectors.ssh import SshPool
from tests.fixtures.postgres import PG_DATABASE, PG_HOST, PG_PORT, PG_USER
from tests.fixtures.slack import SlackApi

pytestmark = pytest.mark.integration

CANARY = f"ob-c4n4ry+++$\\{uuid.uuid4().hex[:10]}"
BLOCK = "ob-canary-fix-password"  # Prefect Secret block for OB_CANARY_FIX_PASSWORD


@pytest.fixture
def canary_estate(
    prefect_server: str,
    pg_url: str,
    lab_estate: tuple[Path, Estate],
    lab_faults: FaultBook,
    slack_api: SlackApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Path, Estate, FaultBook, SlackApi]]:
    from prefect.blocks.system import Secret

    from openbell.runbooks.loader import load_estate

    src, estate = lab_estate
    doc = yaml.safe_load(src.read_text())
    drop_copy = next(
        n for n, s in estate.fix_sessions_in("emea").items() if s.begin_string == "FIX.4.4"
    )
    doc["fix_sessions"][drop_copy]["username"] = "openbell"
    doc["fix_sessions"][drop_copy]["password_secret"] = "OB_CANARY_FIX_PASSWORD"
    doc["databases"]["emea-canary"] = {
        "region": "emea",
        "url_secret": "OB_CANARY_DB_URL",
        "timeout_s": 5,
        "checks": [
            {"name": "reachable", "step": "batch", "sql": "SELECT 1", "expect": {"equals": 1}}
        ],
    }
    path = tmp_path / "estate.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(src.parent / "entitlements.yaml", tmp_path / "entitlements.yaml")

    password = quote(CANARY, safe="")
    monkeypatch.setenv(
        "OB_CANARY_DB_URL",
        f"postgresql+psycopg://{PG_USER}:{password}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}",
    )
    monkeypatch.setenv("OPENBELL_SLACK_TOKEN", slack_api.token)
    monkeypatch.setenv("OPENBELL_SLACK_BASE_URL", slack_api.base_url)
    get_settings.cache_clear()
    Secret(value=CANARY).save(BLOCK, overwrite=True)
    try:
        yield path, load_estate(path), lab_faults, slack_api
    finally:
        Secret(value="gone").save(BLOCK, overwrite=True)
        get_settings.cache_clear()


def _day(estate: Estate) -> date:
    return calendar.previous_session(estate.region("emea").primary_calendar, date.today())


def _stop(estate: Estate, app: str) -> None:
    with SshPool(estate) as pool:
        spec = estate.app(app)
        assert pool.run(spec.hosts[0], spec.stop).ok


def _everything_written(records: list[RunRecord], slack: SlackApi) -> dict[str, str]:
    """Every place a run writes to, as text, keyed by where it came from."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter
    from prefect.logging.handlers import APILogWorker

    home = get_settings().home
    found: dict[str, str] = {}
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        for r in records:
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id={"any_": [uuid.UUID(r.run_id)]}),
                limit=200,
            )
            assert logs, f"no Prefect logs for run {r.run_id}: the check could not fail"
            found[f"prefect logs {r.run_id}"] = "\n".join(log.message for log in logs)
            run = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(r.run_id)]))
            )[0]
            found[f"prefect run {r.run_id}"] = run.model_dump_json()
    with sqlite3.connect(home / "ledger.db") as db:
        rows = db.execute("SELECT kind, run_id, ref, payload FROM entries").fetchall()
    found["ledger"] = "\n".join(" ".join(str(c) for c in row) for row in rows)
    for folder in ("reports", "runs"):
        for f in sorted((home / folder).glob("*")):
            found[str(f)] = f.read_text(errors="replace")
    found["slack"] = slack.raw()
    return found


def _leaks(found: dict[str, str]) -> list[str]:
    forms = {CANARY, quote(CANARY, safe=""), CANARY.replace("\\", "\\\\")}
    return [where for where, text in found.items() for form in forms if form in text]


def test_the_canary_never_leaves_on_success_or_failure(
    canary_estate: tuple[Path, Estate, FaultBook, SlackApi],
) -> None:
    path, estate, faults, slack = canary_estate
    ok = run_runbook("sod", "emea", _day(estate), estate=path, operator="emea-oncall")
    batch = next(s for s in ok.steps if s.name == "batch")
    assert any(o.target == "emea-canary:reachable" and o.passed for o in batch.outcomes)
    fix = next(s for s in ok.steps if s.name == "fix")
    assert all(o.passed for o in fix.outcomes), [o.detail for o in fix.outcomes]

    app = sorted(estate.apps_in("emea"))[0]
    _stop(estate, app)
    faults.add("app_fails_to_start", app, reason=f"cannot log in to the OMS with {CANARY}")
    bad = run_runbook("sod", "emea", _day(estate), estate=path, operator="emea-oncall")
    started: dict[str, Any] = {
        o.target.split("@")[0]: o for s in bad.steps if s.name == "apps" for o in s.outcomes
    }
    assert started[app].status == Status.FAILED
    # The positive control: the reason reached the report, with the canary masked.
    assert f"cannot log in to the OMS with {MASK}" in started[app].detail

    found = _everything_written([ok, bad], slack)
    assert any(MASK in text for where, text in found.items() if where.endswith(".html"))
    assert slack.messages, "nothing reached Slack: the check could not fail"
    assert _leaks(found) == []


def test_a_secret_is_masked_in_every_encoding_it_leaves_in() -> None:
    """JSON escapes a ``"`` or a ``\\``, URLs percent-encode: the value is masked in each."""
    import json
    from urllib.parse import quote, quote_plus

    from openbell.secrets import redact, register

    secret = 'pa"ss\\w/rd é+1'
    register(secret)
    forms = [
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    ]
    assert len(set(forms)) == len(forms)  # five different spellings of one value
    for form in forms:
        for text in (f"password={form};", f"postgresql://u:{form}@db/x"):
            shown = redact(text)
            assert form not in shown and "***" in shown, (form, shown)
