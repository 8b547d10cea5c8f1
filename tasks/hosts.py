"""Host checks over SSH: disk use, clock sync, FIX store writable, logs rotated.

Each check is the work of one runbook step and fans out over the region's hosts. The
remote commands are built by the ``*_argv`` functions, which each check's ``plan_*``
beside it also uses, so ``openbell plan`` shows exactly what will run.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.runbooks.schema import Host
from openbell.tasks.context import PlanContext, RunContext, StepRun, in_thread


def disk_argv(path: str) -> list[str]:
    """``df`` in POSIX format, 1 KiB blocks, for one path."""
    return ["df", "-P", "-k", path]


def fix_store_argv(directory: str) -> list[str]:
    """Exit 0 only when the directory exists and is writable."""
    return ["test", "-d", directory, "-a", "-w", directory]


def logs_argv(log_dir: str, cutoff_epoch: int) -> list[str]:
    """List live ``*.log`` files not written since the cutoff (i.e. not rotated)."""
    return [
        "find",
        log_dir,
        "-maxdepth",
        "1",
        "-type",
        "f",
        "-name",
        "*.log",
        "!",
        "-newermt",
        f"@{cutoff_epoch}",
    ]


def parse_df(stdout: str) -> int:
    """Capacity percent from ``df -P`` output.

    Example:
        >>> parse_df("Filesystem 1024-blocks Used Available Capacity Mounted on\\n"
        ...          "/dev/vda 264091588 23000000 241091588 9% /")
        9
    """
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    fields = lines[-1].split()
    for f in fields:
        if f.endswith("%") and f[:-1].isdigit():
            return int(f[:-1])
    raise ValueError(f"no capacity column in df output: {lines[-1]!r}")


_OFFSET = re.compile(r"System time\s*:\s*([0-9.]+)\s+seconds\s+(fast|slow)", re.I)
_LEAP = re.compile(r"Leap status\s*:\s*(.+)", re.I)


def parse_chronyc(stdout: str) -> tuple[float, str]:
    """(offset in microseconds, leap status) from ``chronyc tracking``.

    Example:
        >>> parse_chronyc("System time     : 0.000012000 seconds slow of NTP time\\n"
        ...               "Leap status     : Normal")
        (-12.0, 'Normal')
    """
    m = _OFFSET.search(stdout)
    leap = _LEAP.search(stdout)
    if not m or not leap:
        raise ValueError("chronyc output has no 'System time' or 'Leap status' line")
    micro = float(m.group(1)) * 1_000_000
    return (micro if m.group(2).lower() == "fast" else -micro), leap.group(1).strip()


def _targets(ctx: RunContext) -> list[tuple[str, Host]]:
    return sorted(ctx.estate.hosts_in(ctx.region).items())


def plan_disk(p: PlanContext) -> list[PlannedAction]:
    """``df`` on every disk path of every host."""
    return [
        PlannedAction(target=f"{n}:{path}", action=p.ssh(n, disk_argv(path)))
        for n, h in p.hosts()
        for path in h.disk_paths
    ]


async def check_disk(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Disk use under the region's threshold on every path of every host.

    End of day runs it again after the archive, as its own step.
    """
    name = step.name
    limit = ctx.estate.thresholds(ctx.region).disk_max_pct
    targets = [(f"{n}:{p}", (n, p)) for n, h in _targets(ctx) for p in h.disk_paths]

    async def probe(target: str, item: tuple[str, str]) -> Outcome:
        started = utcnow()
        res = await in_thread(ctx, ctx.ssh.run, item[0], disk_argv(item[1]))
        if not res.ok:
            return Outcome(
                step=name,
                target=target,
                status=Status.FAILED,
                started_at=started,
                detail=f"df exited {res.exit_status}: {res.stderr.strip()[-200:]}",
            )
        pct = parse_df(res.stdout)
        status = Status.OK if pct < limit else Status.FAILED
        return Outcome(
            step=name,
            target=target,
            status=status,
            started_at=started,
            detail=f"{pct}% used (limit {limit:g}%)",
            evidence={"used_pct": pct},
        )

    return await step.fan_out(ctx, targets, probe)


def plan_clock(p: PlanContext) -> list[PlannedAction]:
    return [PlannedAction(target=n, action=p.ssh(n, h.clock_command)) for n, h in p.hosts()]


async def check_clock(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """Clock offset inside the MiFID II RTS 25 tier and leap status normal."""
    th = ctx.estate.thresholds(ctx.region)

    async def probe(name: str, host: Host) -> Outcome:
        started = utcnow()
        res = await in_thread(ctx, ctx.ssh.run, name, host.clock_command)
        if not res.ok:
            return Outcome(
                step=step.name,
                target=name,
                status=Status.FAILED,
                started_at=started,
                detail=f"{' '.join(host.clock_command)} exited {res.exit_status}: "
                f"{res.stderr.strip()[-200:]}",
            )
        offset_us, leap = parse_chronyc(res.stdout)
        problems = []
        if abs(offset_us) > th.clock_limit_us:
            problems.append(
                f"offset {offset_us:+.1f} µs exceeds {th.clock_tier} tier ±{th.clock_limit_us} µs"
            )
        if leap.lower() != "normal":
            problems.append(f"leap status {leap!r}")
        detail = (
            "; ".join(problems)
            or f"offset {offset_us:+.1f} µs (limit ±{th.clock_limit_us} µs), leap Normal"
        )
        return Outcome(
            step=step.name,
            target=name,
            started_at=started,
            detail=detail,
            status=Status.FAILED if problems else Status.OK,
            evidence={"offset_us": offset_us, "leap": leap, "tier": th.clock_tier},
        )

    return await step.fan_out(ctx, _targets(ctx), probe)


def plan_fix_store(p: PlanContext) -> list[PlannedAction]:
    return [
        PlannedAction(target=n, action=p.ssh(n, fix_store_argv(h.fix_store_dir)))
        for n, h in p.hosts()
        if h.fix_store_dir
    ]


async def check_fix_store(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """The FIX message store directory is writable on every gateway host."""
    targets = [(n, h) for n, h in _targets(ctx) if h.fix_store_dir]

    async def probe(name: str, host: Host) -> Outcome:
        started = utcnow()
        directory = host.fix_store_dir or ""
        res = await in_thread(ctx, ctx.ssh.run, name, fix_store_argv(directory))
        ok = res.ok
        return Outcome(
            step=step.name,
            target=name,
            started_at=started,
            status=Status.OK if ok else Status.FAILED,
            detail=f"{directory} writable" if ok else f"{directory} is missing or not writable",
        )

    step.note = "" if targets else "no host has a FIX store"
    return await step.fan_out(ctx, targets, probe)


def rotation_cutoff(timezone: str, day: date) -> int:
    """Midnight starting the trade date (region time, never later than now), as an epoch."""
    tz = ZoneInfo(timezone)
    midnight = int(datetime.combine(day, time(0), tzinfo=tz).timestamp())
    # Planning a future session must not call today's live logs stale.
    return min(midnight, int(utcnow().timestamp()))


def plan_logs(p: PlanContext) -> list[PlannedAction]:
    cutoff = rotation_cutoff(p.estate.region(p.region).timezone, p.trade_date)
    return [
        PlannedAction(target=n, action=p.ssh(n, logs_argv(h.log_dir, cutoff)))
        for n, h in p.hosts()
        if h.log_dir
    ]


async def check_logs_rotated(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """No live ``*.log`` file left over from before the trade date."""
    targets = [(n, h) for n, h in _targets(ctx) if h.log_dir]
    cutoff = rotation_cutoff(ctx.estate.region(ctx.region).timezone, ctx.trade_date)

    async def probe(name: str, host: Host) -> Outcome:
        started = utcnow()
        res = await in_thread(ctx, ctx.ssh.run, name, logs_argv(host.log_dir or "", cutoff))
        stale = [ln for ln in res.stdout.splitlines() if ln.strip()]
        if not res.ok:
            return Outcome(
                step=step.name,
                target=name,
                status=Status.FAILED,
                started_at=started,
                detail=f"find exited {res.exit_status}: {res.stderr.strip()[-200:]}",
            )
        if stale:
            return Outcome(
                step=step.name,
                target=name,
                status=Status.FAILED,
                started_at=started,
                detail=f"{len(stale)} log(s) not rotated: {', '.join(stale[:3])}",
                evidence={"stale": stale[:50]},
            )
        return Outcome(
            step=step.name,
            target=name,
            status=Status.OK,
            started_at=started,
            detail=f"{host.log_dir}: rotated",
        )

    step.note = "" if targets else "no host names a log_dir"
    return await step.fan_out(ctx, targets, probe)
