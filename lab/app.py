"""A simulated trading application: a process that serves ``GET /health``.

Started detached by ``appctl start`` as ``python -m openbell.lab.app --root ROOT --app NAME``;
reads its manifest (``ROOT/etc/apps/NAME.json``), binds the port of its health URL and
answers::

    {"app": "emea-oms", "status": "ok", "version": "5.0.3",
     "started_at": "2026-11-26T07:00:01Z", "pid": 4242, "host": "emea-app1"}

Where the app has a release block, it runs what ``<release_root>/current`` links: its
``app.json`` gives the version it reports, ``health: fail`` (503), ``crash_after_s``
(exits that long after start) and ``log_errors`` (an ERROR line each second); the
configuration ``<release_root>/config`` links gives ``config.json``: the configuration it
reports (``"config": "cfg-1"``) and its ``health``.

Faults (read per request): ``wrong_version`` (params ``version``) makes it report that
version; ``latency`` (params ``ms``) delays every answer. SIGTERM stops it cleanly and
removes its pid file if the file still names this process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from openbell.lab.faults import FaultBook

log = logging.getLogger("openbell.lab.app")


class AppState:
    """What the app knows about itself, and where its faults come from."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.name: str = manifest["app"]
        self.book = FaultBook(root.parents[1] / "faults.json")
        self.started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        #: what the release ``current`` links says (``app.json``), read once at start
        self.release: dict[str, Any] = {}
        #: what the ``config`` link's ``config.json`` says, read once at start
        self.config: dict[str, Any] = {}
        rel = manifest.get("release_root")
        if rel:
            with contextlib.suppress(OSError, ValueError):
                self.release = json.loads((root / rel / "current" / "app.json").read_text())
            with contextlib.suppress(OSError, ValueError):
                self.config = json.loads((root / rel / "config" / "config.json").read_text())

    def version(self) -> str:
        fault = self.book.get("wrong_version", self.name)
        if fault and fault.params.get("version"):
            return str(fault.params["version"])
        return str(self.release.get("version") or self.manifest["version"])

    @property
    def healthy(self) -> bool:
        return self.release.get("health", "ok") == "ok" and self.config.get("health", "ok") == "ok"

    def health(self) -> dict[str, Any]:
        return {
            "app": self.name,
            "status": "ok" if self.healthy else "failing",
            "version": self.version(),
            **({"config": self.config["config"]} if "config" in self.config else {}),
            "started_at": self.started_at,
            "pid": os.getpid(),
            "host": self.manifest.get("host"),
        }


class HealthHandler(BaseHTTPRequestHandler):
    """``GET /health`` (or the manifest's health path) → 200 JSON; anything else 404."""

    server_version = "lab-app/1"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        state: AppState = self.server.state  # type: ignore[attr-defined]
        delay = state.book.latency_s()
        if delay:
            time.sleep(delay)
        path = self.path.split("?", 1)[0]
        if path in ("/health", state.manifest.get("health_path")):
            self._json(200 if state.healthy else 503, state.health())
        else:
            self._json(404, {"error": "not found", "path": path})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def serve(root: Path, name: str) -> int:
    """Run the app until SIGTERM; the exit status."""
    manifest = json.loads((root / "etc" / "apps" / f"{name}.json").read_text())
    state = AppState(root, manifest)
    pidfile = root / manifest["pidfile"]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server: ThreadingHTTPServer | None = None
    if manifest.get("port"):
        address = (manifest["address"], int(manifest["port"]))
        try:
            server = ThreadingHTTPServer(address, HealthHandler)
        except OSError as exc:
            print(
                f"{name}: cannot bind {address[0]}:{address[1]}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
        server.daemon_threads = True
        server.state = state  # type: ignore[attr-defined]
        serve_forever = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        serve_forever.start()
    log.info(
        "%s %s started (pid %d) on %s:%s",
        name,
        state.version(),
        os.getpid(),
        manifest["address"],
        manifest.get("port"),
    )
    crash = state.release.get("crash_after_s")
    noisy = bool(state.release.get("log_errors"))
    begun = time.monotonic()
    while not stop.wait(1.0 if noisy or crash else None):
        if noisy:
            log.error("%s %s: order router queue overflow (lab fault)", name, state.version())
        if crash and time.monotonic() - begun >= float(crash):
            log.error("%s %s: crashed %g s after start (lab release)", name, state.version(), crash)
            os._exit(1)
    if server is not None:
        server.shutdown()
        server.server_close()
    _remove_own_pidfile(pidfile)
    log.info("%s stopped", name)
    return 0


def _remove_own_pidfile(pidfile: Path) -> None:
    try:
        if pidfile.read_text().split()[0] == str(os.getpid()):
            pidfile.unlink()
    except (OSError, IndexError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openbell.lab.app", description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="the host root")
    parser.add_argument("--app", required=True, help="the app name (its manifest)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    return serve(args.root.resolve(), args.app)


if __name__ == "__main__":
    sys.exit(main())
