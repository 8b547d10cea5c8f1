"""The release layout's arithmetic and commands, run for real in a temporary directory."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from openbell.tasks.release import layout


@pytest.mark.parametrize(
    ("n", "batches", "sizes"),
    [
        (4, [1, "50%", "100%"], [1, 1, 2]),
        (1, [1, "50%", "100%"], [1]),
        (2, [1, "50%", "100%"], [1, 1]),
        (10, [1, "50%", "100%"], [1, 4, 5]),
        (5, [2], [2, 3]),
        (5, [1, 2], [1, 2, 2]),
        (3, ["100%"], [3]),
        (7, ["10%", "20%"], [1, 1, 5]),
    ],
)
def test_batches_cover_every_host_once_in_order(n: int, batches: list, sizes: list) -> None:  # type: ignore[type-arg]
    hosts = [f"h{i}" for i in range(n)]
    got = layout.batches_of(hosts, batches)
    assert [len(b) for b in got] == sizes
    assert [h for b in got for h in b] == hosts


def test_prune_never_removes_current_the_way_back_or_unknown_releases() -> None:
    releases = ["1.0", "1.1", "1.2", "1.3", "stray"]
    order = ["1.0", "1.1", "1.2", "1.3"]
    assert layout.to_prune(releases, keep=2, current="1.3", protect=["1.2"], order=order) == [
        "1.0",
        "1.1",
    ]
    # keep 3: the newest other release stays; "stray" has no history, so it is never removed
    assert layout.to_prune(releases, keep=3, current="1.3", protect=["1.2"], order=order) == ["1.0"]
    # the way back is kept even when it is the oldest
    assert layout.to_prune(releases, keep=2, current="1.3", protect=["1.0"], order=order) == [
        "1.1",
        "1.2",
    ]


def test_versions_that_could_be_paths_or_options_are_refused() -> None:
    for bad in ["../x", "-rf", "a/b", "", "a b", "x;rm"]:
        with pytest.raises(ValueError):
            layout.check_version(bad)
    assert layout.version_of_link("releases/5.0.3") == "5.0.3"
    assert layout.version_of_link("/elsewhere/5.0.3") is None


def _sh(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def _release(root: Path, version: str) -> None:
    d = root / "releases" / version
    d.mkdir(parents=True)
    (d / "app.json").write_text(f'{{"version": "{version}"}}')
    digest = hashlib.sha256((d / "app.json").read_bytes()).hexdigest()
    (d / "SHA256SUMS").write_text(f"{digest}  app.json\n")


def test_switch_read_verify_and_lock_on_a_real_filesystem(tmp_path: Path) -> None:
    root = "apps/oms"
    base = tmp_path / root
    _release(base, "1.0")
    _release(base, "1.1")
    assert _sh(layout.make_link(root, "1.0"), tmp_path).returncode == 0
    assert _sh(layout.swap_link(root), tmp_path).returncode == 0
    state = layout.parse_state(_sh(layout.read_state(root), tmp_path).stdout)
    assert state["current"] == "releases/1.0"
    assert sorted(state["releases"]) == ["1.0", "1.1"]  # type: ignore[arg-type]
    # the switch replaces the link; it never moves the new link into the old release
    for _ in range(2):
        assert _sh(layout.make_link(root, "1.1"), tmp_path).returncode == 0
        assert _sh(layout.swap_link(root), tmp_path).returncode == 0
    assert _sh(layout.read_link(root), tmp_path).stdout.strip() == "releases/1.1"
    assert not (base / "releases" / "1.0" / "current.next").exists()
    assert not (base / "releases" / "1.1" / "current.next").exists()
    # the tree verifies; a changed byte does not
    assert _sh(layout.verify_tree(f"{root}/current"), tmp_path).returncode == 0
    (base / "releases" / "1.1" / "app.json").write_text('{"version": "1.1!"}')
    assert _sh(layout.verify_tree(f"{root}/current"), tmp_path).returncode != 0
    # the host lock: one owner; the same owner again is fine; another is refused
    assert _sh(layout.take_lock(root, "oms@1.1"), tmp_path).returncode == 0
    assert _sh(layout.take_lock(root, "oms@1.1"), tmp_path).returncode == 0
    other = _sh(layout.take_lock(root, "oms@2.0"), tmp_path)
    assert other.returncode == 3 and "held by oms@1.1" in other.stderr
    assert layout.parse_state(_sh(layout.read_state(root), tmp_path).stdout)["lock"] == "oms@1.1"
    assert _sh(layout.release_lock(root, "oms@2.0"), tmp_path).returncode == 0  # not its own
    assert (base / layout.LOCK_DIR).exists()
    assert _sh(layout.release_lock(root, "oms@1.1"), tmp_path).returncode == 0
    assert not (base / layout.LOCK_DIR).exists()
    # a switch notes where it goes before the app is stopped: it takes a free host, keeps
    # its own, and never marks a host another release holds
    assert layout.parse_state(_sh(layout.read_state(root), tmp_path).stdout)["switching"] is None
    assert _sh(layout.mark_switching(root, "oms@1.1", "1.1"), tmp_path).returncode == 0
    state = layout.parse_state(_sh(layout.read_state(root), tmp_path).stdout)
    assert (state["lock"], state["switching"]) == ("oms@1.1", "1.1")
    held = _sh(layout.mark_switching(root, "oms@2.0", "2.0"), tmp_path)
    assert held.returncode == 3 and "held by oms@1.1" in held.stderr
    assert layout.parse_state(_sh(layout.read_state(root), tmp_path).stdout)["switching"] == "1.1"
    assert _sh(layout.release_lock(root, "oms@1.1"), tmp_path).returncode == 0
    assert not (base / layout.LOCK_DIR).exists()


def test_current_as_a_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "apps/x/current").mkdir(parents=True)
    state = layout.parse_state(_sh(layout.read_state("apps/x"), tmp_path).stdout)
    assert state.get("current_is_dir") is True
    assert layout.parse_state(_sh(layout.read_state("apps/none"), tmp_path).stdout)["missing"]


def test_df_output_is_parsed() -> None:
    out = "Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 60 40 60% /\n"
    assert layout.parse_df_available_kb(out) == 40
    assert layout.parse_df_available_kb("garbage") is None
