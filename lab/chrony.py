"""``chronyc``: the lab's stand-in for chrony's client, for ``tracking`` only.

Prints what chrony 4.x prints, e.g.::

    Reference ID    : A9FEA97B (169.254.169.123)
    Stratum         : 3
    Ref time (UTC)  : Thu Nov 26 07:59:58 2026
    System time     : 0.000012345 seconds fast of NTP time
    ...
    Leap status     : Normal

``lab/bin/chronyc`` renders the healthy report itself (awk, the same formula) and calls
this module only when a ``clock_offset`` fault is set or the arguments are unusual.

``-c`` gives chrony's CSV form (where the system-time field is the correction, i.e.
negative when the clock is fast), ``-n`` is accepted and ignored. The offset comes from
the ``clock_offset`` fault on this host (params ``us``, signed, positive = fast; optional
``leap`` such as ``"Not synchronised"``), else a small drifting value of a few µs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from openbell.lab.faults import FaultBook

REF_ID = "A9FEA97B"
REF_NAME = "169.254.169.123"


@dataclass(frozen=True)
class Tracking:
    """One ``chronyc tracking`` report."""

    offset_s: float  # positive: the system clock is ahead (fast) of NTP time
    leap: str
    now: float

    @property
    def synchronised(self) -> bool:
        return self.leap == "Normal"

    @property
    def correction_s(self) -> float:
        return -self.offset_s

    def text(self) -> str:
        ref = f"{REF_ID} ({REF_NAME})" if self.synchronised else "00000000 ()"
        stratum = 3 if self.synchronised else 0
        ref_time = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(self.now - 11.3))
        side = "fast" if self.offset_s >= 0 else "slow"
        rows = [
            ("Reference ID", ref),
            ("Stratum", str(stratum)),
            ("Ref time (UTC)", ref_time),
            ("System time", f"{abs(self.offset_s):.9f} seconds {side} of NTP time"),
            ("Last offset", f"{self.offset_s * 0.37:+.9f} seconds"),
            ("RMS offset", f"{abs(self.offset_s) * 1.8 + 0.000004:.9f} seconds"),
            ("Frequency", "12.483 ppm slow"),
            ("Residual freq", "-0.001 ppm"),
            ("Skew", "0.017 ppm"),
            ("Root delay", "0.000412837 seconds"),
            ("Root dispersion", "0.000128004 seconds"),
            ("Update interval", "16.2 seconds"),
            ("Leap status", self.leap),
        ]
        return "".join(f"{k:<16}: {v}\n" for k, v in rows)

    def csv(self) -> str:
        ref = REF_ID if self.synchronised else "00000000"
        fields = [
            ref,
            REF_NAME if self.synchronised else "",
            "3" if self.synchronised else "0",
            f"{self.now - 11.3:.9f}",
            f"{self.correction_s:.9f}",
            f"{self.offset_s * 0.37:.9f}",
            f"{abs(self.offset_s) * 1.8 + 0.000004:.9f}",
            "-12.483",
            "-0.001",
            "0.017",
            "0.000412837",
            "0.000128004",
            "16.2",
            self.leap,
        ]
        return ",".join(fields) + "\n"


def tracking(book: FaultBook, host: str, now: float | None = None) -> Tracking:
    """The report for ``host``: the ``clock_offset`` fault, else a healthy drift.

    Example:
        >>> book = FaultBook(Path("/tmp/ob-doc-chrony/faults.json")); book.clear()
        >>> tracking(book, "h1").leap
        'Normal'
    """
    now = time.time() if now is None else now
    fault = book.get("clock_offset", host)
    if fault:
        offset_us = float(fault.params.get("us", 0))
        leap = str(fault.params.get("leap", "Normal"))
    else:
        # A disciplined clock wanders by a few microseconds around zero.
        offset_us = 12.3 * math.sin(now / 97.0) + 2.1 * math.sin(now / 7.0 + len(host))
        leap = "Normal"
    return Tracking(offset_s=offset_us / 1e6, leap=leap, now=now)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chronyc", add_help=False)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("-c", action="store_true", help="CSV output")
    parser.add_argument("-n", action="store_true", help="no DNS lookups (ignored)")
    parser.add_argument("command", nargs="*")
    args = parser.parse_args(argv)
    if args.command != ["tracking"]:
        shown = " ".join(args.command) or "(interactive mode)"
        print(
            f"Unrecognized command: {shown} (the lab's chronyc knows only 'tracking')",
            file=sys.stderr,
        )
        return 1
    root = args.root.resolve()
    report = tracking(FaultBook(root.parents[1] / "faults.json"), root.name)
    sys.stdout.write(report.csv() if args.c else report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
