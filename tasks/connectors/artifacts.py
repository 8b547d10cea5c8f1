"""Release artifacts: fetched from the estate's repository, verified before any host sees them.

The repository (``estate.artifacts``) answers, for an app and a version::

    GET <url>/<app>/index.json              {"app": ..., "versions": [...]}
    GET <url>/<app>/<version>/index.json    {"file", "sha256", "size", "signature", "key"}
    GET <url>/<app>/<version>/<file>        the bytes

``fetch_artifact`` downloads the file into a local cache under a temporary name, hashes it
as it arrives, and keeps it only when its size and sha256 are those the index names and,
where the estate requires one, its detached ed25519 signature verifies against a key the
estate names (``artifacts.signing_keys``). Anything else raises :class:`ArtifactRefused`,
saying what was expected and what came, and leaves nothing in the cache: a corrupted or
unsigned artifact is refused before any host is touched.

A cached file is hashed again on every use: the cache is a convenience, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from openbell.errors import OpenbellError
from openbell.runbooks.schema import ArtifactRepository

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_CHUNK = 1 << 16


class ArtifactRefused(OpenbellError):
    """An artifact that must not be deployed (or could not be fetched), and why."""


@dataclass(frozen=True)
class Artifact:
    """A verified artifact in the local cache.

    Attributes:
        app: the app it is a release of.
        version: its version.
        file: its file name in the repository.
        sha256: the checksum measured here (equal to the repository's).
        size: bytes.
        path: where it is cached.
        signed_by: the estate's name of the key its signature verified with, or None
            where the estate does not require signatures and there was none.
    """

    app: str
    version: str
    file: str
    sha256: str
    size: int
    path: Path
    signed_by: str | None

    def evidence(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "signed_by": self.signed_by,
        }


def _name(kind: str, value: str) -> str:
    if not _SAFE.fullmatch(value):
        raise ArtifactRefused(f"{kind} {value!r}: expected letters, digits and . _ + -")
    return value


def _get(repo: ArtifactRepository, path: str) -> httpx.Response:
    url = f"{repo.url}/{path}"
    try:
        answer = httpx.get(url, timeout=repo.timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ArtifactRefused(
            f"artifact repository: GET {url}: {type(exc).__name__}: {exc}"
        ) from None
    return answer


def _json(repo: ArtifactRepository, path: str, what: str) -> dict[str, Any]:
    answer = _get(repo, path)
    if answer.status_code == 404:
        try:
            detail = answer.json().get("error", "")
        except ValueError:
            detail = ""
        raise ArtifactRefused(
            f"the artifact repository has no {what}{': ' + detail if detail else ''}"
        )
    if answer.status_code != 200:
        raise ArtifactRefused(
            f"artifact repository: GET {repo.url}/{path} answered {answer.status_code}"
        )
    try:
        body = answer.json()
    except ValueError:
        raise ArtifactRefused(f"artifact repository: {what}: the answer is not JSON") from None
    if not isinstance(body, dict):
        raise ArtifactRefused(f"artifact repository: {what}: expected a JSON object")
    return body


def list_versions(repo: ArtifactRepository, app: str) -> list[str]:
    """The versions of ``app`` the repository holds."""
    body = _json(repo, f"{_name('app', app)}/index.json", f"app {app}")
    return [str(v) for v in body.get("versions", [])]


def describe(repo: ArtifactRepository, app: str, version: str) -> dict[str, Any]:
    """The repository's index entry of one version (file, sha256, size, signature, key)."""
    path = f"{_name('app', app)}/{_name('version', version)}/index.json"
    body = _json(repo, path, f"version {version} of {app}")
    sha = str(body.get("sha256", "")).lower()
    if not _SHA256.fullmatch(sha):
        raise ArtifactRefused(f"{app} {version}: the repository names no valid sha256 ({sha!r})")
    body["sha256"] = sha
    _name("file", str(body.get("file", "")))
    if not isinstance(body.get("size"), int) or body["size"] < 0:
        raise ArtifactRefused(f"{app} {version}: the repository names no size")
    return body


def verify_signature(
    repo: ArtifactRepository, index: dict[str, Any], data_sha: str, path: Path
) -> str | None:
    """Check the detached signature of the file at ``path``; the key's name, or None.

    Raises:
        ArtifactRefused: required and missing, an unknown key, or a signature that does
            not verify.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    what = f"{index.get('app')} {index.get('version')}"
    signature, key_name = index.get("signature"), index.get("key")
    if not signature:
        if repo.require_signature:
            raise ArtifactRefused(f"{what} is not signed, and the estate requires a signature")
        return None
    if key_name not in repo.signing_keys:
        known = ", ".join(sorted(repo.signing_keys)) or "none"
        raise ArtifactRefused(
            f"{what} is signed with key {key_name!r}, which the estate does not name "
            f"(artifacts.signing_keys: {known})"
        )
    try:
        raw = base64.b64decode(str(signature), validate=True)
    except (binascii.Error, ValueError):
        raise ArtifactRefused(f"{what}: its signature is not base64") from None
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(repo.signing_keys[key_name]))
    try:
        public.verify(raw, path.read_bytes())
    except InvalidSignature:
        raise ArtifactRefused(
            f"{what}: the signature does not verify with key {key_name!r} (sha256 {data_sha}); "
            "the artifact is not what its publisher signed"
        ) from None
    return str(key_name)


def fetch_artifact(repo: ArtifactRepository, app: str, version: str, cache_dir: Path) -> Artifact:
    """Download (or re-check the cached copy of) one version and verify it.

    Raises:
        ArtifactRefused: not in the repository, not the size or sha256 it names, or a
            signature that is missing (where required) or does not verify.
    """
    index = describe(repo, app, version)
    file = str(index["file"])
    expected = str(index["sha256"])
    folder = cache_dir / app / version
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / file
    if final.is_file() and _sha256_of(final) == expected:
        signed = verify_signature(repo, index, expected, final)
        return Artifact(app, version, file, expected, final.stat().st_size, final, signed)
    part = folder / f".{file}.{os.getpid()}.part"
    digest = hashlib.sha256()
    size = 0
    url = f"{repo.url}/{app}/{version}/{file}"
    try:
        with httpx.stream("GET", url, timeout=repo.timeout_s) as answer:
            if answer.status_code != 200:
                raise ArtifactRefused(
                    f"artifact repository: GET {url} answered {answer.status_code}"
                )
            with part.open("wb") as out:
                for chunk in answer.iter_bytes(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        measured = digest.hexdigest()
        if size != index["size"]:
            raise ArtifactRefused(
                f"{app} {version}: {size} bytes arrived, the repository says {index['size']}"
            )
        if measured != expected:
            raise ArtifactRefused(
                f"{app} {version}: sha256 of what arrived is {measured}, the repository says "
                f"{expected}: corrupted in transit or at rest; refused before any host is touched"
            )
        signed = verify_signature(repo, index, measured, part)
        os.replace(part, final)
    except httpx.HTTPError as exc:
        raise ArtifactRefused(
            f"artifact repository: GET {url}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return Artifact(app, version, file, expected, size, final, signed)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def index_json(index: dict[str, Any]) -> str:
    return json.dumps(index, sort_keys=True)
