"""``appctl start|stop|status <app>``: an init-script-like controller for lab apps.

Run on a lab host as ``bin/appctl`` (a shim that passes ``--root``). Exit codes follow
the LSB init-script conventions:

========= ===========================================================================
start     0 started or already running; 1 failed (stderr says why); 5 unknown app
stop      0 stopped or not running; 1 could not stop; 5 unknown app
status    0 running; 1 dead but pid file exists; 3 not running; 4 unknown app
========= ===========================================================================

``status NAME`` is answered by the ``bin/appctl`` shell shim from the pid file and the
process table whenever it can; ``status -l NAME`` always comes here and adds the version
the app's health endpoint reports.

``start`` launches ``python -m openbell.lab.app`` detached (its own session, output to the
app's log), writes the pid file, and waits (bounded by ``--timeout``) until the health
endpoint answers. Fault ``app_fails_to_start`` (optional params ``reason``) makes it
refuse with exit 1; fault ``dies_after_stop`` on the host takes the host down right after
a stop. A start and a stop of the same app never overlap (a lock file).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openbell.lab.faults import FaultBook
from openbell.lab.paths import pid_alive, read_pid, terminate

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
NOT_RUNNING = 3


class AppControl:
    """One app on one lab host: its manifest, pid file, log and faults.

    Args:
        root: the host root (``.../lab/hosts/<host>``).
        app: the app name.
        manifest: the app's manifest (``etc/apps/<app>.json``).
    """

    def __init__(self, root: Path, app: str, manifest: dict[str, Any]) -> None:
        self.root = root
        self.app = app
        self.manifest = manifest
        self.pidfile = root / manifest["pidfile"]
        self.logfile = root / manifest["log"]
        self.book = FaultBook(root.parents[1] / "faults.json")

    def running_pid(self) -> int | None:
        """The pid of the running app, or None (a stale pid file does not count)."""
        pid = read_pid(self.pidfile)
        if pid and pid_alive(pid, "openbell.lab.app") and _cmdline_has(pid, self.app):
            return pid
        return None

    def health(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """The health document, or None if it does not answer 200."""
        port = self.manifest.get("port")
        if not port:
            return None
        conn = http.client.HTTPConnection(self.manifest["address"], int(port), timeout=timeout_s)
        try:
            conn.request("GET", self.manifest.get("health_path") or "/health")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                return None
            doc = json.loads(body)
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the app's lock file (serialises concurrent start/stop)."""
        lock = self.pidfile.with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def start(self, timeout_s: float) -> int:
        with self.locked():
            pid = self.running_pid()
            if pid:
                print(f"{self.app}: already running (pid {pid})")
                return 0
            fault = self.book.get("app_fails_to_start", self.app)
            if fault:
                reason = fault.params.get("reason") or "config error: risk limits file unreadable"
                self._log_line(f"refused to start: {reason}")
                print(f"{self.app}: refused to start: {reason}", file=sys.stderr)
                return 1
            proc = self._spawn()
            self.pidfile.write_text(f"{proc.pid}\n")
            return self._await_health(proc, timeout_s)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("ab") as log:
            return subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "openbell.lab.app",
                    "--root",
                    str(self.root),
                    "--app",
                    self.app,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
                close_fds=True,
            )

    def _await_health(self, proc: subprocess.Popen[bytes], timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                self.pidfile.unlink(missing_ok=True)
                reason = self._last_log_line() or f"exited with status {proc.returncode}"
                print(f"{self.app}: refused to start: {reason}", file=sys.stderr)
                return 1
            left = max(0.05, deadline - time.monotonic())
            probe_s = min(left, 0.25 + self.book.latency_s())  # latency slows answers only
            doc = self.health(timeout_s=probe_s) if self.manifest.get("port") else {}
            if doc is not None:
                version = (doc or {}).get("version", self.manifest["version"])
                print(
                    f"{self.app}: started (pid {proc.pid}, version {version}, "
                    f"port {self.manifest.get('port')})"
                )
                return 0
            if time.monotonic() >= deadline:
                terminate(proc.pid, "openbell.lab.app", timeout_s=5.0)
                self.pidfile.unlink(missing_ok=True)
                print(
                    f"{self.app}: no health answer within {timeout_s:g} s; stopped it",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.05)

    def stop(self, timeout_s: float) -> int:
        with self.locked():
            pid = self.running_pid()
            if pid is None:
                self.pidfile.unlink(missing_ok=True)
                print(f"{self.app}: not running")
                return 0
            terminate(pid, "openbell.lab.app", timeout_s=timeout_s)
            if pid_alive(pid, "openbell.lab.app"):
                print(f"{self.app}: could not stop pid {pid}", file=sys.stderr)
                return 1
            self.pidfile.unlink(missing_ok=True)
            print(f"{self.app}: stopped (pid {pid})")
            self._die_if_asked()
            return 0

    def _die_if_asked(self) -> None:
        """Fault ``dies_after_stop`` on this host: the host goes down now (used up once)."""
        host = self.root.name
        if self.book.get("dies_after_stop", host):
            self.book.remove("dies_after_stop", host)
            self.book.add("host_down", host, reason=f"died after stopping {self.app}")

    def status(self) -> int:
        pid = self.running_pid()
        if pid is None:
            if self.pidfile.exists():
                print(f"{self.app}: dead but pid file exists ({self.pidfile.name})")
                return 1
            print(f"{self.app}: not running")
            return NOT_RUNNING
        doc = self.health(timeout_s=2.0 + self.book.latency_s())
        if doc is None and self.manifest.get("port"):
            print(f"{self.app}: running (pid {pid}), health endpoint not answering")
            return 0
        version = (doc or {}).get("version", self.manifest["version"])
        print(
            f"{self.app}: running (pid {pid}, version {version}, port {self.manifest.get('port')})"
        )
        return 0

    def _log_line(self, text: str) -> None:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.logfile.open("a") as fh:
            fh.write(f"{stamp} ERROR {self.app}: {text}\n")

    def _last_log_line(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].removeprefix(f"{self.app}: ") if lines else ""


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return text.encode() in args


def _unknown(root: Path, app: str, action: str) -> int:
    known = sorted(p.stem for p in (root / "etc" / "apps").glob("*.json"))
    print(
        f"appctl: unknown app {app!r} on {root.name}; known: {', '.join(known) or '(none)'}",
        file=sys.stderr,
    )
    return 4 if action == "status" else 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appctl", description="Start, stop or query a lab app.")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("HOME", ".")),
        help="the host root (the shim passes it)",
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="status: also ask the app's health endpoint (the shim answers plain status)",
    )
    parser.add_argument("app")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds to wait (start {START_TIMEOUT_S:g}, stop {STOP_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    manifest_path = root / "etc" / "apps" / f"{args.app}.json"
    if not manifest_path.is_file():
        return _unknown(root, args.app, args.action)
    ctl = AppControl(root, args.app, json.loads(manifest_path.read_text()))
    if args.action == "start":
        return ctl.start(args.timeout or START_TIMEOUT_S)
    if args.action == "stop":
        return ctl.stop(args.timeout or STOP_TIMEOUT_S)
    return ctl.status()


if __name__ == "__main__":
    sys.exit(main())
