"""A typed name proves nothing: the OS account, a key (real ssh-keygen) or a service account.

These are the issue's "anyone approves as anyone" attacks, at the level of the proof; the
CLI and the Prefect API paths are in ``test_approval_gate.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from openbell.errors import EstateError, UnknownNameError
from openbell.lab.keys import write_people_keys
from openbell.runbooks.entitlements import Entitlements, entitlements_for
from openbell.runbooks.identity import (
    IdentityError,
    action_statement,
    decision_statement,
    os_account,
    prove,
    sign,
    verify,
)
from openbell.runbooks.loader import load_estate

LAB = Path(__file__).resolve().parent.parent / "runbooks" / "lab.yaml"
ENTITLEMENTS = LAB.parent / "entitlements.yaml"
ACCOUNT = os_account()[0]
STATEMENT = decision_statement(
    run_id="r1", step="apps", binding="ab" * 32, decision="approve", person="bob", reason="ok"
)

Make = Callable[..., Entitlements]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    """Writes the lab estate and entitlements into ``tmp_path``, changed as asked."""
    signers = write_people_keys(tmp_path, ["alice", "bob", "carol", "dave", "erin", "frank"])

    def go(*, account_of: str | None = None, identity: dict | None = None) -> Entitlements:
        estate = yaml.safe_load(LAB.read_text())
        if account_of:  # the OS account running the tests is this person's
            estate["people"][account_of]["identities"] = [ACCOUNT]
        (tmp_path / "lab.yaml").write_text(yaml.safe_dump(estate, sort_keys=False))
        rules = yaml.safe_load(ENTITLEMENTS.read_text())
        rules["identity"] = {"allowed_signers": str(signers), **(identity or {})}
        (tmp_path / "entitlements.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
        return entitlements_for(load_estate(tmp_path / "lab.yaml"))

    return go


def key(tmp_path: Path, person: str) -> Path:
    return tmp_path / "lab" / "people" / person


def test_a_key_proves_its_owner_and_the_signature_is_kept(make: Make, tmp_path: Path) -> None:
    ents = make()
    proof = prove(
        ents, claimed="bob", action="approve", statement=STATEMENT, key=key(tmp_path, "bob")
    )
    assert (proof.person, proof.method, proof.account) == ("bob", "ssh-key", ACCOUNT)
    assert proof.key and proof.key.startswith("SHA256:")
    assert proof.counts_for_decision
    # what the ledger keeps verifies again, offline
    assert proof.statement == STATEMENT and proof.signature is not None
    assert verify(ents, STATEMENT, proof.signature) == ("bob", proof.key)
    # without --as, the key says who it is
    alone = prove(ents, claimed=None, action="run", statement=STATEMENT, key=key(tmp_path, "dave"))
    assert alone.person == "dave"


def test_a_key_does_not_prove_someone_else(make: Make, tmp_path: Path) -> None:
    ents = make()
    with pytest.raises(IdentityError, match="is bob's key, not dave's"):
        prove(ents, claimed="dave", action="approve", statement=STATEMENT, key=key(tmp_path, "bob"))


def test_a_signature_proves_only_what_was_signed(make: Make, tmp_path: Path) -> None:
    ents = make()
    signature = sign(key(tmp_path, "bob"), STATEMENT)
    forged = STATEMENT.replace("decision approve", "decision reject")
    with pytest.raises(IdentityError, match="does not match what was signed"):
        verify(ents, forged, signature)
    with pytest.raises(IdentityError, match="not made by any key"):
        verify(ents, STATEMENT, signature.replace("A", "B", 40))


def test_a_key_nobody_listed_proves_nothing(make: Make, tmp_path: Path) -> None:
    ents = make()
    stranger = write_people_keys(tmp_path / "elsewhere", ["mallory"]).parent / "people" / "mallory"
    with pytest.raises(IdentityError, match=r"not made by any key in identity\.allowed_signers"):
        prove(ents, claimed=None, action="approve", statement=STATEMENT, key=stranger)


def test_the_os_account_proves_its_person_and_nobody_else(make: Make) -> None:
    ents = make(account_of="carol")
    text = action_statement(action="run", runbook="sod", region="emea", person="carol")
    mine = prove(ents, claimed=None, action="approve", statement=text)
    assert (mine.person, mine.method, mine.account) == ("carol", "os-account", ACCOUNT)
    assert prove(ents, claimed="carol", action="approve", statement=text).counts_for_decision
    with pytest.raises(IdentityError, match=f"the OS account '{ACCOUNT}' is carol's"):
        prove(ents, claimed="dave", action="approve", statement=text)


def test_an_account_that_is_nobody_proves_nothing(make: Make) -> None:
    ents = make()
    with pytest.raises(IdentityError, match="is no person's in the estate"):
        prove(ents, claimed=None, action="run", statement="x")
    with pytest.raises(IdentityError, match="a typed name proves nothing"):
        prove(ents, claimed="dave", action="run", statement="x")
    with pytest.raises(IdentityError, match=r"no such person or identity.*valid persons: alice"):
        prove(ents, claimed="mallory", action="run", statement="x")


def test_a_service_account_acts_for_others_but_never_decides(make: Make) -> None:
    ents = make(
        identity={
            "service_accounts": {
                ACCOUNT: {"acts_for": "group:amer-oncall", "actions": ["run", "report"]}
            }
        }
    )
    proof = prove(ents, claimed="dave", action="run", statement="x")
    assert (proof.person, proof.method, proof.acting_for) == ("dave", "service-account", True)
    assert not proof.counts_for_decision
    assert "acting for them" in proof.describe()
    with pytest.raises(IdentityError):  # not for an action it does not list
        prove(ents, claimed="dave", action="approve", statement="x")
    with pytest.raises(IdentityError):  # not for someone outside acts_for
        prove(ents, claimed="bob", action="run", statement="x")


def test_a_service_account_that_may_approve_is_refused_at_load(make: Make) -> None:
    with pytest.raises(EstateError, match="may not approve for others") as exc:
        make(identity={"service_accounts": {"svc": {"acts_for": "*", "actions": ["approve"]}}})
    assert exc.value.file and exc.value.file.endswith("entitlements.yaml")
    assert exc.value.line is not None


def test_a_service_account_for_nobody_known_is_refused_at_load(make: Make) -> None:
    with pytest.raises(UnknownNameError, match="mallory"):
        make(identity={"service_accounts": {"svc": {"acts_for": ["mallory"], "actions": ["run"]}}})
    with pytest.raises(UnknownNameError, match="launch"):
        make(identity={"service_accounts": {"svc": {"acts_for": "*", "actions": ["launch"]}}})
