"""Regenerate docs/report.png: the sample run's HTML report in headless Chromium.

Run from the checkout: ``.venv/bin/python docs/screenshot.py``. It writes the sample run
of ``tests/fixtures/report_sample.py`` (a step of every status, an approval with a
refused self-approval, evidence, a hostile and a long target name) to a throw-away
ledger, renders its report from the ledger, and screenshots the top of the page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the sample and the browser helper live under tests/

from openbell.tasks.ledger import Ledger  # noqa: E402
from openbell.tasks.reports.report import write_run_report  # noqa: E402
from tests.fixtures.browser import screenshot  # noqa: E402
from tests.fixtures.report_sample import record_sample_run  # noqa: E402

OUT = ROOT / "docs" / "report.png"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="openbell-screenshot-") as tmp:
        work = Path(tmp)
        with Ledger(f"sqlite:///{work / 'ledger.db'}") as ledger:
            run_id = record_sample_run(ledger, work)
            page = write_run_report(ledger, run_id, work / "reports")["html"]
        screenshot(page, OUT, width=1280, height=1180)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
