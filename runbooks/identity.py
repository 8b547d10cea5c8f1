"""Who runs a command, proven: the operating-system account, a service account, or a key.

A typed name proves nothing. ``--as`` (or ``OPENBELL_OPERATOR``) names who a command acts
as, and it counts only when one of these backs it, in this order:

``ssh-key``
    ``--key FILE`` (or ``OPENBELL_KEY``): the command signs a statement of what it does
    with the private key (``ssh-keygen -Y sign``), and the signature is checked against
    the entitlements' ``identity.allowed_signers`` file, whose principals are persons.
    The statement and its signature go into the ledger, so anyone can check it again.
``os-account``
    the account the process runs as (its effective uid, never ``$USER``) is the person's
    key or one of their ``identities`` in the estate.
``service-account``
    the account is listed under ``identity.service_accounts`` as allowed to do this action
    for that person (a scheduler starting runs). Recorded as the account acting for the
    person; never enough for a decision.

An answer through Prefect's UI or API carries no identity at all (``none``): it is recorded
and counts only with a signature of the decision statement.

Example:
    >>> decision_statement(run_id="r1", step="apps", binding="ab12", decision="approve",
    ...                    person="bob", reason="plan checked").splitlines()[0]
    'openbell decision v1'
"""

from __future__ import annotations

import os
import pwd
import re
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from openbell.errors import OpenbellError
from openbell.runbooks.entitlements import Entitlements
from openbell.runbooks.schema import Model
from openbell.settings import get_settings

#: The ``-n`` namespace of every openbell signature (a signature made for git or for
#: another tool does not verify as an openbell one).
NAMESPACE = "openbell"
#: ssh-keygen answers within this, or the proof fails.
KEYGEN_TIMEOUT_S = 10.0

Method = Literal["ssh-key", "os-account", "service-account", "slack", "none"]
#: The proofs a four-eyes decision may rest on.
DECISION_PROOFS: frozenset[str] = frozenset({"ssh-key", "os-account", "slack"})


class IdentityError(OpenbellError):
    """The command cannot prove it acts for the person it names; the message says why."""


class Proof(Model):
    """How the person behind an action or a decision was established (kept in the ledger).

    Attributes:
        person: the estate person it counts as.
        method: how that was proven (see the module docstring).
        account: the OS account (or Slack user, or ``prefect-api``) that asked.
        host: the machine it asked from.
        terminal: its terminal, when it had one.
        key: the signing key's fingerprint, for ``ssh-key``.
        acting_for: an account acting for someone else (a service account).
        statement: what was signed, for ``ssh-key``.
        signature: the armored SSH signature of ``statement``.
    """

    person: str
    method: Method
    account: str
    host: str = ""
    terminal: str | None = None
    key: str | None = None
    acting_for: bool = False
    statement: str | None = None
    signature: str | None = None

    @property
    def counts_for_decision(self) -> bool:
        """Whether a four-eyes decision may rest on this proof."""
        return self.method in DECISION_PROOFS and not self.acting_for

    def describe(self) -> str:
        """One line for people: ``bob (OS account bob on desk1, /dev/pts/3)``."""
        where = f" on {self.host}" if self.host else ""
        tty = f", {self.terminal}" if self.terminal else ""
        if self.method == "ssh-key":
            return f"{self.person} (signed with key {self.key}, account {self.account}{where})"
        if self.method == "service-account":
            return f"{self.person} (service account {self.account}{where} acting for them)"
        if self.method == "none":
            return f"{self.person!r} (unproven: {self.account})"
        return f"{self.person} ({self.method} {self.account}{where}{tty})"


def os_account() -> tuple[str, str, str | None]:
    """The account this process runs as (effective uid), the host, and the terminal."""
    try:
        account = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        account = f"uid {os.geteuid()}"
    terminal = None
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                terminal = os.ttyname(fd)
                break
        except OSError:
            continue
    return account, socket.gethostname(), terminal


def action_statement(*, action: str, runbook: str, region: str, person: str) -> str:
    """What a key signs to act (``run``, ``audit``, ...): the action, where, who, when."""
    from openbell.outcome import utcnow

    return (
        f"openbell action v1\naction {action}\nrunbook {runbook}\nregion {region}\n"
        f"person {person}\nat {utcnow().isoformat()}\nnonce {os.urandom(8).hex()}\n"
    )


def decision_statement(
    *, run_id: str, step: str, binding: str, decision: str, person: str, reason: str
) -> str:
    """What an approver signs: this decision, on this request, bound to this hash.

    The reason is part of it, one line (newlines become spaces): a signature cannot be
    reused for another run, step, binding, decision or reason.
    """
    one_line = " ".join(reason.split())
    return (
        f"openbell decision v1\nrun {run_id}\nstep {step}\nbinding {binding}\n"
        f"decision {decision}\nperson {person}\nreason {one_line}\n"
    )


def prove(
    entitlements: Entitlements,
    *,
    claimed: str | None,
    action: str,
    statement: str,
    key: Path | None = None,
) -> Proof:
    """Establish who runs this command, for ``action``.

    Args:
        entitlements: the rules (service accounts, allowed signers) and the estate's people.
        claimed: the person (or identity) named with ``--as``/``OPENBELL_OPERATOR``, if any.
        action: what the command does (an entitlements action).
        statement: what a key signs (:func:`action_statement`, :func:`decision_statement`).
        key: a private key to sign ``statement`` with.

    Raises:
        IdentityError: nothing proves the person; the message says what would.
    """
    account, host, terminal = os_account()
    own = entitlements.person_of(account)
    wanted = entitlements.person_of(claimed) if claimed else None
    if claimed and wanted is None:
        raise IdentityError(
            f"--as {claimed!r}: no such person or identity in the estate; valid persons: "
            + ", ".join(sorted(entitlements.estate.people))
        )
    if key is not None:
        signature = sign(key, statement)
        person, fingerprint = verify(entitlements, statement, signature)
        if wanted is not None and person != wanted:
            raise IdentityError(
                f"--key {key} is {person}'s key, not {wanted}'s: a key proves only its owner"
            )
        return Proof(
            person=person,
            method="ssh-key",
            account=account,
            host=host,
            terminal=terminal,
            key=fingerprint,
            statement=statement,
            signature=signature,
        )
    if wanted is None or wanted == own:
        if own is None:
            raise IdentityError(
                f"the OS account {account!r} is no person's in the estate, so who you are "
                "is not proven: sign with --key FILE (your key in the entitlements' "
                "identity.allowed_signers), or have the account listed among your identities"
            )
        return Proof(person=own, method="os-account", account=account, host=host, terminal=terminal)
    if entitlements.may_act_for(account, wanted, action) is not None:
        return Proof(
            person=wanted,
            method="service-account",
            account=account,
            host=host,
            terminal=terminal,
            acting_for=True,
        )
    is_ = f"is {own}'s" if own else "is no person's"
    raise IdentityError(
        f"--as {claimed}: the OS account {account!r} {is_}, and a typed name proves nothing; "
        f"to {action} as {wanted}, sign with their key (--key FILE), run it from their "
        "account, or use a service account the entitlements allow to act for them"
    )


def allowed_signers(entitlements: Entitlements) -> Path:
    """The allowed_signers file the entitlements name (``${OPENBELL_HOME}`` expanded).

    Raises:
        IdentityError: none is named, or the file is missing.
    """
    named = entitlements.identity.allowed_signers
    if not named:
        raise IdentityError(
            f"{entitlements.source or 'the entitlements'} names no identity.allowed_signers "
            "file, so no key can prove who signed"
        )
    path = Path(named.replace("${OPENBELL_HOME}", str(get_settings().home))).expanduser()
    if not path.is_absolute() and entitlements.source:
        path = Path(entitlements.source).parent / path
    if not path.is_file():
        raise IdentityError(
            f"identity.allowed_signers: {path} does not exist (the lab writes it on "
            "`openbell lab up`; elsewhere, one line per key: `<person> <key type> <key>`)"
        )
    return path


def sign(key: Path, statement: str) -> str:
    """The armored SSH signature of ``statement`` made with the private key ``key``.

    Raises:
        IdentityError: the key cannot be read or ssh-keygen failed.
    """
    if not key.is_file():
        raise IdentityError(f"--key {key}: no such file")
    try:
        done = subprocess.run(
            ["ssh-keygen", "-q", "-Y", "sign", "-n", NAMESPACE, "-f", str(key)],
            input=statement.encode(),
            capture_output=True,
            timeout=KEYGEN_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IdentityError(f"could not sign with {key}: {exc}") from None
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0 or "BEGIN SSH SIGNATURE" not in text:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise IdentityError(f"could not sign with {key}: {why[-1] if why else 'ssh-keygen failed'}")
    return text


_GOOD = re.compile(r'Good "[^"]*" signature for (?P<who>\S+) with \S+ key (?P<fp>\S+)')


def verify(entitlements: Entitlements, statement: str, signature: str) -> tuple[str, str]:
    """The person who signed ``statement`` and their key's fingerprint.

    Raises:
        IdentityError: the signature is malformed, not by a listed key, or not of this
            statement.
    """
    signers = allowed_signers(entitlements)
    with tempfile.TemporaryDirectory(prefix="openbell-sig-") as tmp:
        sig = Path(tmp) / "statement.sig"
        sig.write_text(signature if signature.endswith("\n") else signature + "\n")
        found = _keygen(["-Y", "find-principals", "-s", str(sig), "-f", str(signers)], b"")
        principals = found.stdout.decode(errors="replace").split()
        if found.returncode != 0 or not principals:
            raise IdentityError("the signature is not made by any key in identity.allowed_signers")
        principal = principals[0]
        checked = _keygen(
            ["-Y", "verify", "-f", str(signers), "-I", principal, "-n", NAMESPACE, "-s", str(sig)],
            statement.encode(),
        )
    said = checked.stdout.decode(errors="replace") + checked.stderr.decode(errors="replace")
    good = _GOOD.search(said)
    if checked.returncode != 0 or good is None:
        raise IdentityError(f"the signature by {principal}'s key does not match what was signed")
    person = entitlements.person_of(principal)
    if person is None:
        raise IdentityError(f"allowed_signers names {principal!r}, who is no person in the estate")
    return person, good.group("fp")


def _keygen(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["ssh-keygen", *args],
            input=stdin,
            capture_output=True,
            timeout=KEYGEN_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IdentityError(f"could not check the signature: {exc}") from None


def unproven(claimed: str, via: str) -> Proof:
    """The proof of an answer that carries none (Prefect's UI or API)."""
    return Proof(person=claimed, method="none", account=via)


def lab_people_dir(home: Path) -> Path:
    """Where the lab keeps each person's signing key: ``<home>/lab/people/<person>``."""
    return home / "lab" / "people"
