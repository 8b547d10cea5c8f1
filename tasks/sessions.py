"""FIX sessions logged on: Logon with HeartBtInt echoed, TestRequest answered, Logout."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from runbooks.schema import FixSession
from tasks import fix
from tasks.context import RunContext, fan_out
from tasks.steps import timed_step


def probe_description(session: FixSession) -> str:
    """What the probe does, for the plan."""
    extra = " 141=Y" if session.reset_on_logon else ""
    appl = f" 1137={session.default_appl_ver_id}" if session.begin_string == "FIXT.1.1" else ""
    return (
        f"{session.begin_string} {session.sender_comp_id}->{session.target_comp_id} "
        f"@ {session.address}:{session.port}: Logon 108={session.heartbeat_s}{extra}{appl}, "
        "TestRequest, expect Heartbeat with the same 112, Logout"
    )


@task(name="check_fix_sessions", cache_policy=NO_CACHE)
async def check_fix_sessions(ctx: RunContext) -> StepResult:
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
            step="fix",
            target=name,
            status=Status.OK,
            started_at=started,
            detail=detail,
            evidence=r.evidence(),
        )

    return await timed_step(ctx, "fix", "FIX sessions logged on", fan_out("fix", sessions, probe))
