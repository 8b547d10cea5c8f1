"""End-of-day archive: logs, order records and FIX stores of the day, per host.

For each host with an ``archive_dir``, the day's files are those named ``*-YYYYMMDD*``
in its ``log_dir`` (rotated logs), ``order_records_dir`` (order records) and
``fix_store_dir`` (the FIX store kept for the day). ``ensure_day_archived`` makes sure
they end up in ``<archive_dir>/<trade date>/<host>-YYYYMMDD.tar.gz``, next to
``.sha256`` (the archive's digest, ``sha256sum -c`` format) and ``.manifest`` (each
file's digest), and that the originals are removed only once the archive's checksum
was verified on the host. The records themselves are kept at least five years by
whatever holds ``archive_dir`` (a WORM mount, an object store sync), not by openbell.

State first, then act on the difference:

============================== ===============================================
the host has                   the step
============================== ===============================================
no files, no archive           ok: nothing to archive
files, no verified archive     writes, verifies, removes the files: changed
a verified archive, no files   ok: already archived
a verified archive, and files  removes those in the manifest with the same
that it holds                  sha256 (a run stopped before removing): changed
files the archive lacks        failed: they appeared after it was written
============================== ===============================================

End of day checks disk use again once the archive is written (``check_disk`` as a step
of its own).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from openbell import chaos
from openbell.errors import SshError
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction
from openbell.runbooks.schema import Host
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, fan_out, in_thread


@dataclass(frozen=True)
class ArchivePlan:
    """Where one host's day goes."""

    host: str
    sources: list[str]
    pattern: str
    directory: str
    archive: str

    @property
    def checksum_file(self) -> str:
        return f"{self.archive}.sha256"

    @property
    def manifest_file(self) -> str:
        return f"{self.archive}.manifest"

    @property
    def partial(self) -> str:
        return f"{self.archive}.part"


def archive_plan(name: str, host: Host, day: date) -> ArchivePlan | None:
    """The host's archive for the day, or None when it has no ``archive_dir``.

    Example:
        >>> h = Host(region="amer", address="127.0.0.1", user="u", log_dir="var/log",
        ...          archive_dir="var/archive")
        >>> archive_plan("amer-app1", h, date(2026, 11, 27)).archive
        'var/archive/2026-11-27/amer-app1-20261127.tar.gz'
    """
    if not host.archive_dir:
        return None
    ymd = day.strftime("%Y%m%d")
    sources = [d for d in (host.log_dir, host.order_records_dir, host.fix_store_dir) if d]
    directory = f"{host.archive_dir.rstrip('/')}/{day.isoformat()}"
    return ArchivePlan(
        host=name,
        sources=sources,
        pattern=f"*-{ymd}*",
        directory=directory,
        archive=f"{directory}/{name}-{ymd}.tar.gz",
    )


def find_argv(plan: ArchivePlan) -> list[str]:
    """List the day's files (not hidden ones, not our partial archives)."""
    return [
        "find",
        *plan.sources,
        "-maxdepth",
        "2",
        "-type",
        "f",
        "-name",
        plan.pattern,
        "!",
        "-name",
        ".*",
    ]


def parse_sha256sum(stdout: str) -> dict[str, str]:
    """``sha256sum`` output as {path: digest}.

    Example:
        >>> parse_sha256sum("ab" * 32 + "  var/log/a.log-20261127\\n")["var/log/a.log-20261127"][:4]
        'abab'
    """
    out = {}
    for line in stdout.splitlines():
        digest, sep, path = line.lstrip("\\").partition("  ")
        if sep and len(digest) == 64:
            out[path.strip()] = digest
    return out


class _Host:
    """The SSH commands of one host's archive, each checked."""

    def __init__(self, ctx: RunContext, plan: ArchivePlan) -> None:
        self.ctx = ctx
        self.plan = plan

    async def run(self, argv: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> str:
        res = await in_thread(self.ctx, self.ctx.ssh.run, self.plan.host, argv)
        chaos.point(f"archive:{self.plan.host}:{argv[0]}")
        if res.exit_status not in ok_codes:
            raise SshError(self.plan.host, " ".join(argv), f"exit {res.exit_status}: {res.tail()}")
        return str(res.stdout)

    async def sha256(self, paths: list[str]) -> dict[str, str]:
        if not paths:
            return {}
        return parse_sha256sum(await self.run(["sha256sum", "--", *paths]))

    async def day_files(self) -> list[str]:
        # find exits 1 when a source directory is missing; the rest is still listed.
        out = await self.run(find_argv(self.plan), ok_codes=(0, 1))
        return sorted(ln.strip() for ln in out.splitlines() if ln.strip())

    async def verified_archive(self) -> tuple[str, dict[str, str], bool] | None:
        """(digest, manifest, published now) of an archive whose sha256 matches its .sha256.

        A run stopped between writing ``.sha256`` and publishing the ``.part`` file leaves
        a verified partial archive: it is published here (``mv``), not written again.
        None when there is no archive that verifies.
        """
        p = self.plan
        recorded = parse_sha256sum(await self.run(["cat", "--", p.checksum_file], ok_codes=(0, 1)))
        digest = recorded.get(Path(p.archive).name)
        if digest is None:
            return None
        published = False
        if not await self.exists(p.archive):
            staged = await self.sha256([p.partial]) if await self.exists(p.partial) else {}
            if staged.get(p.partial) != digest:
                return None
            await self.run(["mv", "-f", "--", p.partial, p.archive])
            published = True
        actual = await self.sha256([p.archive])
        if actual.get(p.archive) != digest:
            return None
        manifest = parse_sha256sum(await self.run(["cat", "--", p.manifest_file], ok_codes=(0, 1)))
        return digest, manifest, published

    async def exists(self, path: str) -> bool:
        res = await in_thread(self.ctx, self.ctx.ssh.run, self.plan.host, ["test", "-f", path])
        return bool(res.ok)

    async def put_text(self, remote: str, text: str) -> str:
        with tempfile.TemporaryDirectory(prefix="openbell-archive-") as tmp:
            local = Path(tmp) / Path(remote).name
            local.write_text(text)
            return str(await in_thread(self.ctx, self.ctx.ssh.put, self.plan.host, local, remote))


async def _write_archive(h: _Host, files: list[str]) -> tuple[str, dict[str, str], bool]:
    """tar, check the listing and the checksum, record them, then publish.

    The ``.manifest`` and ``.sha256`` are written before the ``mv`` that publishes the
    archive, so a run stopped at any point leaves a state the next one can finish
    without writing the archive twice.
    """
    p = h.plan
    manifest = await h.sha256(files)
    if sorted(manifest) != files:
        raise SshError(p.host, "sha256sum", f"no checksum for {sorted(set(files) - set(manifest))}")
    await h.run(["mkdir", "-p", "--", p.directory])
    await h.run(["tar", "-czf", p.partial, *files])
    listed = sorted((await h.run(["tar", "-tzf", p.partial])).split())
    if listed != files:
        raise SshError(p.host, f"tar -tzf {p.partial}", f"lists {listed}, expected {files}")
    digest = (await h.sha256([p.partial]))[p.partial]
    await h.put_text(p.manifest_file, "".join(f"{manifest[f]}  {f}\n" for f in files))
    await h.put_text(p.checksum_file, f"{digest}  {Path(p.archive).name}\n")
    await h.run(["mv", "-f", "--", p.partial, p.archive])
    return digest, manifest, True


def plan_archive(p: PlanContext) -> list[PlannedAction]:
    actions = []
    for name, host in p.hosts():
        ap = archive_plan(name, host, p.trade_date)
        if ap is None:
            continue
        actions += [
            PlannedAction(target=name, action=p.ssh(name, find_argv(ap))),
            PlannedAction(
                target=name,
                action=f"if not archived: tar -czf {ap.partial} <files>, check tar -tzf and "
                f"sha256sum, write {ap.manifest_file}, mv to {ap.archive}, "
                f"write {ap.checksum_file}",
            ),
            PlannedAction(
                target=name, action="after the archive's sha256 is verified: rm -f <archived files>"
            ),
        ]
    return actions


def _plans(ctx: RunContext) -> list[tuple[str, ArchivePlan]]:
    return [
        (n, plan)
        for n, h in sorted(ctx.estate.hosts_in(ctx.region).items())
        if (plan := archive_plan(n, h, ctx.trade_date)) is not None
    ]


async def hosts_to_archive(ctx: RunContext, step: StepRun) -> Changes:
    """The hosts with files of the day not yet archived (or archived, not yet removed)."""

    async def probe(name: str, plan: ArchivePlan) -> Outcome:
        files = await _Host(ctx, plan).day_files()
        return Outcome(step=step.name, target=name, status=Status.CHANGED if files else Status.OK)

    found = await fan_out(step.name, _plans(ctx), probe)
    todo = [o.target for o in found if o.status == Status.CHANGED]
    return Changes(
        targets=todo,
        lines=[f"archive the files of {ctx.trade_date} on {t}, then remove them" for t in todo],
        summary=f"archive and remove the day's files on {len(todo)} host(s) in "
        f"{ctx.region.upper()}",
    )


async def ensure_day_archived(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """The day's logs, order records and FIX stores archived per host, then removed."""
    plans = _plans(ctx)

    async def probe(name: str, plan: ArchivePlan) -> Outcome:
        started = utcnow()
        h = _Host(ctx, plan)
        files = await h.day_files()
        found = await h.verified_archive()
        evidence: dict[str, Any] = {"archive": plan.archive, "sources": plan.sources}
        done = ""
        if found is None:
            if not files:
                return Outcome(
                    step=step.name,
                    target=name,
                    status=Status.OK,
                    started_at=started,
                    detail=f"nothing to archive for {ctx.trade_date}",
                    evidence=evidence,
                )
            found = await _write_archive(h, files)
            done = f"archived {len(files)} file(s)"
        digest, manifest, published = found
        if published and not done:
            done = "published the archive a stopped run had written and verified"
        evidence |= {"sha256": digest, "files": manifest}
        strangers = [f for f in files if f not in manifest]
        if strangers:
            evidence["not_archived"] = strangers
            return Outcome(
                step=step.name,
                target=name,
                status=Status.FAILED,
                started_at=started,
                detail=f"{len(strangers)} file(s) of {ctx.trade_date} appeared after "
                f"{plan.archive} was written: {', '.join(strangers[:3])}",
                evidence=evidence,
            )
        removable = await _unchanged(h, files, manifest)
        if removable:
            # The archive was verified above (sha256 on the host against .sha256).
            await h.run(["rm", "-f", "--", *removable])
            evidence["removed"] = removable
            done = (done + "; " if done else "") + f"removed {len(removable)} archived file(s)"
        return Outcome(
            step=step.name,
            target=name,
            status=Status.CHANGED if done else Status.OK,
            started_at=started,
            detail=(done or "already archived")
            + f": {plan.archive} ({len(manifest)} files, sha256 {digest[:12]}…, verified)",
            evidence=evidence,
        )

    step.note = "" if plans else "no host of the region has an archive_dir"
    return await step.fan_out(ctx, plans, probe)


async def _unchanged(h: _Host, files: list[str], manifest: dict[str, str]) -> list[str]:
    """Files still there whose content is what the archive holds (safe to remove)."""
    if not files:
        return []
    now = await h.sha256(files)
    changed = [f for f in files if now.get(f) != manifest.get(f)]
    if changed:
        raise SshError(
            h.plan.host,
            "compare with the manifest",
            f"{len(changed)} archived file(s) changed since: {', '.join(changed[:3])}; "
            "not removing them",
        )
    return files
