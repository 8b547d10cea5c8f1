"""SSH keys for the lab: per-host host keys, client identities, the known_hosts file.

Host keys are ed25519, one per host, generated on first start under
``OPENBELL_HOME/lab/hostkeys/<host>`` and reused afterwards, so a client that pinned a
host keeps trusting it across lab restarts. Client identities are written where the
estate's ``identity_file`` points, in OpenSSH private-key format (what ``ssh-keygen``
writes and paramiko's ``Ed25519Key``/``PKey.from_path`` read), with a ``.pub`` beside.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)

KEY_TYPE = "ssh-ed25519"


def load_or_create_key(path: Path, comment: str) -> asyncssh.SSHKey:
    """Read an ed25519 private key, creating it (mode 0600, plus ``.pub``) if missing.

    Args:
        path: where the OpenSSH-format private key lives.
        comment: the key comment, e.g. ``openbell-lab@emea-app1``.
    """
    if path.exists():
        key = asyncssh.read_private_key(path)
        pub = path.with_name(path.name + ".pub")
        if not pub.exists():
            _write(pub, public_line(key, comment) + "\n", 0o644)
        return key
    key = asyncssh.generate_private_key(KEY_TYPE, comment=comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, key.export_private_key("openssh").decode(), 0o600)
    _write(path.with_name(path.name + ".pub"), public_line(key, comment) + "\n", 0o644)
    log.info("generated %s key %s", KEY_TYPE, path)
    return key


def public_line(key: asyncssh.SSHKey, comment: str | None = None) -> str:
    """``ssh-ed25519 AAAA... [comment]`` for a key (private or public)."""
    text = key.convert_to_public().export_public_key("openssh").decode().split()
    line = f"{text[0]} {text[1]}"
    return f"{line} {comment}" if comment else line


def known_hosts_line(address: str, port: int, key: asyncssh.SSHKey) -> str:
    """One known_hosts line, in the ``[address]:port`` form when the port is not 22.

    Example:
        >>> k = asyncssh.generate_private_key("ssh-ed25519")
        >>> known_hosts_line("127.0.0.1", 42201, k).startswith("[127.0.0.1]:42201 ssh-ed25519 ")
        True
    """
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {public_line(key)}"


def write_known_hosts(path: Path, lines: list[str]) -> None:
    """Replace the known_hosts file atomically with ``lines``."""
    _write(path, "".join(f"{ln}\n" for ln in lines), 0o644)


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_people_keys(home: Path, people: list[str]) -> Path:
    """A signing key per person under ``<home>/lab/people/`` and the ``allowed_signers`` file.

    The lab's people prove who they are with these (``openbell approve --key``); the
    lab's entitlements name ``${OPENBELL_HOME}/lab/allowed_signers``. Keys already there
    are kept; the file lists every key in the folder (the principal is the file's name),
    so estates with other people can share one lab home.

    Returns:
        The allowed_signers file.
    """
    from openbell.runbooks.identity import lab_people_dir

    folder = lab_people_dir(home)
    for person in people:
        load_or_create_key(folder / person, f"{person}@openbell-lab")
    lines = []
    for pub in sorted(folder.glob("*.pub")):
        fields = pub.read_text(encoding="utf-8").split()
        if len(fields) >= 2:
            lines.append(
                f'{pub.name[: -len(".pub")]} namespaces="openbell" {fields[0]} {fields[1]}\n'
            )
    signers = home / "lab" / "allowed_signers"
    _write(signers, "".join(lines), 0o644)
    return signers
