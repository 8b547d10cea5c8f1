"""The lab's artifact repository: a release of every app, good and bad, signed, over HTTP.

For an app whose ``expected_version`` is E (``5.0.3``), the repository holds:

===================  ===========================================================
E, E+patch, E+minor  good (``5.0.3``, ``5.0.4``, ``5.1.0``)
9.0.0-unhealthy      starts, but its health endpoint answers 503
9.0.1-crashes        starts healthy and exits 3 s later (caught by the soak)
9.0.2-noisy          healthy, but writes an ERROR line to its log every second
9.0.3-badsig         good content, signed with a key the estate does not trust
===================  ===========================================================

Each app also has configuration bundles, under the name ``<app>.config`` (a
configuration-only change, ``openbell run release --config``): ``cfg-1`` (what the hosts
start with), ``cfg-2`` (good) and ``cfg-9-unhealthy`` (the app answers 503 with it). A
bundle holds ``config.json`` (``{"app", "config", "health"}``, read by the lab app at start
from ``<release root>/config``) and its ``SHA256SUMS``; it is signed like a release.

Each artifact is a deterministic ``.tar.gz`` (sorted entries, mtime 0, owner 0) holding
``app.json`` (what the lab app reads at start: version, health, crash_after_s,
log_errors), ``bin/README`` and ``SHA256SUMS`` of the others, so that
``cd releases/V && sha256sum -c --strict --quiet SHA256SUMS`` passes on a host. It is
signed (ed25519, detached, over the file's bytes) with the lab key, from a fixed seed.

Served at ``estate.artifacts.url``::

    GET /<app>/index.json             {"app", "versions"}
    GET /<app>/<version>/index.json   {"app", "version", "file", "sha256", "size",
                                       "signature", "key"}
    GET /<app>/<version>/<file>       the bytes

Fault ``corrupt_artifact`` (target: an app, or ``app@version``) flips one byte of what
is served; the index keeps the true sha256.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import io
import json
import logging
import tarfile
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from openbell.lab.faults import FaultBook
from openbell.lab.paths import LabError, require_loopback
from openbell.runbooks.schema import App, Estate

log = logging.getLogger(__name__)

KEY_NAME = "lab"
_SEED = hashlib.sha256(b"openbell lab artifact signing key").digest()
_OTHER_SEED = hashlib.sha256(b"openbell lab: a key nobody trusts").digest()


def _key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def lab_public_key() -> str:
    """The lab key's public half: 32 raw bytes in base64 (``artifacts.signing_keys.lab``)."""
    raw = _key(_SEED).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _bump(version: str, part: int) -> str:
    nums = [int(x) if x.isdigit() else 0 for x in version.split(".")[:3]]
    nums += [0] * (3 - len(nums))
    nums[part] += 1
    for i in range(part + 1, 3):
        nums[i] = 0
    return ".".join(map(str, nums))


def versions_of(app: App) -> dict[str, dict[str, Any]]:
    """Every version the repository holds for ``app``, with what the app does when run."""
    base = app.expected_version or "1.0.0"
    good = {"health": "ok", "crash_after_s": None, "log_errors": False}
    return {
        base: good,
        _bump(base, 2): good,
        _bump(base, 1): good,
        "9.0.0-unhealthy": {**good, "health": "fail"},
        "9.0.1-crashes": {**good, "crash_after_s": 3.0},
        "9.0.2-noisy": {**good, "log_errors": True},
        "9.0.3-badsig": {**good, "signed_by_other": True},
    }


#: the suffix of an app's configuration bundles in the repository (``emea-oms.config``)
CONFIG = ".config"
#: the configuration every host starts with
FIRST_CONFIG = "cfg-1"


def configs_of(app: App) -> dict[str, dict[str, Any]]:
    """Every configuration bundle the repository holds for ``app``."""
    good = {"health": "ok"}
    return {FIRST_CONFIG: good, "cfg-2": good, "cfg-9-unhealthy": {"health": "fail"}}


def _tar(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


@lru_cache(maxsize=4096)
def build(app_name: str, version: str, behaviour_json: str) -> tuple[bytes, dict[str, Any]]:
    """(the artifact's bytes, its index entry) for one version: deterministic."""
    behaviour = json.loads(behaviour_json)
    if app_name.endswith(CONFIG):
        config = {"app": app_name[: -len(CONFIG)], "config": version, **behaviour}
        files = {"config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    else:
        manifest = {
            "app": app_name,
            "version": version,
            "health": behaviour["health"],
            "crash_after_s": behaviour["crash_after_s"],
            "log_errors": behaviour["log_errors"],
        }
        files = {
            "app.json": (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
            "bin/README": (
                f"{app_name} {version}: a lab release (openbell.lab.artifacts)\n"
            ).encode(),
        }
    sums = "".join(f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in sorted(files))
    files["SHA256SUMS"] = sums.encode()
    data = _tar(files)
    signer = _key(_OTHER_SEED if behaviour.get("signed_by_other") else _SEED)
    entry = {
        "app": app_name,
        "version": version,
        "file": f"{app_name}-{version}.tar.gz",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "signature": base64.b64encode(signer.sign(data)).decode(),
        "key": KEY_NAME,
    }
    return data, entry


def versions_in_repository(estate: Estate, name: str) -> dict[str, dict[str, Any]]:
    """What the repository holds under ``name``: an app's versions, or (``<app>.config``)
    its configuration bundles. Raises KeyError for a name it does not hold."""
    if name.endswith(CONFIG):
        return configs_of(estate.apps[name[: -len(CONFIG)]])
    return versions_of(estate.apps[name])


def artifact(estate: Estate, app_name: str, version: str) -> tuple[bytes, dict[str, Any]]:
    """One version of an app (or configuration bundle of ``<app>.config``): (bytes, index
    entry). Raises KeyError when it has none."""
    behaviour = versions_in_repository(estate, app_name)[version]
    return build(app_name, version, json.dumps(behaviour, sort_keys=True))


def unpack_into(data: bytes, directory: Any) -> None:
    """Unpack an artifact (used to lay out the hosts' first release)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")


class ArtifactServer:
    """The repository of an estate's releasable apps, at ``estate.artifacts.url``."""

    def __init__(self, estate: Estate, book: FaultBook) -> None:
        if estate.artifacts is None:
            raise LabError("the estate names no artifacts repository")
        url = urlsplit(estate.artifacts.url)
        if url.scheme != "http" or not url.hostname or not url.port:
            raise LabError(f"artifacts.url: {estate.artifacts.url!r} must be http://address:port")
        require_loopback(url.hostname, "artifacts.url")
        self.estate = estate
        self.book = book
        self.address, self.port = url.hostname, url.port
        self.prefix = url.path.rstrip("/")
        released = sorted(n for n, a in estate.apps.items() if a.release is not None)
        self.apps = sorted(released + [n + CONFIG for n in released])
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.address, self.port, reuse_address=True
            )
        except OSError as exc:
            raise LabError(
                f"artifacts: cannot listen on {self.address}:{self.port}: {exc.strerror or exc}"
            ) from None

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def answer(self, path: str) -> tuple[int, bytes, str]:
        """(status, body, content type) for a GET of ``path``."""
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix) :]
        parts = [p for p in path.split("?")[0].split("/") if p]
        if not parts or parts[0] not in self.apps:
            return _json(404, {"error": f"no app {parts[0] if parts else ''!r}; apps: {self.apps}"})
        app_name = parts[0]
        versions = versions_in_repository(self.estate, app_name)
        if parts[1:] == ["index.json"]:
            return _json(200, {"app": app_name, "versions": list(versions)})
        if len(parts) < 3 or parts[1] not in versions:
            return _json(
                404,
                {
                    "error": f"no version {parts[1] if len(parts) > 1 else ''!r} of "
                    f"{app_name}; versions: {list(versions)}"
                },
            )
        data, entry = artifact(self.estate, app_name, parts[1])
        if parts[2:] == ["index.json"]:
            return _json(200, entry)
        if parts[2:] == [entry["file"]]:
            if self.book.get("corrupt_artifact", app_name) or self.book.get(
                "corrupt_artifact", f"{app_name}@{parts[1]}"
            ):
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
            return 200, data, "application/gzip"
        return _json(404, {"error": f"no file {'/'.join(parts[2:])!r}; file: {entry['file']}"})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) != 3 or line[0] not in ("GET", "HEAD"):
                code, body, ctype = _json(405, {"error": "GET only"})
            else:
                code, body, ctype = await asyncio.to_thread(self.answer, line[1])
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(code, "Error")
            writer.write(
                f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
                "Server: openbell-lab-artifacts\r\n\r\n".encode()
            )
            if line and line[0] != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _json(code: int, body: dict[str, Any]) -> tuple[int, bytes, str]:
    return code, json.dumps(body).encode(), "application/json"
