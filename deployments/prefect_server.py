"""A local Prefect server that outlives the CLI, so runs stay visible in the UI.

``ensure_server`` answers the API URL to use: ``PREFECT_API_URL`` when it is set (and
healthy), else a server on 127.0.0.1:<OPENBELL_PREFECT_PORT>, started in the background
with its database under ``OPENBELL_HOME/prefect`` if none answers there. Prefect's
ephemeral per-process server is never used: it has no scheduler and no pause expiry.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from openbell.errors import OpenbellError
from openbell.settings import Settings, get_settings

log = logging.getLogger(__name__)


class PrefectServerError(OpenbellError):
    """The Prefect server could not be reached or started."""


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when ``{api_url}/health`` answers 200."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def local_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.prefect_port}/api"


def server_dir(settings: Settings) -> Path:
    return settings.home / "prefect"


def ensure_server(settings: Settings | None = None, *, wait_s: float = 90.0) -> str:
    """Return a healthy Prefect API URL, starting a local server if needed.

    Raises:
        PrefectServerError: PREFECT_API_URL is set but unhealthy, or the local server
            did not become healthy in ``wait_s`` (the message carries its log tail).
    """
    settings = settings or get_settings()
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not healthy(configured):
            raise PrefectServerError(
                f"PREFECT_API_URL={configured} does not answer /health; "
                "start that server or unset it"
            )
        return configured
    url = local_url(settings)
    if healthy(url):
        return url
    start_server(settings)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(url):
            log.info("Prefect server healthy at %s", url)
            return url
        time.sleep(0.5)
    raise PrefectServerError(
        f"Prefect server at {url} not healthy after {wait_s:.0f} s:\n{_log_tail(settings)}"
    )


def start_server(settings: Settings) -> int:
    """Start ``prefect server start`` detached; returns its pid (written to server.pid)."""
    home = server_dir(settings)
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    argv = [
        str(prefect),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.prefect_port),
    ]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
    }
    env.pop("PREFECT_API_URL", None)
    with (home / "server.log").open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
        )
    (home / "server.pid").write_text(str(proc.pid))
    log.info("started Prefect server pid %s on port %s", proc.pid, settings.prefect_port)
    return proc.pid


def stop_server(settings: Settings | None = None) -> bool:
    """Stop the server this home started; True if one was running."""
    settings = settings or get_settings()
    pidfile = server_dir(settings) / "server.pid"
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        return False
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def _log_tail(settings: Settings, lines: int = 20) -> str:
    try:
        text = (server_dir(settings) / "server.log").read_text(errors="replace")
    except FileNotFoundError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])
