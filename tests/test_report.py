"""Reports: autoescaped HTML, escaped Markdown, redacted secrets, identical on regeneration."""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from openbell import secrets
from openbell.outcome import Outcome, Status
from openbell.run import RunRecord, StepResult
from openbell.tasks.ledger import Ledger
from openbell.tasks.reports.report import (
    APPROVAL_COLOUR,
    COLOURS,
    render,
    write_reports,
    write_run_report,
)
from openbell.tasks.reports.rollup import write_rollup
from tests.fixtures.browser import dump_dom, read_png, require_chromium, screenshot
from tests.fixtures.report_sample import DAY, HOSTILE, record_sample_run

T0 = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)
CANARY = "s3cr3t+++$\\canary"


class _Page(HTMLParser):
    """Tags (with attributes) and text of an HTML page, as a browser's parser sees them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._text: list[str] = []
        self.feed(text)
        self.text = "".join(self._text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self._text.append(data)


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


# ---- reports rendered from the ledger ------------------------------------------------------


@pytest.fixture
def sample(sqlite_ledger_url: str, tmp_path: Path) -> Iterator[tuple[Ledger, str]]:
    """A ledger holding the sample run (a step of every status, an approval, evidence...)."""
    with Ledger(sqlite_ledger_url) as ledger:
        yield ledger, record_sample_run(ledger, tmp_path)


def _read(paths: dict[str, Path]) -> dict[str, bytes]:
    return {fmt: path.read_bytes() for fmt, path in paths.items()}


def test_regenerating_from_the_ledger_gives_identical_bytes_and_records_once(
    sample: tuple[Ledger, str], tmp_path: Path
) -> None:
    ledger, run_id = sample

    first = write_run_report(ledger, run_id, tmp_path / "a")
    again = write_run_report(ledger, run_id, tmp_path / "a")
    elsewhere = write_run_report(ledger, run_id, tmp_path / "b")

    assert sorted(first) == ["html", "json", "md"]
    assert _read(first) == _read(again) == _read(elsewhere)
    recorded = [e.payload for e in ledger.run_entries(run_id) if e.kind == "report"]
    # Three files in a, three in b; writing a again changed nothing, so recorded nothing.
    assert len(recorded) == 6
    for fmt, path in first.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert any(
            (p["format"], p["path"], p["sha256"]) == (fmt, str(path), digest) for p in recorded
        )


def test_every_format_carries_the_compliance_facts(
    sample: tuple[Ledger, str], tmp_path: Path
) -> None:
    ledger, run_id = sample
    record = ledger.load_run(run_id)
    (approval,) = record.approvals
    anchor = record.ledger_anchor
    assert anchor is not None and anchor.finished_hash is not None

    texts = {fmt: p.read_text() for fmt, p in write_run_report(ledger, run_id, tmp_path).items()}

    facts = [
        approval.binding_hash,  # what the approval is bound to
        "release notes checked; ticket CHG-1234",  # carol's justification
        "prefect-ui",  # how she answered
        "06:34:22",  # when
        "cannot decide on their own change",  # why bob's self-approval was refused
        record.evidence[0].sha256,
        anchor.finished_hash,  # the ledger anchor
        "rate limited",  # a notification that failed
        "connection lost after Logon was sent",  # an unknown outcome
        "erin may not cancel sod in emea",  # a refusal
        "TQ-ORD-2",
        "emea-oms@emea-app1",
    ]
    for fmt, text in texts.items():
        missing = [f for f in facts if f not in text and f.replace("_", "\\_") not in text]
        assert not missing, f"{fmt} report lacks {missing}"
    seq_range = f"#{anchor.first_seq} to #{anchor.last_seq}"
    assert seq_range in texts["html"] and seq_range in texts["md"]
    data = json.loads(texts["json"])
    assert (data["ledger_anchor"]["first_seq"], data["ledger_anchor"]["last_seq"]) == (
        anchor.first_seq,
        anchor.last_seq,
    )
    kinds = [d["kind"] for d in data["deviations"]]
    assert kinds == ["unknown", "failed", "refused decision", "refusal", "run ended"]
    assert data["ledger_anchor"]["finished_hash"] == anchor.finished_hash
    assert "reports" not in data  # a report does not describe itself


def test_the_html_has_a_gantt_bar_per_step_and_per_approval_wait(
    sample: tuple[Ledger, str],
) -> None:
    ledger, run_id = sample

    page = _Page(render(ledger.load_run(run_id))["html"])

    bars = [a for tag, a in page.tags if tag == "rect" and "bar" in a.get("class", "").split()]
    assert [b["class"] for b in bars] == [
        "bar step ok",
        "bar approval approved",
        "bar step changed",
        "bar step unknown",
        "bar step failed",
        "bar step skipped",
    ]
    xs = [float(b["x"]) for b in bars]
    assert xs == sorted(xs)  # in time order: the wait comes before the step it gated
    assert all(float(b["width"]) >= 3 for b in bars)
    assert not any(tag == "script" for tag, _ in page.tags)
    assert not any(a.get("href", "").startswith("http") for _, a in page.tags)
    assert "{{" not in page.text and "{%" not in page.text


def test_markdown_renders_hostile_names_as_text(sample: tuple[Ledger, str]) -> None:
    from markdown_it import MarkdownIt

    ledger, run_id = sample
    md = render(ledger.load_run(run_id))["md"]

    # CommonMark with raw HTML allowed: only the template's escaping keeps a script out.
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    page = _Page(html)

    assert not any(tag == "script" for tag, _ in page.tags)
    assert HOSTILE in page.text
    assert len([t for t, _ in page.tags if t == "table"]) >= 8  # no table broken by a cell


def test_a_canary_secret_never_appears_in_any_report_or_rollup(
    sqlite_ledger_url: str, tmp_path: Path
) -> None:
    token = f"Zq{uuid.uuid4().hex[:10]}"
    canary = f"{token}+++$\\canary&<x>"
    with Ledger(sqlite_ledger_url) as ledger:
        # Recorded before openbell knew it was a secret: the ledger holds it in clear, so
        # only the reports' own redaction stands between it and the reader.
        early = record_sample_run(ledger, tmp_path, secret=canary, run_id="early-run")
        secrets.register(canary)
        late = record_sample_run(ledger, tmp_path, secret=canary, run_id="late-run")
        raw = [e.payload for e in ledger.run_entries(early)]
        assert token in json.dumps(raw)  # the test would prove nothing otherwise
        paths = [
            *write_run_report(ledger, early, tmp_path / "out").values(),
            *write_run_report(ledger, late, tmp_path / "out").values(),
            *write_rollup(ledger, "emea", DAY, tmp_path / "out").values(),
        ]

    assert len(paths) == 9
    for path in paths:
        text = path.read_text()
        assert token not in text, path  # not raw, not escaped, not split by a filter
        assert "***" in text or "\\*\\*\\*" in text, path


# ---- the HTML in a real browser ------------------------------------------------------------

_PROBE = """
<script>
(function () {
  const svg = document.querySelector("figure.gantt svg");
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const bbox = (el) => { const b = el.getBBox(); return {x: b.x, w: b.width}; };
  const out = {
    svg: svg ? box(svg) : null,
    viewbox: svg ? svg.viewBox.baseVal.width : 0,
    bars: [...document.querySelectorAll("rect.bar")].map((r) => ({
      cls: r.getAttribute("class"), fill: r.getAttribute("fill"), x: +r.getAttribute("x"),
      box: box(r)})),
    caps: [...document.querySelectorAll("rect.verdict")].map((r) => ({
      fill: r.getAttribute("fill"), box: box(r)})),
    labels: [...document.querySelectorAll("text.label")].map((t) => ({
      text: t.textContent, ...bbox(t), box: box(t)})),
    durations: [...document.querySelectorAll("text.duration")].map(bbox),
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    scripts: document.querySelectorAll("script").length,
    hostile: [...document.querySelectorAll("code")].filter(
      (c) => c.textContent === "\\u003cscript>alert(1)\\u003c/script>").length,
    long: [...document.querySelectorAll("code")].filter(
      (c) => c.textContent.startsWith("emea_app1:/var/lib/openbell")).map(
      (c) => ({code: box(c), cell: box(c.closest("td"))})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""
WINDOW = (1280, 1000)


def _hex(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


def _near(a: tuple[int, int, int], b: tuple[int, int, int], tol: int = 3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.integration
def test_the_html_report_looks_right_in_chromium(
    sample: tuple[Ledger, str], tmp_path: Path
) -> None:
    require_chromium()
    ledger, run_id = sample
    page = write_run_report(ledger, run_id, tmp_path / "reports")["html"]
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))

    dom = dump_dom(probed, width=WINDOW[0], height=WINDOW[1])
    shot = read_png(screenshot(page, tmp_path / "report.png", width=WINDOW[0], height=WINDOW[1]))

    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: the page did not load"
    probe = json.loads(html.unescape(found.group(1)))
    body = dom.replace(found.group(0), "")
    # Rendered: the chart is there and wide, every bar has a size on screen.
    assert probe["svg"] and probe["svg"]["w"] > 800
    assert [b["cls"] for b in probe["bars"]] == [
        "bar step ok",
        "bar approval approved",
        "bar step changed",
        "bar step unknown",
        "bar step failed",
        "bar step skipped",
    ]
    assert all(b["box"]["w"] >= 2 and b["box"]["h"] >= 10 for b in probe["bars"])
    # Readable: labels sit in their column left of the bars, durations inside the chart.
    chart_left = min(b["x"] for b in probe["bars"])
    for label in probe["labels"]:
        assert label["x"] >= 0 and label["x"] + label["w"] <= chart_left, label
    assert all(d["x"] >= 0 and d["x"] + d["w"] <= probe["viewbox"] for d in probe["durations"])
    tops = sorted(label["box"]["y"] for label in probe["labels"])
    assert all(b - a >= 14 for a, b in itertools.pairwise(tops))  # no two overlap
    # Safe: the hostile target is text, the page has no script but the probe, no template
    # syntax leaked, and the long target wraps instead of widening the page.
    assert probe["scripts"] == 1 and probe["hostile"] >= 2
    assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    for syntax in ("{{", "}}", "{%", "%}", "{#"):
        assert syntax not in body
    assert probe["overflow"] <= 0 and probe["long"]
    for long in probe["long"]:  # wrapped inside its own cell
        code, cell = long["code"], long["cell"]
        assert code["h"] > 20 and code["x"] + code["w"] <= cell["x"] + cell["w"] + 0.5, long
    # Looks right: the screenshot is not blank, and each bar shows its status colour.
    pixels = shot.pixels()
    white = sum(1 for p in pixels if p == (255, 255, 255))
    assert white < 0.97 * len(pixels) and len(set(pixels)) > 50
    for bar in probe["bars"]:
        b = bar["box"]
        cx, cy = int(b["x"] + b["w"] / 2), int(b["y"] + b["h"] / 2)
        assert cy < shot.height, f"{bar['cls']} is below the fold"
        if bar["cls"].startswith("bar step"):
            status = bar["cls"].split()[-1]
            assert _near(shot.pixel(cx, cy), _hex(COLOURS[status])), bar
        else:  # hatched: the approval colour shows among the stripes
            row = [shot.pixel(x, cy) for x in range(int(b["x"]) + 2, int(b["x"] + b["w"]) - 6)]
            assert any(_near(p, _hex(APPROVAL_COLOUR)) for p in row), bar
    (cap,) = probe["caps"]  # the approval was approved: its wait ends in "ok" green
    b = cap["box"]
    centre = shot.pixel(int(b["x"] + b["w"] / 2), int(b["y"] + b["h"] / 2))
    assert _near(centre, _hex(COLOURS["ok"])), cap
    assert {_hex(c) for c in COLOURS.values()} <= set(pixels)
