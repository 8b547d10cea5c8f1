"""The file system of each simulated host: its root, tools, app manifests and logs.

Each host gets ``OPENBELL_HOME/lab/hosts/<host>/`` with::

    bin/appctl bin/chronyc     shell shims: they answer `appctl status` and a healthy
                               `chronyc tracking` themselves, else exec a lab module
    etc/apps/<app>.json        what appctl needs: bind address, port, version, log file
    var/log var/run            logs and pid files (log_dir may name another directory)
    var/fix/store              where the estate names a fix_store_dir
    var/oms/records            where the estate names an order_records_dir

Logs are rotated like ``logrotate`` with ``copytruncate`` and ``dateext``: a ``*.log``
not written since the host's local midnight is copied to ``<name>-YYYYMMDD`` and
truncated, so a running app keeps its file handle and today's log looks fresh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from datetime import datetime, time
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from openbell.lab.paths import LabError, LabPaths, require_loopback
from openbell.runbooks.schema import App, Estate, Host

log = logging.getLogger(__name__)

TOOLS = ("appctl", "chronyc")
TOOLS_DIR = Path(__file__).resolve().parent / "bin"
DEFAULT_VERSION = "1.0.0"


def prepare_host(paths: LabPaths, estate: Estate, name: str) -> Path:
    """Create (or refresh) one host's root: directories, tools and app manifests.

    Idempotent: existing files are kept, tools and manifests rewritten only if changed.

    Returns:
        The host root.
    """
    host = estate.host(name)
    root = paths.host_root(name)
    for rel in ("bin", "etc/apps", "var/log", "var/run", "tmp"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    for extra in (host.fix_store_dir, host.log_dir, host.order_records_dir):
        if extra:
            inside(root, extra, f"hosts.{name}").mkdir(parents=True, exist_ok=True)
    install_tools(root / "bin")
    write_manifests(root, estate, name, host)
    install_releases(root, estate, name)
    return root


def install_releases(root: Path, estate: Estate, name: str) -> None:
    """Lay out the first release of each releasable app on this host: ``releases/<E>/``
    from the lab repository's artifact of its expected version, and ``current`` linking
    it; ``configs/cfg-1/`` and ``config`` linking it. Kept as it is once there (a release
    may have switched it since)."""
    from openbell.lab.artifacts import CONFIG, FIRST_CONFIG, artifact

    for app_name, app in estate.apps.items():
        if name not in app.hosts or app.release is None or estate.artifacts is None:
            continue
        base = inside(root, app.release.root, f"apps.{app_name}.release.root")
        version = app.expected_version or DEFAULT_VERSION
        _lay_out(base, "releases", "current", version, artifact(estate, app_name, version)[0])
        # its configuration, beside the releases: configs/<cfg>/ and the ``config`` link
        bundle = artifact(estate, app_name + CONFIG, FIRST_CONFIG)[0]
        _lay_out(base, "configs", "config", FIRST_CONFIG, bundle)


def _lay_out(base: Path, store: str, link: str, version: str, data: bytes) -> None:
    """``base/store/version/`` unpacked from ``data`` (by rename, as a release is staged)
    and ``base/link`` naming it, each only if missing."""
    from openbell.lab.artifacts import unpack_into

    final = base / store / version
    if not final.exists():
        staging = base / store / f".staging-{version}-lab"
        staging.mkdir(parents=True, exist_ok=True)
        unpack_into(data, staging)
        staging.rename(final)
    named = base / link
    if not named.is_symlink() and not named.exists():
        named.symlink_to(f"{store}/{version}")


def inside(root: Path, rel: str, key_path: str) -> Path:
    """``root/rel`` for a relative path; the lab refuses paths that leave the host root."""
    target = (root / rel).resolve()
    if Path(rel).is_absolute() or not target.is_relative_to(root.resolve()):
        raise LabError(f"{key_path}: {rel!r} must be a path relative to the host root in the lab")
    return target


def install_tools(bin_dir: Path) -> None:
    """Render the ``lab/bin`` shims into ``bin_dir`` with this python's path."""
    for tool in TOOLS:
        text = (TOOLS_DIR / tool).read_text().replace("@PYTHON@", sys.executable)
        _write_if_changed(bin_dir / tool, text, mode=0o755)


def manifest_for(
    estate: Estate, app_name: str, app: App, host_name: str, host: Host
) -> dict[str, object]:
    """What ``appctl``/``lab.app`` need to run one app on one host.

    Raises:
        LabError: the health URL has no port, or is not on a loopback address.
    """
    address, port, path = host.address, None, "/health"
    if app.health_url:
        url = urlsplit(app.health_url.replace("{host}", host.address))
        if url.port is None or url.hostname is None:
            raise LabError(
                f"apps.{app_name}.health_url: {app.health_url!r} needs an explicit port in the lab"
            )
        address, port, path = url.hostname, url.port, url.path or "/health"
    require_loopback(address, f"apps.{app_name}.health_url")
    log_dir = host.log_dir or "var/log"
    return {
        "app": app_name,
        "host": host_name,
        "address": address,
        "port": port,
        "health_path": path,
        "version": app.expected_version or DEFAULT_VERSION,
        "log": f"{log_dir}/{app_name}.log",
        "pidfile": f"var/run/{app_name}.pid",
        "release_root": app.release.root if app.release else None,
    }


def write_manifests(root: Path, estate: Estate, name: str, host: Host) -> None:
    """Write ``etc/apps/<app>.json`` for the apps on this host; drop stale ones."""
    apps_dir = root / "etc" / "apps"
    wanted: set[str] = set()
    for app_name, app in estate.apps.items():
        if name in app.hosts:
            doc = manifest_for(estate, app_name, app, name, host)
            _write_if_changed(apps_dir / f"{app_name}.json", json.dumps(doc, indent=2) + "\n")
            wanted.add(f"{app_name}.json")
    for old in apps_dir.glob("*.json"):
        if old.name not in wanted:
            old.unlink()


def rotate_logs(root: Path, log_dir: str, timezone: str, now: datetime | None = None) -> list[Path]:
    """Copy-and-truncate every ``*.log`` last written before local midnight.

    Args:
        root: the host root.
        log_dir: the log directory, relative to the root.
        timezone: the host's region timezone (midnight is local).
        now: the current time (for tests), timezone-aware.

    Returns:
        The rotated copies written.
    """
    tz = ZoneInfo(timezone)
    now = now or datetime.now(tz)
    cutoff = datetime.combine(now.astimezone(tz).date(), time(0), tzinfo=tz).timestamp()
    rotated: list[Path] = []
    directory = root / log_dir
    if not directory.is_dir():
        return rotated
    for live in sorted(directory.glob("*.log")):
        mtime = live.stat().st_mtime
        if mtime >= cutoff:
            continue
        day = datetime.fromtimestamp(mtime, tz).strftime("%Y%m%d")
        dest = live.with_name(f"{live.name}-{day}")
        n = 1
        while dest.exists():
            dest = live.with_name(f"{live.name}-{day}.{n}")
            n += 1
        shutil.copy2(live, dest)
        os.truncate(live, 0)
        os.utime(live)
        rotated.append(dest)
        log.info("rotated %s -> %s", live, dest.name)
    return rotated


def _write_if_changed(path: Path, text: str, mode: int | None = None) -> None:
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)
