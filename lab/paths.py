"""Where the lab keeps its files, and small process helpers every lab module shares.

Layout under ``OPENBELL_HOME/lab/``::

    lab.pid  lab.log  lab.json     the supervisor's pid, log and state (endpoints, ready)
    faults.json                    the FaultBook shared by every component
    effects.jsonl                  every side effect the lab applied (openbell.lab.effects)
    hostkeys/<host>                each SSH host's ed25519 key (kept across restarts)
    hosts/<host>/                  each host's root: bin/ etc/apps/ var/log var/run ...

This module imports only the standard library (and ``lab.faults``) so that the host
tools (``appctl``, ``chronyc``) start quickly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from openbell.errors import OpenbellError
from openbell.lab.faults import FaultBook


class LabError(OpenbellError):
    """The lab could not be started, stopped or configured (the message says why)."""


@dataclass(frozen=True)
class LabPaths:
    """The lab's files for one ``OPENBELL_HOME``.

    Example:
        >>> LabPaths(Path("/tmp/ob")).host_root("emea-app1")
        PosixPath('/tmp/ob/lab/hosts/emea-app1')
    """

    home: Path

    @classmethod
    def of(cls, home: Path | str | None = None) -> LabPaths:
        """Paths for ``home``, or for the settings' ``OPENBELL_HOME`` when None."""
        if home is None:
            from openbell.settings import get_settings

            return cls(get_settings().home)
        return cls(Path(home).expanduser().resolve())

    @property
    def root(self) -> Path:
        return self.home / "lab"

    @property
    def pid_file(self) -> Path:
        return self.root / "lab.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "lab.log"

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def faults_file(self) -> Path:
        return self.root / "faults.json"

    @property
    def hostkeys_dir(self) -> Path:
        return self.root / "hostkeys"

    @property
    def hosts_dir(self) -> Path:
        return self.root / "hosts"

    def host_root(self, host: str) -> Path:
        """The root directory of one simulated host."""
        return self.hosts_dir / host

    @property
    def effects_file(self) -> Path:
        return self.root / "effects.jsonl"

    def fault_book(self) -> FaultBook:
        return FaultBook(self.faults_file)


def require_loopback(address: str, what: str) -> None:
    """Refuse to serve anything on a non-loopback address.

    Raises:
        LabError: naming ``what`` (e.g. ``hosts.emea-app1``) and the address.
    """
    if address == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LabError(f"{what}: the lab listens on loopback addresses only, not {address!r}")


def pid_alive(pid: int, needle: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, optionally running ``needle``.

    Args:
        pid: the process id.
        needle: a substring its command line must contain (guards against a recycled
            pid), e.g. ``"openbell.lab.app"``. Checked only where ``/proc`` exists.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return needle is None
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    return needle is None or needle in cmdline


def terminate(pid: int, needle: str | None = None, timeout_s: float = 10.0) -> bool:
    """SIGTERM a process, wait for it, SIGKILL it if it lingers.

    Returns:
        True if the process was alive (and is now gone), False if there was nothing to stop.
    """
    if not pid_alive(pid, needle):
        return False
    _signal(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout_s):
        _signal(pid, signal.SIGKILL)
        wait_gone(pid, 5.0)
    return True


def terminate_all(pids: list[int], needle: str | None = None, timeout_s: float = 10.0) -> list[int]:
    """Like :func:`terminate` for many processes at once (signal all, then wait).

    Returns:
        The pids that were alive and are now gone.
    """
    alive = [p for p in pids if pid_alive(p, needle)]
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    pending = list(alive)
    while pending and time.monotonic() < deadline:
        for pid in pending:
            _reap(pid)
        pending = [p for p in pending if pid_alive(p)]
        if pending:
            time.sleep(0.02)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        wait_gone(pid, 5.0)
    return alive


def wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` is gone (reaping it if it is our child); True if it went."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pid)
        if not pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None if it is missing or garbled."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
