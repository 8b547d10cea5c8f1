"""Signed checkpoints: the ledger resists its own writers.

Whoever can write the ledger can append a correctly chained entry, or rewrite the whole
chain and the checkpoints beside the reports. With ``OPENBELL_CHECKPOINT_KEY`` naming a
secret the writers do not hold, checkpoints carry an HMAC, a copy goes to a folder outside
``OPENBELL_HOME``, and ``verify`` trusts only signed checkpoints: an entry appended after
the last one is reported as unverified, a rewrite before it as broken, a forged checkpoint
as broken.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from openbell.settings import get_settings
from openbell.tasks.ledger import Ledger

KEY_NAME = "OPENBELL_TEST_CHECKPOINT_KEY"


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home whose checkpoints are signed and copied outside it; yields the copy folder."""
    home, copy = tmp_path / "home", tmp_path / "elsewhere"
    monkeypatch.setenv("OPENBELL_HOME", str(home))
    monkeypatch.setenv("OPENBELL_CHECKPOINT_KEY", KEY_NAME)
    monkeypatch.setenv(KEY_NAME, "s3cret-checkpoint-key")
    monkeypatch.setenv("OPENBELL_CHECKPOINT_COPY", str(copy))
    get_settings.cache_clear()
    yield copy
    get_settings.cache_clear()


def _ledger(tmp_path: Path, name: str = "ledger.db") -> Ledger:
    return Ledger(f"sqlite:///{tmp_path / name}")


def test_an_entry_appended_after_the_last_signed_checkpoint_is_unverified(
    signed: Path, tmp_path: Path
) -> None:
    with _ledger(tmp_path) as ledger:
        for i in range(5):
            ledger.append("note", None, {"n": i})
        cp = ledger.checkpoint()
        assert cp["mac"].startswith("hmac-sha256:")
        assert json.loads((signed / "ledger-checkpoints.jsonl").read_text()) == cp
        clean = ledger.verify()
        assert clean.ok and (clean.signed_seq, clean.unverified) == (5, 0)
        assert "signed checkpoint at entry 5" in clean.describe()
        ledger.append("approval_decided", None, {"approver": "mallory"})  # chained correctly
        after = ledger.verify()
    assert after.ok and (after.signed_seq, after.unverified) == (5, 1)
    assert "1 after it unverified" in after.describe()


def test_a_rewrite_before_a_signed_checkpoint_is_broken(signed: Path, tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        for i in range(5):
            ledger.append("note", None, {"n": i})
        ledger.checkpoint()
    # The writer rebuilds the whole chain with other content (every hash consistent) and
    # rewrites the checkpoints in the home; the signed copy outside it still says otherwise.
    (tmp_path / "ledger.db").unlink()
    with _ledger(tmp_path) as ledger:
        for i in range(6):
            ledger.append("note", None, {"n": i * 100})
        reports = get_settings().reports_dir / "ledger-checkpoints.jsonl"
        seq, head = ledger.head()
        reports.write_text(json.dumps({"seq": seq, "hash": head, "time": "now"}) + "\n")
        result = ledger.verify(checkpoint=reports)
    assert not result.ok
    assert result.first_bad_seq == 5 and result.problem == "altered"


def test_a_forged_checkpoint_is_broken(signed: Path, tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        for i in range(3):
            ledger.append("note", None, {"n": i})
        cp = ledger.checkpoint()
        ledger.append("note", None, {"n": 3})
        seq, head = ledger.head()
        forged = {**cp, "seq": seq, "hash": head}  # the old mac on a new head
        path = tmp_path / "forged.jsonl"
        path.write_text(json.dumps(forged) + "\n")
        result = ledger.verify(checkpoint=path)
    assert not result.ok and "bad signature" in result.detail


def test_without_a_key_nothing_is_said_about_signatures(tmp_path: Path) -> None:
    with _ledger(tmp_path) as ledger:
        ledger.append("note", None, {"n": 1})
        result = ledger.verify()
    assert result.ok and result.signed_seq is None and "unverified" not in result.describe()


def test_a_copy_inside_the_home_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBELL_HOME", str(tmp_path))
    monkeypatch.setenv("OPENBELL_CHECKPOINT_COPY", str(tmp_path / "reports" / "copy"))
    get_settings.cache_clear()
    try:
        with pytest.raises(ValueError, match="inside OPENBELL_HOME"):
            get_settings()
    finally:
        monkeypatch.delenv("OPENBELL_CHECKPOINT_COPY")
        get_settings.cache_clear()
