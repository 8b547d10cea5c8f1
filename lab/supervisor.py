"""Run the whole lab in one asyncio process, and start/stop/inspect it from outside.

Inside the lab process (``python -m openbell.lab.run --estate PATH``), :func:`serve` starts every
component of the estate — SSH hosts, the OMS databases and their admin APIs, the feed
servers and the FIX venue (``lab.venue.start_fix_venue``, if present) — then watches
the fault file: ``host_down`` opens/closes listeners, ``missing_refdata`` deletes/restores
rows and the trade breaks rewrite the days they fall on, as faults come and go. It
rotates host logs daily and stops cleanly on SIGTERM.

Outside, :func:`up`, :func:`down` and :func:`status` are the API the CLI, the tests and
the benchmarks use. One lab runs per ``OPENBELL_HOME``; its pid, log and state
(endpoints, readiness) are files under ``OPENBELL_HOME/lab/``.

Example:
    >>> st = up("runbooks/lab.yaml")                   # doctest: +SKIP
    >>> [e.where for e in st.endpoints if e.kind == "ssh"][:1]   # doctest: +SKIP
    ['127.0.0.1:42201']
    >>> down()                                          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openbell.lab import oms
from openbell.lab.effects import EffectsLog
from openbell.lab.faults import Fault, FaultBook
from openbell.lab.feed import FeedServers
from openbell.lab.hostroot import rotate_logs
from openbell.lab.hosts import HostFleet
from openbell.lab.oms_admin import OmsAdminServers
from openbell.lab.paths import LabError, LabPaths, pid_alive, read_pid, terminate, terminate_all
from openbell.runbooks.schema import Estate

log = logging.getLogger(__name__)

LAB_NEEDLE = "-m openbell.lab"  # in the lab process's command line (``-m openbell.lab.run``)
APP_NEEDLE = "openbell.lab.app"
WATCH_S = 0.1
APPLIED_FILE = "faults.applied"
ROTATE_EVERY_S = 60.0
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}  # kept so they are reaped, never leaked


@dataclass(frozen=True)
class Endpoint:
    """Something the lab listens on.

    Attributes:
        name: the estate name (host, FIX session, ``feeds@address:port`` or
            ``oms-admin@address:port``).
        kind: ``ssh``, ``feed``, ``oms_admin``, ``artifacts`` or ``fix``.
        served: False when the lab cannot serve it (e.g. no FIX venue module yet).
        listening: whether a TCP connect succeeded (None when not probed).
    """

    name: str
    kind: str
    address: str
    port: int
    served: bool = True
    listening: bool | None = None

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class LabStatus:
    """What ``openbell lab status`` shows."""

    home: Path
    running: bool
    pid: int | None = None
    estate: str | None = None
    started_at: str | None = None
    ready: bool = False
    endpoints: tuple[Endpoint, ...] = ()
    faults: tuple[Fault, ...] = ()
    log: Path | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for ``--json``)."""
        doc = asdict(self)
        doc["home"] = str(self.home)
        doc["log"] = str(self.log) if self.log else None
        doc["faults"] = [f.to_json() for f in self.faults]
        return doc


# ---- outside: up / down / status ------------------------------------------------------------
def up(estate_path: str | Path, home: str | Path | None = None, wait_s: float = 20.0) -> LabStatus:
    """Start the lab for an estate, detached, and wait until every endpoint listens.

    Idempotent: if the lab already runs this estate, its status is returned.

    Args:
        estate_path: the estate YAML.
        home: the ``OPENBELL_HOME`` (default: the settings').
        wait_s: how long to wait for readiness.

    Raises:
        LabError: the lab runs another estate, exited early, or was not ready in time
            (with the tail of ``lab.log``).
    """
    paths = LabPaths.of(home)
    estate_file = Path(estate_path).expanduser().resolve()
    if not estate_file.is_file():
        raise LabError(f"no estate file {estate_file}")
    with _locked(paths):
        return _up(paths, estate_file, wait_s)


def _up(paths: LabPaths, estate_file: Path, wait_s: float) -> LabStatus:
    current = _settled_status(paths, wait_s)
    if current.running:
        if current.estate == str(estate_file):
            return status(paths.home)
        raise LabError(
            f"the lab in {paths.root} already runs {current.estate} (pid {current.pid}); "
            "stop it first (openbell lab down)"
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state_file.unlink(missing_ok=True)
    offset = paths.log_file.stat().st_size if paths.log_file.exists() else 0
    proc = _spawn(paths, estate_file)
    paths.pid_file.write_text(f"{proc.pid}\n")
    log.info("lab starting (pid %d) for %s in %s", proc.pid, estate_file, paths.root)
    return _await_ready(paths, proc, wait_s, offset)


def down(home: str | Path | None = None, timeout_s: float = 10.0) -> list[int]:
    """Stop the lab process and every app it started. Idempotent.

    Returns:
        The pids that were stopped (the lab's first, if it was running).
    """
    paths = LabPaths.of(home)
    with _locked(paths):
        return _down(paths, timeout_s)


def _down(paths: LabPaths, timeout_s: float) -> list[int]:
    stopped: list[int] = []
    pid = read_pid(paths.pid_file)
    if pid and terminate(pid, LAB_NEEDLE, timeout_s):
        stopped.append(pid)
        log.info("lab stopped (pid %d)", pid)
    if pid in _SPAWNED:
        _SPAWNED.pop(pid).wait(timeout=timeout_s)
    pidfiles = sorted(paths.hosts_dir.glob("*/var/run/*.pid"))
    app_pids = [p for p in (read_pid(f) for f in pidfiles) if p]
    stopped += terminate_all(app_pids, APP_NEEDLE, timeout_s)
    for f in pidfiles:
        f.unlink(missing_ok=True)
    for f in (paths.pid_file, paths.state_file, paths.root / APPLIED_FILE):
        f.unlink(missing_ok=True)
    return stopped


def status(home: str | Path | None = None, probe: bool = True) -> LabStatus:
    """The lab's state; with ``probe``, each endpoint is tried with a TCP connect."""
    paths = LabPaths.of(home)
    pid = read_pid(paths.pid_file)
    faults = tuple(paths.fault_book().active())
    if not (pid and pid_alive(pid, LAB_NEEDLE)):
        return LabStatus(paths.home, running=False, faults=faults, log=paths.log_file)
    state = _read_state(paths)
    if state.get("pid") != pid:
        state = {}
    endpoints = tuple(Endpoint(**e) for e in state.get("endpoints", []))
    if probe:
        endpoints = _probe(endpoints)
    return LabStatus(
        home=paths.home,
        running=True,
        pid=pid,
        estate=state.get("estate"),
        started_at=state.get("started_at"),
        ready=bool(state.get("ready")),
        endpoints=endpoints,
        faults=faults,
        log=paths.log_file,
    )


def wait_faults_applied(home: str | Path | None = None, timeout_s: float = 10.0) -> bool:
    """Wait until the running lab has acted on the current fault file.

    Faults read per request (feeds, apps, chronyc, slow/latency) act at once; this is
    for those the supervisor applies: ``host_down`` listeners, ``missing_refdata`` and
    the trade breaks (``missing_fill``, ``qty_mismatch``, ``price_mismatch``,
    ``duplicate_exec_id``, ``order_left_open``).

    Returns:
        True when applied (or no lab runs), False on timeout.
    """
    paths = LabPaths.of(home)
    deadline = time.monotonic() + timeout_s
    while True:
        pid = read_pid(paths.pid_file)
        if not (pid and pid_alive(pid, LAB_NEEDLE)):
            return True
        try:
            done = (paths.root / APPLIED_FILE).read_text().strip()
        except OSError:
            done = ""
        if done == str(_mtime_ns(paths.faults_file)):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(paths: LabPaths) -> Iterator[None]:
    """Serialise up/down on one home across processes."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with (paths.root / "lab.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _settled_status(paths: LabPaths, wait_s: float) -> LabStatus:
    """The status, after waiting (bounded) for a lab that is still starting up."""
    deadline = time.monotonic() + wait_s
    current = status(paths.home, probe=False)
    while current.running and not current.ready and time.monotonic() < deadline:
        time.sleep(0.05)
        current = status(paths.home, probe=False)
    if current.running and not current.ready:
        raise LabError(
            f"the lab in {paths.root} (pid {current.pid}) is running but never got ready"
        )
    return current


def _spawn(paths: LabPaths, estate_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENBELL_HOME": str(paths.home)}
    argv = [
        sys.executable,
        "-m",
        "openbell.lab.run",
        "--estate",
        str(estate_file),
        "--home",
        str(paths.home),
    ]
    from openbell.deployments.launcher import spawn_detached

    proc = spawn_detached(argv, log=paths.log_file, env=env, cwd=paths.root)
    _SPAWNED[proc.pid] = proc
    return proc


def _await_ready(
    paths: LabPaths, proc: subprocess.Popen[bytes], wait_s: float, offset: int
) -> LabStatus:
    deadline = time.monotonic() + wait_s
    while True:
        state = _read_state(paths)
        if state.get("pid") == proc.pid and state.get("ready"):
            return status(paths.home)
        rc = proc.poll()
        if rc is not None:
            _SPAWNED.pop(proc.pid, None)
            paths.pid_file.unlink(missing_ok=True)
            raise LabError(
                f"the lab exited with status {rc} before it was ready:\n{_tail(paths, offset)}"
            )
        if time.monotonic() >= deadline:
            down(paths.home)
            raise LabError(
                f"the lab was not ready after {wait_s:g} s; stopped it:\n{_tail(paths, offset)}"
            )
        time.sleep(0.05)


def _tail(paths: LabPaths, offset: int, lines: int = 25) -> str:
    try:
        with paths.log_file.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(log is empty)"


def _read_state(paths: LabPaths) -> dict[str, Any]:
    try:
        doc = json.loads(paths.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _probe(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    def one(e: Endpoint) -> Endpoint:
        try:
            with socket.create_connection((e.address, e.port), timeout=0.5):
                return replace(e, listening=True)
        except OSError:
            return replace(e, listening=False)

    if not endpoints:
        return endpoints
    with ThreadPoolExecutor(max_workers=min(32, len(endpoints))) as pool:
        return tuple(pool.map(one, endpoints))


# ---- inside: the lab process -----------------------------------------------------------------
@dataclass
class Lab:
    """Every running component of one estate's lab."""

    estate: Estate
    paths: LabPaths
    book: FaultBook
    hosts: HostFleet | None = None
    feeds: FeedServers | None = None
    admin: OmsAdminServers | None = None
    fix_servers: list[Any] | None = field(default=None)
    artifacts: Any = None

    async def start(self) -> None:
        """Bring every component up; the listeners are bound when this returns.

        Raises:
            LabError: a component cannot start (a port in use, a bad estate entry).
        """
        faults = self.book.active()
        self.hosts = await asyncio.to_thread(HostFleet.prepare, self.estate, self.paths, self.book)
        self.hosts.open(faults)
        await asyncio.to_thread(oms.seed, self.estate, paths=self.paths, book=self.book)
        await asyncio.to_thread(oms.apply_faults, self.estate, self.book, paths=self.paths)
        self.feeds = FeedServers(self.estate, self.book)
        await self.feeds.start()
        self.admin = OmsAdminServers(self.estate, self.book, EffectsLog(self.paths.effects_file))
        await self.admin.start()
        self.fix_servers = await _start_fix_venue(self.estate, self.book)
        if self.estate.artifacts is not None:
            from openbell.lab.artifacts import ArtifactServer

            self.artifacts = ArtifactServer(self.estate, self.book)
            await self.artifacts.start()
        await asyncio.to_thread(self.rotate_logs)

    def endpoints(self) -> list[Endpoint]:
        out = [Endpoint(n, "ssh", h.address, h.port) for n, h in self.estate.hosts.items()]
        if self.feeds:
            out += [Endpoint(f"feeds@{a}:{p}", "feed", a, p) for a, p in self.feeds.endpoints]
        if self.admin:
            out += [
                Endpoint(f"oms-admin@{a}:{p}", "oms_admin", a, p) for a, p in self.admin.endpoints
            ]
        if self.artifacts is not None:
            a = self.artifacts
            out.append(Endpoint(f"artifacts@{a.address}:{a.port}", "artifacts", a.address, a.port))
        seen: set[tuple[str, int]] = set()
        for name, s in self.estate.fix_sessions.items():
            if (s.address, s.port) not in seen:
                seen.add((s.address, s.port))
                out.append(
                    Endpoint(name, "fix", s.address, s.port, served=self.fix_servers is not None)
                )
        return out

    async def watch(self, stop: asyncio.Event) -> None:
        """Follow the fault file and rotate logs until ``stop`` is set.

        After each successful pass it records the fault file's mtime in
        ``faults.applied``, which :func:`wait_faults_applied` waits for.
        """
        applied: int | None = -1
        last_rotate = time.monotonic()
        ticks = 0
        while not stop.is_set():
            mtime = _mtime_ns(self.paths.faults_file)
            ticks += 1
            if mtime != applied:
                if await self._apply(self.book.active()):
                    applied = mtime
                    _write_atomic(self.paths.root / APPLIED_FILE, str(mtime))
            elif ticks % 20 == 0 and self.hosts:
                self.hosts.sync(self.book.active())  # retry listeners that could not reopen
            if time.monotonic() - last_rotate >= ROTATE_EVERY_S:
                last_rotate = time.monotonic()
                await asyncio.to_thread(self.rotate_logs)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_S)

    async def _apply(self, faults: list[Fault]) -> bool:
        assert self.hosts is not None
        self.hosts.sync(faults)
        try:
            await asyncio.to_thread(oms.apply_faults, self.estate, self.book, paths=self.paths)
        except Exception:
            log.warning("could not apply database faults (will retry)", exc_info=True)
            return False
        return True

    def rotate_logs(self) -> None:
        for name, host in self.estate.hosts.items():
            tz = self.estate.region(host.region).timezone
            rotate_logs(self.paths.host_root(name), host.log_dir or "var/log", tz)

    async def aclose(self) -> None:
        if self.hosts:
            await self.hosts.aclose()
        if self.feeds:
            await self.feeds.aclose()
        if self.admin:
            await self.admin.aclose()
        if self.artifacts is not None:
            await self.artifacts.aclose()
        for server in self.fix_servers or []:
            server.close()
        for server in self.fix_servers or []:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)


async def _start_fix_venue(estate: Estate, book: FaultBook) -> list[Any] | None:
    """Start the FIX venue if ``lab.venue.start_fix_venue`` exists, else None."""
    if not estate.fix_sessions:
        return []
    try:
        from openbell.lab import venue
    except ModuleNotFoundError as exc:
        if exc.name != "openbell.lab.venue":
            raise
        log.warning("openbell.lab.venue is not there yet; FIX sessions will not answer")
        return None
    start = getattr(venue, "start_fix_venue", None)
    if start is None:
        log.warning("openbell.lab.venue has no start_fix_venue yet; FIX sessions will not answer")
        return None
    return list(await start(estate, book))


async def serve(estate: Estate, estate_file: Path, paths: LabPaths) -> None:
    """Run the lab until SIGTERM/SIGINT; write ``lab.json`` once every endpoint listens."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lab = Lab(estate, paths, paths.fault_book())
    started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        await lab.start()
        _write_state(paths, estate_file, started_at, lab.endpoints())
        served = [e for e in lab.endpoints() if e.served]
        log.info("lab ready: %d endpoints for %s", len(served), estate_file)
        await lab.watch(stop)
        log.info("lab stopping")
    finally:
        await lab.aclose()
        state = _read_state(paths)
        if state.get("pid") == os.getpid():
            paths.state_file.unlink(missing_ok=True)


def _write_state(
    paths: LabPaths, estate_file: Path, started_at: str, endpoints: list[Endpoint]
) -> None:
    doc = {
        "pid": os.getpid(),
        "estate": str(estate_file),
        "home": str(paths.home),
        "started_at": started_at,
        "ready": True,
        "endpoints": [asdict(e) for e in endpoints],
    }
    _write_atomic(paths.state_file, json.dumps(doc, indent=2))
