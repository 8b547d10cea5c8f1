"""Artifacts are refused before any host sees them: size, sha256, signature, key.

A real HTTP server on loopback serves a repository in the layout the estate's
``artifacts.url`` names; the real connector fetches from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from openbell.runbooks.schema import ArtifactRepository
from openbell.tasks.connectors.artifacts import ArtifactRefused, fetch_artifact, list_versions

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test key").digest())
OTHER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other key").digest())
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
DATA = b"release bytes " * 1000


class Repo:
    def __init__(self) -> None:
        self.index: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}

    def add(self, version: str, data: bytes = DATA, *, signer: Any = KEY, **override: Any) -> None:
        file = f"oms-{version}.tar.gz"
        entry = {
            "app": "oms",
            "version": version,
            "file": file,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "signature": base64.b64encode(signer.sign(data)).decode() if signer else None,
            "key": "lab",
        }
        entry.update(override)
        self.index[version] = entry
        self.files[f"/oms/{version}/{file}"] = data


@pytest.fixture()
def repo() -> Iterator[tuple[Repo, str]]:
    state = Repo()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            body: bytes
            if parts == ["oms", "index.json"]:
                body, code = json.dumps({"versions": list(state.index)}).encode(), 200
            elif len(parts) == 3 and parts[2] == "index.json" and parts[1] in state.index:
                body, code = json.dumps(state.index[parts[1]]).encode(), 200
            elif self.path in state.files:
                body, code = state.files[self.path], 200
            else:
                body, code = json.dumps({"error": f"no {self.path}"}).encode(), 404
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _repo(url: str, **kw: Any) -> ArtifactRepository:
    return ArtifactRepository(url=url, signing_keys={"lab": PUBLIC}, **kw)


def test_a_good_artifact_is_fetched_verified_and_cached(repo: Any, tmp_path: Path) -> None:
    state, url = repo
    state.add("1.1")
    art = fetch_artifact(_repo(url), "oms", "1.1", tmp_path)
    assert art.sha256 == hashlib.sha256(DATA).hexdigest() and art.signed_by == "lab"
    assert art.path.read_bytes() == DATA
    assert list_versions(_repo(url), "oms") == ["1.1"]
    # the cache is re-hashed, never trusted: a changed cached file is fetched again
    art.path.write_bytes(b"tampered")
    again = fetch_artifact(_repo(url), "oms", "1.1", tmp_path)
    assert again.path.read_bytes() == DATA


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda s: s.add("2.0", sha256="0" * 64), "sha256 of what arrived"),
        (lambda s: s.add("2.0", size=5), "bytes arrived"),
        (lambda s: s.add("2.0", signer=OTHER), "signature does not verify"),
        (lambda s: s.add("2.0", signer=None), "not signed"),
        (lambda s: s.add("2.0", key="elsewhere"), "does not name"),
        (lambda s: s.add("2.0", sha256="nothex"), "no valid sha256"),
        (lambda s: s.add("1.0"), "has no version 2.0"),
    ],
    ids=["checksum", "size", "bad-signature", "unsigned", "unknown-key", "bad-index", "missing"],
)
def test_a_bad_artifact_is_refused_and_nothing_is_cached(
    repo: Any, tmp_path: Path, setup: Any, words: str
) -> None:
    state, url = repo
    setup(state)
    with pytest.raises(ArtifactRefused) as exc:
        fetch_artifact(_repo(url), "oms", "2.0", tmp_path)
    assert words in str(exc.value)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_unsigned_is_accepted_only_where_the_estate_does_not_require_signatures(
    repo: Any, tmp_path: Path
) -> None:
    state, url = repo
    state.add("3.0", signer=None)
    art = fetch_artifact(_repo(url, require_signature=False), "oms", "3.0", tmp_path)
    assert art.signed_by is None


def test_names_that_could_escape_the_url_are_refused(repo: Any, tmp_path: Path) -> None:
    _, url = repo
    for app, version in [("../etc", "1"), ("oms", "../../x"), ("oms", "a/b")]:
        with pytest.raises(ArtifactRefused):
            fetch_artifact(_repo(url), app, version, tmp_path)


def test_the_estate_refuses_a_signing_key_that_is_not_ed25519() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ArtifactRepository(url="http://127.0.0.1:1", signing_keys={"k": "c2hvcnQ="})
    with pytest.raises(ValueError, match="no signing_keys"):
        ArtifactRepository(url="http://127.0.0.1:1")
