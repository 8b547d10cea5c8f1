"""When a region may take a release: from its venues' real sessions, freezes and the clock.

For a region with venues ``C`` (``Region.calendars``) and the estate's
``runbooks.release.window``:

* no release while any venue of ``C`` is in its session (open to close, a lunch break
  included; half days close earlier, holidays and weekends are closed);
* the window opens ``after_close_min`` after the last venue closed, and ends
  ``sod_lead_min`` before the first venue opens next (start of day must run on the new
  version, with its lead time);
* the point of no return is the window's end less the rollback's duration and a margin:
  no batch starts after it, and a release whose expected duration would run past it does
  not start (``fits``);
* a freeze (``runbooks.release.freeze``, the last session of a month where
  ``month_end_freeze``) closes the whole window after the session it names, and the one
  before the session it names.

Times are UTC inside; what people read is in the region's time and UTC.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from openbell.errors import OpenbellError
from openbell.runbooks.schema import Estate, ReleasePolicy
from openbell.tasks.connectors.calendar import get_calendar

#: how far ahead the next window is looked for (a long holiday freeze included).
SEARCH_DAYS = 31


class WindowError(OpenbellError):
    """No window could be found (frozen for longer than the search looks ahead)."""


@dataclass(frozen=True)
class VenueState:
    """One venue at the moment judged."""

    calendar: str
    state: str  # trading | closed
    detail: str
    last_close: datetime | None
    next_open: datetime | None
    early_close: bool


@dataclass(frozen=True)
class WindowVerdict:
    """Whether a release may start at ``at``, and the window it would run in.

    ``open`` says the window is open now (no venue trading, no freeze); ``fits`` says the
    release's expected duration ends before the point of no return (of the current
    window when open, else of the next one). A release starts only when both hold.
    """

    at: datetime
    open: bool
    reason: str
    opens_at: datetime | None
    closes_at: datetime | None
    ponr: datetime | None
    fits: bool
    freeze: str | None
    venues: tuple[VenueState, ...]

    def facts(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t else None

        return {
            "at": iso(self.at),
            "open": self.open,
            "fits": self.fits,
            "reason": self.reason,
            "opens_at": iso(self.opens_at),
            "closes_at": iso(self.closes_at),
            "ponr": iso(self.ponr),
            "freeze": self.freeze,
            "venues": [
                {
                    "calendar": v.calendar,
                    "state": v.state,
                    "detail": v.detail,
                    "last_close": iso(v.last_close),
                    "next_open": iso(v.next_open),
                    "early_close": v.early_close,
                }
                for v in self.venues
            ],
        }

    def lines(self, tz: str) -> list[str]:
        """What ``openbell plan release`` prints, in the region's time and UTC."""
        state = "OPEN" if self.open and self.fits else "CLOSED"
        out = [f"window {state}: {self.reason}"]
        if self.opens_at and self.closes_at:
            out.append(
                f"window {_both(self.opens_at, tz)} to {_both(self.closes_at, tz)}, "
                f"point of no return {_both(self.ponr, tz)}"
            )
        out += [f"{v.calendar}: {v.detail}" for v in self.venues]
        return out


def _both(t: datetime | None, tz: str) -> str:
    if t is None:
        return "-"
    local = t.astimezone(ZoneInfo(tz))
    return f"{local:%a %Y-%m-%d %H:%M} {local.tzname()} ({t.astimezone(UTC):%H:%M}Z)"


def _local(t: datetime, tz: str) -> str:
    local = t.astimezone(ZoneInfo(tz))
    return f"{local:%a %H:%M} {tz}"


def _py(ts: pd.Timestamp) -> datetime:
    return ts.to_pydatetime().astimezone(UTC)


@dataclass(frozen=True)
class _Session:
    day: date
    open: datetime
    close: datetime
    early: bool


def _sessions(code: str, around: datetime) -> list[_Session]:
    """The venue's sessions from a week before ``around`` to SEARCH_DAYS after."""
    cal = get_calendar(code, around.date())
    start = pd.Timestamp(around.date() - timedelta(days=8))
    end = pd.Timestamp(around.date() + timedelta(days=SEARCH_DAYS + 8))
    first, last = cal.first_session, cal.last_session
    start, end = max(start, first), min(end, last)
    early = set(cal.early_closes) if hasattr(cal, "early_closes") else set()
    return [
        _Session(s.date(), _py(cal.session_open(s)), _py(cal.session_close(s)), s in early)
        for s in cal.sessions_in_range(start, end)
    ]


def _venue_state(code: str, at: datetime, sessions: list[_Session]) -> VenueState:
    tz = get_calendar(code, at.date()).tz.key
    now = next((s for s in sessions if s.open <= at < s.close), None)
    last = max((s for s in sessions if s.close <= at), key=lambda s: s.close, default=None)
    nxt = min((s for s in sessions if s.open > at), key=lambda s: s.open, default=None)
    if now is not None:
        half = " (half day)" if now.early else ""
        return VenueState(
            code,
            "trading",
            f"in its session until {_local(now.close, tz)}{half}",
            last.close if last else None,
            nxt.open if nxt else None,
            now.early,
        )
    bits = []
    if last is not None:
        bits.append(f"closed at {_local(last.close, tz)}" + (" (half day)" if last.early else ""))
    if nxt is not None:
        bits.append(f"opens {_local(nxt.open, tz)}")
    return VenueState(
        code,
        "closed",
        ", ".join(bits) or "closed",
        last.close if last else None,
        nxt.open if nxt else None,
        bool(last and last.early),
    )


def _freeze_for(
    estate: Estate, region: str, policy: ReleasePolicy, before: date | None, after: date | None
) -> str | None:
    """The freeze that applies to a window between sessions ``before`` and ``after``."""
    for f in policy.freeze:
        if f.regions and region not in f.regions:
            continue
        for d in (before, after):
            if d is not None and f.start <= d <= f.end:
                return f"{f.reason} ({f.start} to {f.end})"
    if (
        policy.month_end_freeze
        and before is not None
        and after is not None
        and (before.year, before.month) != (after.year, after.month)
    ):
        return f"month end: {before:%Y-%m-%d} is the last session of {before:%B}"
    return None


@dataclass(frozen=True)
class _Window:
    start: datetime
    end: datetime
    freeze: str | None
    after_session: date | None
    before_session: date | None


def _windows(
    estate: Estate, region: str, at: datetime, policy: ReleasePolicy
) -> tuple[list[VenueState], list[_Window]]:
    """The venues' state at ``at`` and the windows from the one around ``at`` onwards."""
    codes = estate.region(region).calendars
    by_code = {c: _sessions(c, at) for c in codes}
    venues = [_venue_state(c, at, by_code[c]) for c in codes]
    after = timedelta(minutes=policy.window.after_close_min)
    lead = timedelta(minutes=policy.window.sod_lead_min)
    # Every moment all venues are closed lies between one close and the next open of the
    # union of sessions: walk the gaps between merged sessions.
    spans = sorted((s.open, s.close, s.day) for ss in by_code.values() for s in ss)
    merged: list[list[Any]] = []
    for o, c, d in spans:
        if merged and o <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], c)
            merged[-1][2] = max(merged[-1][2], d)
        else:
            merged.append([o, c, d])
    primary = by_code[codes[0]]
    out: list[_Window] = []
    for prev, nxt in itertools.pairwise(merged):
        start, end = prev[1] + after, nxt[0] - lead
        if end <= at or start >= end:
            continue
        before_day = max((s.day for s in primary if s.close <= prev[1]), default=None)
        after_day = min((s.day for s in primary if s.open >= nxt[0]), default=None)
        freeze = _freeze_for(estate, region, policy, before_day, after_day)
        out.append(_Window(start, end, freeze, before_day, after_day))
        if start > at + timedelta(days=SEARCH_DAYS):
            break
    return venues, out


def release_window(
    estate: Estate, region: str, at: datetime, policy: ReleasePolicy, *, expected_minutes: float
) -> WindowVerdict:
    """Judge whether a release of ``expected_minutes`` may start in ``region`` at ``at``.

    Raises:
        ValueError: ``at`` is naive (a window is a moment, not a wall-clock reading).
        WindowError: no unfrozen window within SEARCH_DAYS.
    """
    if at.tzinfo is None:
        raise ValueError(f"{at}: a naive time; give its zone (e.g. +00:00)")
    at = at.astimezone(UTC)
    tz = estate.region(region).timezone
    venues, windows = _windows(estate, region, at, policy)
    back = timedelta(minutes=policy.rollback_minutes + policy.window.margin_min)
    expected = timedelta(minutes=expected_minutes)
    current = next((w for w in windows if w.start <= at <= w.end), None)
    upcoming = next(
        (w for w in windows if w.freeze is None and (w.start > at or w is current)), None
    )
    if upcoming is None:
        raise WindowError(
            f"{region}: no release window without a freeze in the next {SEARCH_DAYS} days"
        )
    trading = [v for v in venues if v.state == "trading"]
    opens = _both(upcoming.start, tz)
    if current is not None and current.freeze is None:
        ponr = current.end - back
        fits = at + expected <= ponr
        later = next((w.start for w in windows if w.start > at and not w.freeze), None)
        reason = (
            f"every venue of {region} is closed; the window ends {_both(current.end, tz)}"
            if fits
            else (
                f"{expected_minutes:g} min of release would end after the point of no return "
                f"{_both(ponr, tz)}; the next window opens "
                f"{_both(later, tz)}"
            )
        )
        return WindowVerdict(
            at, True, reason, current.start, current.end, ponr, fits, None, tuple(venues)
        )
    if current is not None and current.freeze is not None:
        reason = f"frozen: {current.freeze}; the window opens {opens}"
        freeze: str | None = current.freeze
    elif trading:
        v = trading[0]
        reason = f"{v.calendar} is {v.detail}; the window opens {opens}"
        freeze = None
    else:
        last = max(
            (v for v in venues if v.last_close), key=lambda v: v.last_close or at, default=None
        )
        first = min(
            (v for v in venues if v.next_open), key=lambda v: v.next_open or at, default=None
        )
        if (
            upcoming.start > at
            and last
            and last.last_close
            and upcoming.start - at < timedelta(minutes=policy.window.after_close_min + 1)
        ):
            reason = (
                f"{last.calendar} {last.detail}; the window opens {opens}, "
                f"{policy.window.after_close_min} min after the last close"
            )
        else:
            reason = (
                f"start of day's lead: {first.calendar if first else 'a venue'} "
                f"{first.detail if first else 'opens soon'}; the window opens {opens}"
            )
        freeze = None
    ponr = upcoming.end - back
    return WindowVerdict(
        at,
        False,
        reason,
        upcoming.start,
        upcoming.end,
        ponr,
        upcoming.start + expected <= ponr,
        freeze,
        tuple(venues),
    )


def next_window(
    estate: Estate, region: str, after: datetime, policy: ReleasePolicy
) -> tuple[datetime, datetime]:
    """(start, end) in UTC of the first unfrozen window that has not ended at ``after``."""
    verdict = release_window(estate, region, after, policy, expected_minutes=0)
    assert verdict.opens_at is not None and verdict.closes_at is not None
    return verdict.opens_at, verdict.closes_at
