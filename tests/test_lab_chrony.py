"""The lab's ``chronyc tracking``, run on a lab host over SSH."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from openbell.lab.chrony import tracking
from openbell.lab.faults import FaultBook
from openbell.runbooks.schema import Estate
from tests.fixtures.lab import ssh_run

pytestmark = pytest.mark.integration

SYSTEM_TIME = re.compile(r"^System time     : (\d+\.\d{9}) seconds (fast|slow) of NTP time$", re.M)
LEAP = re.compile(r"^Leap status     : (.+)$", re.M)


def _offset_us(out: str) -> float:
    m = SYSTEM_TIME.search(out)
    assert m, out
    value = float(m.group(1)) * 1e6
    return value if m.group(2) == "fast" else -value


def test_tracking_reports_a_small_offset_and_normal_leap(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    host = next(iter(estate.hosts))
    rc, out, err = ssh_run(estate, host, "chronyc tracking")
    assert (rc, err) == (0, "")
    assert abs(_offset_us(out)) < 100  # inside even the HFT tier
    assert LEAP.search(out).group(1) == "Normal"  # type: ignore[union-attr]
    assert out.splitlines()[0].startswith("Reference ID    : ")


def test_clock_offset_fault(lab_estate: tuple[Path, Estate], lab_faults: FaultBook) -> None:
    _, estate = lab_estate
    host, other = list(estate.hosts)[:2]
    lab_faults.add("clock_offset", host, us=2500)
    assert _offset_us(ssh_run(estate, host, "chronyc tracking")[1]) == pytest.approx(2500)
    assert abs(_offset_us(ssh_run(estate, other, "chronyc tracking")[1])) < 100
    lab_faults.add("clock_offset", host, us=-40, leap="Not synchronised")
    out = ssh_run(estate, host, "chronyc tracking")[1]
    assert _offset_us(out) == pytest.approx(-40)
    assert LEAP.search(out).group(1) == "Not synchronised"  # type: ignore[union-attr]


def test_csv_form_carries_the_correction(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    host = next(iter(estate.hosts))
    lab_faults.add("clock_offset", host, us=120)
    fields = ssh_run(estate, host, "chronyc -c tracking")[1].strip().split(",")
    assert len(fields) == 14
    assert float(fields[4]) == pytest.approx(-120e-6)  # chrony's CSV: correction = -offset
    assert fields[-1] == "Normal"


def test_unknown_subcommand_fails(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    rc, _, err = ssh_run(estate, next(iter(estate.hosts)), "chronyc sources")
    assert rc == 1 and "Unrecognized command" in err


def test_healthy_drift_stays_within_a_few_microseconds(tmp_path: Path) -> None:
    book = FaultBook(tmp_path / "faults.json")
    offsets = [tracking(book, "h1", now=1_795_000_000.0 + i * 13.7).offset_s for i in range(200)]
    assert max(abs(o) for o in offsets) < 20e-6
    assert len({round(o, 9) for o in offsets}) > 100  # it wanders


def _close(shell: str, python: str, tolerance: float) -> bool:
    """Two rendered values agree: equal text, or numbers within ``tolerance``."""
    if shell == python:
        return True
    num = re.compile(r"[-+]?\d+\.\d+")
    if num.sub("#", shell) != num.sub("#", python):
        return False
    pairs = zip(num.findall(shell), num.findall(python), strict=True)
    return all(abs(float(a) - float(b)) <= tolerance for a, b in pairs)


@pytest.mark.parametrize("flags", ["", "-c ", "-n -c "])
def test_the_shell_fast_path_renders_what_lab_chrony_renders(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook, flags: str
) -> None:
    """With no clock_offset fault the host's shim answers in awk; it must not drift from
    openbell.lab.chrony (same lines and fields, values a moment apart)."""
    _, estate = lab_estate
    host = next(iter(estate.hosts))
    rc, out, err = ssh_run(estate, host, f"chronyc {flags}tracking")
    assert (rc, err) == (0, "")
    report = tracking(lab_faults, host)
    expected = report.csv() if "-c" in flags else report.text()
    if "-c" in flags:
        got, want = out.strip().split(","), expected.strip().split(",")
        assert len(got) == len(want) == 14
        assert _close(got[3], want[3], 5.0)  # the reference time, seconds apart at most
        assert all(_close(g, w, 2e-6) for g, w in zip(got[4:], want[4:], strict=True))
        assert got[:3] == want[:3]
    else:
        got, want = out.splitlines(), expected.splitlines()
        assert [g.split(":")[0] for g in got] == [w.split(":")[0] for w in want]
        for g, w in zip(got, want, strict=True):
            if g.startswith("Ref time"):
                continue  # a wall-clock stamp; the CSV case compares it as a number
            if g.startswith("System time"):  # signed: the side may flip near zero
                assert _offset_us(g) == pytest.approx(_offset_us(w), abs=2), (g, w)
                continue
            assert _close(g, w, 2e-6), (g, w)
