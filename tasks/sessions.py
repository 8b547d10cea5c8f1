"""FIX sessions: logged on before the open; logged out, reset or archived after the close.

Start of day probes each session (Logon with HeartBtInt echoed, TestRequest answered,
Logout). End of day (``ensure_fix_end_of_day``) reads each session's store on its
gateway host (``seqnums``, ``event.log``), ends the FIX day with the venue, and applies
the reset policy: numbers back to 1, or the day's store kept for the archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from openbell import chaos
from openbell.errors import FixError
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.runbooks.schema import Estate, FixSession
from openbell.tasks.connectors import calendar, fix
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, fan_out, in_thread


def probe_description(session: FixSession) -> str:
    """What the probe does, for the plan."""
    extra = " 141=Y" if session.reset_on_logon else ""
    appl = f" 1137={session.default_appl_ver_id}" if session.begin_string == "FIXT.1.1" else ""
    return (
        f"{session.begin_string} {session.sender_comp_id}->{session.target_comp_id} "
        f"@ {session.address}:{session.port}: Logon 108={session.heartbeat_s}{extra}{appl}, "
        "TestRequest, expect Heartbeat with the same 112, Logout"
    )


def plan_fix_sessions(p: PlanContext) -> list[PlannedAction]:
    return [
        PlannedAction(target=n, action=probe_description(s))
        for n, s in sorted(p.estate.fix_sessions_in(p.region).items())
    ]


async def check_fix_sessions(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every order-entry and drop-copy session of the region answers a health probe."""
    sessions = sorted(ctx.estate.fix_sessions_in(ctx.region).items())

    async def probe(name: str, session: FixSession) -> Outcome:
        started = utcnow()
        r = await fix.probe_session(name, session)
        detail = (
            f"{r.begin_string} logon {r.logon_rtt_ms:.1f} ms, 108={r.heartbeat_echoed} echoed, "
            f"TestRequest answered in {r.test_request_rtt_ms:.1f} ms"
        )
        return Outcome(
            step=step.name,
            target=name,
            status=Status.OK,
            started_at=started,
            detail=detail,
            evidence=r.evidence(),
        )

    return await step.fan_out(ctx, sessions, probe)


# ---- end of day ------------------------------------------------------------------------------
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def reset_due(session: FixSession, day: date, next_session: date) -> bool:
    """Whether the session's sequence numbers reset at the end of ``day``.

    ``daily``: always; ``never``: never; ``weekly``: when the ``reset_weekday`` falls
    after ``day`` and no later than the next session, i.e. the next session is the first
    of a new FIX week.

    Example:
        >>> s = FixSession(region="amer", address="127.0.0.1", port=1, sender_comp_id="A",
        ...                target_comp_id="B", reset_policy="weekly", reset_weekday="sun")
        >>> reset_due(s, date(2026, 11, 27), date(2026, 11, 30))  # Friday -> Monday
        True
        >>> reset_due(s, date(2026, 11, 30), date(2026, 12, 1))
        False
    """
    if session.reset_policy != "weekly":
        return session.reset_policy == "daily"
    wanted = WEEKDAYS.index(session.reset_weekday or "sun")
    span = (next_session - day).days
    return any((day + timedelta(days=n)).weekday() == wanted for n in range(1, span + 1))


def store_path(ctx_estate: Estate, name: str) -> tuple[str, str] | None:
    """(gateway host, store directory) of a session, or None when no host keeps it."""
    host = ctx_estate.store_host(name)
    if host is None or not ctx_estate.host(host).fix_store_dir:
        return None
    return host, f"{ctx_estate.host(host).fix_store_dir}/{name}"


def store_read_argv(store: str, day: date) -> list[list[str]]:
    """The commands that read a session's store: numbers, the day's events, its files."""
    return [
        ["cat", "--", f"{store}/seqnums"],
        ["grep", "-F", "--", f"End of day {day.isoformat()}:", f"{store}/event.log"],
        ["ls", "-1", "--", store],
    ]


def store_archive_argv(store: str, day: date) -> list[list[str]]:
    """Keep the day's store as ``*-YYYYMMDD`` when the numbers are not reset."""
    ymd = day.strftime("%Y%m%d")
    return [
        ["mv", "-n", "--", f"{store}/messages.log", f"{store}/messages.log-{ymd}"],
        ["cp", "-p", "--", f"{store}/seqnums", f"{store}/seqnums-{ymd}"],
    ]


@dataclass(frozen=True)
class StoreState:
    """A session's FIX store as read over SSH."""

    seqnums: tuple[int, int] | None
    events: list[str]
    files: list[str]

    def logged_out(self, day: date) -> bool:
        return any(f"End of day {day.isoformat()}: logged out" in e for e in self.events)

    def reset_for(self, day: date) -> bool:
        return any(
            f"End of day {day.isoformat()}: sequence numbers reset" in e for e in self.events
        )

    def evidence(self) -> dict[str, Any]:
        return {"seqnums": list(self.seqnums or ()), "events": self.events, "files": self.files}


def parse_seqnums(text: str) -> tuple[int, int] | None:
    """QuickFIX's ``seqnums``: (next to send, next expected), or None if unreadable.

    Example:
        >>> parse_seqnums("0000000012 : 0000000009\\n")
        (12, 9)
    """
    out, sep, expected = text.partition(":")
    try:
        return (int(out), int(expected)) if sep else None
    except ValueError:
        return None


async def _read_store(ctx: RunContext, host: str, store: str) -> StoreState:
    cat, grep, ls = store_read_argv(store, ctx.trade_date)
    seq = await in_thread(ctx, ctx.ssh.run, host, cat)
    if not seq.ok:
        raise FixError(host, f"read {store}/seqnums", f"cat exited {seq.exit_status}: {seq.tail()}")
    found = await in_thread(ctx, ctx.ssh.run, host, grep)
    listing = await in_thread(ctx, ctx.ssh.run, host, ls)
    return StoreState(
        seqnums=parse_seqnums(seq.stdout),
        events=[ln.strip() for ln in found.stdout.splitlines() if ln.strip()],
        files=sorted(ln.strip() for ln in listing.stdout.splitlines() if ln.strip()),
    )


def plan_fix_eod(p: PlanContext) -> list[PlannedAction]:
    """Per session: read its store, end the FIX day, then reset or keep the store."""
    day, iso = p.trade_date, p.trade_date.isoformat()
    reg = p.estate.region(p.region)
    following = calendar.session_info(reg.primary_calendar, day).next_session or day
    actions = []
    for name, session in sorted(p.estate.fix_sessions_in(p.region).items()):
        where = store_path(p.estate, name)
        if where is None:
            actions.append(PlannedAction(target=name, action="fail: no host keeps its store"))
            continue
        gw, store = where
        actions += [
            PlannedAction(target=name, action=p.ssh(gw, a)) for a in store_read_argv(store, day)
        ]
        actions.append(
            PlannedAction(
                target=name,
                action=f"if not ended for {iso}: {session.begin_string} Logon "
                f"{session.sender_comp_id}->{session.target_comp_id} @ {session.address}:"
                f"{session.port} with the store's next 34 (no 141), Logout 58='End of day {iso}'",
            )
        )
        if reset_due(session, day, following):
            actions.append(
                PlannedAction(
                    target=name,
                    action=f"{session.reset_policy} reset due: expect seqnums 1 : 1 after Logout",
                )
            )
        else:
            actions += [
                PlannedAction(target=name, action="no reset tonight: " + p.ssh(gw, a))
                for a in store_archive_argv(store, day)
            ]
    return actions


async def sessions_to_end(ctx: RunContext, step: StepRun) -> Changes:
    """The sessions whose FIX day has not ended yet: logout, then reset or store kept.

    Read from each session's store on its gateway host; a session whose store cannot be
    read is left to ``ensure_fix_end_of_day``, which reports why.
    """
    day = ctx.trade_date
    info = calendar.session_info(ctx.estate.region(ctx.region).primary_calendar, day)
    following = info.next_session or day + timedelta(days=1)
    sessions = sorted(ctx.estate.fix_sessions_in(ctx.region).items())

    async def probe(name: str, session: FixSession) -> Outcome:
        where = store_path(ctx.estate, name)
        if where is None:
            return Outcome(step=step.name, target=name, status=Status.FAILED)
        host, store = where
        state = await _read_store(ctx, host, store)
        kept = {argv[-1].rsplit("/", 1)[-1] for argv in store_archive_argv(store, day)}
        todo = not state.logged_out(day) or (
            not reset_due(session, day, following) and not kept <= set(state.files)
        )
        return Outcome(step=step.name, target=name, status=Status.CHANGED if todo else Status.OK)

    found = await fan_out(step.name, sessions, probe)
    todo = [o.target for o in found if o.status == Status.CHANGED]
    return Changes(
        targets=todo,
        lines=[f"log out {t} for {day} and apply its reset policy" for t in todo],
        summary=f"end the FIX day of {len(todo)} session(s) in {ctx.region.upper()}",
    )


async def ensure_fix_end_of_day(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Every FIX session logged out for the day; numbers reset or the store archived.

    Per session, from its store on the gateway host: if the store has no end of day for
    the trade date, log on with the store's numbers and log out with ``End of day
    <date>``. Then, if the reset policy resets tonight, verify the venue and the store
    are back at 1; else keep the day's store (``messages.log-YYYYMMDD``,
    ``seqnums-YYYYMMDD``) for the archive. A re-run finds all of it done and changes
    nothing.
    """
    day = ctx.trade_date
    ymd = day.strftime("%Y%m%d")
    info = calendar.session_info(ctx.estate.region(ctx.region).primary_calendar, day)
    following = info.next_session or day + timedelta(days=1)
    sessions = sorted(ctx.estate.fix_sessions_in(ctx.region).items())

    async def probe(name: str, session: FixSession) -> Outcome:
        started = utcnow()
        where = store_path(ctx.estate, name)
        if where is None:
            return Outcome(
                step=step.name,
                target=name,
                status=Status.FAILED,
                started_at=started,
                detail="no gateway host with a fix_store_dir keeps this session's store",
            )
        host, store = where
        due = reset_due(session, day, following)
        policy = session.reset_policy + (
            f" ({session.reset_weekday})" if session.reset_weekday else ""
        )
        before = await _read_store(ctx, host, store)
        done: list[str] = []
        evidence: dict[str, Any] = {"policy": policy, "reset_due": due, "store": f"{host}:{store}"}
        if not before.logged_out(day):
            if before.seqnums is None:
                raise FixError(
                    name, f"read {host}:{store}/seqnums", "no sequence numbers in the store"
                )
            result = await fix.end_of_day_logout(
                name, session, seq=before.seqnums[0], text=f"End of day {day.isoformat()}"
            )
            chaos.point(f"fix_eod:{name}:logged_out")
            evidence["logout"] = result.evidence()
            done.append(f"logged out (34={result.logon_seq}..{result.last_seq_sent})")
        after = await _read_store(ctx, host, store) if done else before
        if due:
            # The venue's own event line is the proof; the numbers are 1:1 only until
            # the next session logs on (a re-run for an older day finds them moved on).
            if not after.reset_for(day):
                evidence["store_after"] = after.evidence()
                return Outcome(
                    step=step.name,
                    target=name,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"{policy} reset due after {day} but the store has no reset for "
                    f"the day (seqnums {after.seqnums})",
                    evidence=evidence,
                )
            moved = after.seqnums not in (None, (1, 1))
            state = "sequence numbers reset to 1" + (" (moved on since)" if moved else "")
        else:
            # Each file is kept once: a run stopped between the two commands finds the
            # first one done and runs only the second.
            todo = [
                argv
                for argv in store_archive_argv(store, day)
                if argv[-1].rsplit("/", 1)[-1] not in after.files
            ]
            if todo:
                for argv in todo:
                    res = await in_thread(ctx, ctx.ssh.run, host, argv)
                    chaos.point(f"fix_eod:{name}:{argv[0]}")
                    if not res.ok and argv[0] == "cp":
                        raise FixError(
                            name, " ".join(argv), f"exit {res.exit_status}: {res.tail()}"
                        )
                done.append(f"store kept as *-{ymd}")
                after = await _read_store(ctx, host, store)
            state = f"no reset tonight ({policy}); store archived as *-{ymd}"
        evidence["store_after"] = after.evidence()
        seq = f"seqnums {after.seqnums[0]}:{after.seqnums[1]}" if after.seqnums else ""
        return Outcome(
            step=step.name,
            target=name,
            status=Status.CHANGED if done else Status.OK,
            started_at=started,
            detail=("; ".join(done) + "; " if done else "already ended for the day; ")
            + f"{state}, {seq}",
            evidence=evidence,
        )

    return await step.fan_out(ctx, sessions, probe)
