"""One way to start a detached process, and the Prefect server, for the CLI, tests and benchmarks.

A detached process runs in a session of its own (``start_new_session``), reads nothing
(stdin is ``/dev/null``) and writes stdout and stderr to one log file, so that:

- it outlives the command that started it (``openbell`` exits, the Prefect server stays
  up for the UI), and a Ctrl-C in the terminal does not reach it;
- stopping it stops everything it started (``stop_group`` signals the whole session:
  a worker's flow-run subprocesses, the Prefect server's API and services).

``start_prefect_server`` is ``prefect server start`` on a loopback port with its database
under the given ``PREFECT_HOME``, analytics off and ``PREFECT_API_URL`` dropped from its
environment (a server never talks to another one); ``wait_healthy`` waits for its
``/health``, and reports the log's tail when it does not come up.

Used by ``deployments.prefect_server`` (the CLI's server), ``tests/fixtures/prefect.py``
(the session's server and the regional workers) and ``benchmarks/sod_scale.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from openbell.errors import OpenbellError


class LaunchError(OpenbellError):
    """A detached process did not start, or did not become healthy in time."""


def spawn_detached(
    argv: list[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    append: bool = True,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, stdout and stderr to ``log``.

    Args:
        argv: the command.
        log: its log file (created with its folder).
        env: its environment (default this process's).
        cwd: its working directory (default the log's folder).
        append: add to the log (default) rather than start it afresh.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab" if append else "wb") as out:
        try:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
                cwd=cwd or log.parent,
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start {argv[0]}: {exc}") from exc


def stop_group(
    proc: subprocess.Popen[bytes] | int, *, term_wait_s: float = 20.0, kill_wait_s: float = 10.0
) -> bool:
    """Stop a detached process and everything it started (its session), then reap it.

    SIGTERM to the group, up to ``term_wait_s`` for the leader to exit, then SIGKILL; the
    group is killed at the end in any case (a worker's flow runs may outlive it by a moment).

    Args:
        proc: the process, or the pid of one this process did not start (read from a file).

    Returns:
        True if it was running.
    """
    pid = proc if isinstance(proc, int) else proc.pid
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        if not isinstance(proc, int):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=kill_wait_s)
        return False
    if not _exited(proc, term_wait_s):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        _exited(proc, kill_wait_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


def _exited(proc: subprocess.Popen[bytes] | int, wait_s: float) -> bool:
    if not isinstance(proc, int):
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(proc, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


# ---- the Prefect server --------------------------------------------------------------------
def prefect_cli() -> Path:
    """The ``prefect`` command beside this interpreter (the venv's)."""
    return Path(sys.executable).with_name("prefect")


def start_prefect_server(
    home: Path, port: int, *, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``prefect server start`` on 127.0.0.1:``port``, detached, its database in ``home``.

    Its log is ``home/server.log`` (appended to).
    """
    prefect = prefect_cli()
    if not prefect.exists():
        raise LaunchError(f"no prefect command at {prefect}: install openbell into this venv")
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        **(extra_env or {}),
    }
    env.pop("PREFECT_API_URL", None)
    argv = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return spawn_detached(argv, log=home / "server.log", env=env, cwd=home)


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when ``{api_url}/health`` answers 200."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(
    api_url: str,
    *,
    wait_s: float = 120.0,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Wait until the server at ``api_url`` answers ``/health``.

    Raises:
        LaunchError: it did not within ``wait_s``, or ``proc`` exited first; the message
            carries the tail of ``log``.
    """
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(api_url, timeout=1.0):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    why = (
        f"exited with {proc.returncode}"
        if proc is not None and proc.returncode is not None
        else f"not healthy after {wait_s:.0f} s"
    )
    raise LaunchError(f"Prefect server at {api_url} {why}:\n{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 20) -> str:
    """The last ``lines`` of a log, or why there are none."""
    if log is None:
        return "(no log)"
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {log})"
    return "\n".join(text.splitlines()[-lines:])
