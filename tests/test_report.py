"""Reports: autoescaped HTML, escaped Markdown, redacted secrets, identical on regeneration."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

from openbell import secrets
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord, StepResult
from tasks.report import render, write_reports

T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
CANARY = "s3cr3t+++$\\canary"


def record(detail: str) -> RunRecord:
    bad = Outcome(
        step="disk",
        target="emea-app1:/",
        status=Status.FAILED,
        detail=detail,
        evidence={"raw": detail},
        started_at=T0,
        finished_at=T0,
    )
    good = Outcome(
        step="disk",
        target="emea-gw1:/",
        status=Status.OK,
        detail="12% used",
        started_at=T0,
        finished_at=T0,
    )
    step = StepResult(
        name="disk",
        title="Disk use under threshold",
        outcomes=[bad, good],
        started_at=T0,
        finished_at=T0,
    )
    return RunRecord(
        run_id="0123456789abcdef",
        runbook="sod",
        region="emea",
        trade_date=date(2026, 11, 24),
        operator="alice",
        started_at=T0,
        finished_at=T0,
        calendar={
            "calendar": "XLON",
            "is_session": True,
            "half_day": False,
            "open_local": "08:00",
            "close_local": "16:30",
        },
        steps=[step],
    )


def test_html_is_autoescaped_and_markdown_escaped() -> None:
    out = render(record("<script>alert(1)</script> | `rm -rf` **bold**"))
    assert "<script>alert(1)</script>" not in out["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out["html"]
    assert "<script>" not in out["md"]
    assert "\\| \\`rm -rf\\`" in out["md"]
    assert json.loads(out["json"])["steps"][0]["outcomes"][0]["detail"].startswith("<script>")


def test_secrets_never_reach_a_report(tmp_path: Path) -> None:
    secrets.register(CANARY)
    paths = write_reports(record(f"login failed with password {CANARY} & more"), tmp_path)
    for path in paths.values():
        text = path.read_text()
        assert CANARY not in text
        assert "canary" not in text  # not even a partially escaped form
        assert "***" in text or "\\*\\*\\*" in text  # masked (Markdown escapes the stars)


def test_regenerating_gives_identical_bytes(tmp_path: Path) -> None:
    rec = record("93% used (limit 80%)")
    first = {k: p.read_bytes() for k, p in write_reports(rec, tmp_path / "a").items()}
    second = {k: p.read_bytes() for k, p in write_reports(rec, tmp_path / "b").items()}
    assert first == second


def test_report_shows_status_counts_and_problem_first() -> None:
    rec = record("93% used (limit 80%)")
    assert rec.status == Status.FAILED and rec.steps[0].summary().startswith(
        "emea-app1:/: 93% used"
    )
    md = render(rec)["md"]
    assert "FAILED" in md and "emea-app1:/" in md and "93% used" in md
