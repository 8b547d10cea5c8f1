"""Runs use the estate ``openbell deploy`` pinned (deployments/pin.py).

The attack: a private copy of the estate whose entitlements allow everyone and whose
approval rule is gone, handed to ``openbell run --estate``. After a deploy pinned the
region, such a run is refused before anything is touched, and the refusal recorded; only
the *pinned* rules can entitle someone to run on other files, and only the pinned allowed
signers prove who they are. Plans read any file. ``openbell deploy`` against a real Prefect
server, and the pins it prints, are tested in test_deploy.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from openbell.deployments.cli import app
from openbell.deployments.cli.schedule import may_deploy
from openbell.deployments.pin import latest_pin, record_pins
from openbell.errors import OpenbellError
from openbell.runbooks.loader import load_estate
from openbell.tasks.ledger import Ledger
from tests.fixtures.people import as_, key_of

LAB = Path(__file__).resolve().parent.parent / "runbooks"


def copy_lab(folder: Path) -> Path:
    """The lab estate and its entitlements, copied into ``folder`` (mode 644)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("lab.yaml", "entitlements.yaml"):
        shutil.copyfile(LAB / name, folder / name)
        (folder / name).chmod(0o644)
    return folder / "lab.yaml"


def edit(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def ledger_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OPENBELL_LEDGER_URL", url)
    return url


@pytest.fixture
def pinned(tmp_path: Path, ledger_url: str) -> Path:
    """The lab estate, pinned for every region as openbell deploy pins it."""
    estate = copy_lab(tmp_path / "pinned")
    with Ledger(ledger_url) as ledger:
        pins = record_pins(ledger, load_estate(estate), by="carol", proof=None)
    assert sorted(p.region for p in pins) == ["amer", "apac", "emea"]
    return estate


@pytest.fixture
def own_copy(tmp_path: Path) -> Path:
    """Bob's private copy: everyone may do everything, and no step needs an approval."""
    estate = copy_lab(tmp_path / "mine")

    def everyone(doc: dict) -> None:  # type: ignore[type-arg]
        doc["rules"] = [
            {"allow": ["plan", "run", "run-unpinned", "deploy", "approve"], "who": "*",
             "runbooks": "*", "regions": "*", "why": "mine"}
        ]  # fmt: skip

    edit(estate.with_name("entitlements.yaml"), everyone)
    edit(estate, lambda doc: doc.get("runbooks", {}).get("sod", {}).pop("approvals", None))
    return estate


def refusals(url: str) -> list[dict]:  # type: ignore[type-arg]
    with Ledger(url) as ledger:
        return [e.payload for e in ledger.entries(kinds=["refusal"])]


def run_sod(estate: Path, person: str, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(
        app, ["run", "sod", "--region", "emea", "--estate", str(estate), *as_(person), *extra]
    )


def test_a_run_on_a_private_copy_is_refused_and_recorded(
    pinned: Path, own_copy: Path, ledger_url: str
) -> None:
    result = run_sod(own_copy, "bob")
    assert result.exit_code == 1, result.output
    assert "refused" in result.stderr and "pinned" in result.stderr, result.stderr
    assert "openbell deploy" in result.stderr and "--dry-run" in result.stderr
    last = refusals(ledger_url)[-1]
    assert (last["who"], last["action"], last["runbook"], last["region"]) == (
        "bob", "run", "sod", "emea",
    )  # fmt: skip
    assert "estate" in last["reason"] and "entitlements" in last["reason"]
    assert "run-unpinned" in last["reason"]  # by the pinned rules, which allow it no one
    # A plan reads any file.
    plan = CliRunner().invoke(
        app, ["plan", "sod", "--region", "emea", "--estate", str(own_copy), "--as", "bob"]
    )
    assert plan.exit_code == 0, plan.output


def test_the_pinned_files_pass_and_a_region_never_deployed_is_not_pinned(
    pinned: Path, own_copy: Path, ledger_url: str
) -> None:
    from openbell.deployments.cli.common import require_pinned_estate, rules_in_force

    require_pinned_estate(load_estate(pinned), "bob", "sod", "emea")  # no refusal
    _, pin, differences = rules_in_force(load_estate(pinned), "emea")
    assert pin is not None and pin.by == "carol" and differences == []
    with Ledger(ledger_url) as ledger:
        assert latest_pin(ledger, "emea") == pin
        # Only emea pinned, in a ledger of its own: apac is not restricted.
        other = Ledger(f"sqlite:///{Path(ledger_url[10:]).with_name('other.db')}")
    with other:
        record_pins(other, load_estate(pinned), by="carol", proof=None)
        assert latest_pin(other, "nowhere") is None


def test_only_the_pinned_rules_entitle_a_run_on_other_files(
    tmp_path: Path, own_copy: Path, ledger_url: str
) -> None:
    """carol may run on other files because the pinned rules say so (and that is
    recorded); bob may not, though his own file says everyone may."""
    estate = copy_lab(tmp_path / "allowing")

    def carol_may(doc: dict) -> None:  # type: ignore[type-arg]
        doc["rules"].append(
            {"allow": ["run-unpinned"], "who": "carol", "runbooks": "*", "regions": "*",
             "why": "desk lead: emergency runs on a changed estate"}
        )  # fmt: skip

    edit(estate.with_name("entitlements.yaml"), carol_may)
    with Ledger(ledger_url) as ledger:
        record_pins(ledger, load_estate(estate), by="carol", proof=None)

    assert run_sod(own_copy, "bob").exit_code == 1
    assert "run-unpinned" in refusals(ledger_url)[-1]["reason"]
    # carol passes the pin check; the bad --from-step then stops the run before anything
    # is touched, so the test needs no lab.
    result = run_sod(own_copy, "carol", "--from-step", "nonsense")
    assert result.exit_code == 1, result.output
    assert "unknown sod step 'nonsense'" in result.stderr, result.stderr
    with Ledger(ledger_url) as ledger:
        used = [e.payload for e in ledger.entries(kinds=["estate_unpinned_run"])]
    assert [(u["who"], u["runbook"], u["region"]) for u in used] == [("carol", "sod", "emea")]
    assert used[0]["differences"] and "may run-unpinned sod in emea" in used[0]["reasons"][0]
    assert used[0]["rules"][0].startswith(f"{estate.with_name('entitlements.yaml')} (pinned):")


def test_a_private_allowed_signers_list_proves_nothing(
    pinned: Path, own_copy: Path, ledger_url: str, tmp_path: Path
) -> None:
    """bob lists his own key as carol's in his copy's allowed signers: the pinned list
    decides, so "carol" is not proven."""
    signers = tmp_path / "my_signers"
    bob_pub = key_of("bob").with_suffix(".pub").read_text().split()
    signers.write_text(f'carol namespaces="openbell" {bob_pub[0]} {bob_pub[1]}\n')

    def mine(doc: dict) -> None:  # type: ignore[type-arg]
        doc["identity"] = {"allowed_signers": str(signers), "service_accounts": {}}

    edit(own_copy.with_name("entitlements.yaml"), mine)
    result = CliRunner().invoke(
        app,
        ["run", "sod", "--region", "emea", "--estate", str(own_copy), "--as", "carol",
         "--key", str(key_of("bob"))],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "refused" in result.stderr
    last = refusals(ledger_url)[-1]
    assert last["who"] == "carol" and "identity not proven" in last["reason"]


def test_deploy_needs_the_deploy_entitlement_by_the_rules_in_force(
    pinned: Path, own_copy: Path, ledger_url: str
) -> None:
    with pytest.raises(OpenbellError, match="bob may not deploy"):
        may_deploy(load_estate(pinned), "bob", key_of("bob"))
    assert refusals(ledger_url)[-1]["action"] == "deploy"
    # bob's own file lets everyone deploy; the pinned rules still decide.
    with pytest.raises(OpenbellError, match="bob may not deploy"):
        may_deploy(load_estate(own_copy), "bob", key_of("bob"))
    person, proof = may_deploy(load_estate(pinned), "carol", key_of("carol"))
    assert person == "carol" and proof["method"] == "ssh-key"
