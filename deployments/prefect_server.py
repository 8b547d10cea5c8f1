"""A local Prefect server that outlives the CLI, so runs stay visible in the UI.

``ensure_server`` answers the API URL to use: ``PREFECT_API_URL`` when it is set (and
healthy), else a server on 127.0.0.1:<OPENBELL_PREFECT_PORT>, started in the background
with its database under ``OPENBELL_HOME/prefect`` if none answers there. Prefect's
ephemeral per-process server is never used: it has no scheduler and no pause expiry.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from openbell.deployments import launcher
from openbell.deployments.launcher import healthy
from openbell.errors import OpenbellError
from openbell.settings import Settings, get_settings

log = logging.getLogger(__name__)


class PrefectServerError(OpenbellError):
    """The Prefect server could not be reached or started."""


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
    proc = launcher.start_prefect_server(home, settings.prefect_port)
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
        return launcher.stop_group(pid, term_wait_s=5.0, kill_wait_s=5.0)
    finally:
        pidfile.unlink(missing_ok=True)


def _log_tail(settings: Settings, lines: int = 20) -> str:
    return launcher.log_tail(server_dir(settings) / "server.log", lines)
