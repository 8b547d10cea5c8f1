"""Generated estates: valid, unique ports, tiered dependencies, the lab's SQL checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from openbell.lab.generate import free_ports, generate_estate, sql_checks
from openbell.runbooks.loader import load_estate
from openbell.runbooks.schema import Estate
from openbell.settings import default_estate


def _ports(estate: Estate) -> list[int]:
    apps = [int((a.health_url or "").rsplit(":", 1)[1].split("/")[0]) for a in estate.apps.values()]
    feeds = {int(f.status_url.split(":")[2].split("/")[0]) for f in estate.feeds.values()}
    return (
        [h.port for h in estate.hosts.values()]
        + apps
        + [s.port for s in estate.fix_sessions.values()]
        + sorted(feeds)
    )


def test_default_estate_is_valid_and_complete(tmp_path: Path) -> None:
    estate = load_estate(generate_estate(tmp_path / "e.yaml"))
    assert sorted(estate.regions) == ["amer", "apac", "emea"]
    assert (len(estate.hosts), len(estate.apps), len(estate.fix_sessions), len(estate.feeds)) == (
        6,
        12,
        6,
        4,
    )
    assert len(estate.databases) == 3
    ports = _ports(estate)
    assert len(ports) == len(set(ports))
    assert all(h.address == "127.0.0.1" for h in estate.hosts.values())
    assert {s.kind for s in estate.fix_sessions.values()} == {"order_entry", "drop_copy"}


def test_each_region_has_an_oms_for_end_of_day(tmp_path: Path) -> None:
    estate = load_estate(generate_estate(tmp_path / "e.yaml", hosts=6))
    for region in estate.regions:
        db = next(iter(estate.oms_in(region).values()))
        assert db.oms is not None and db.oms.cancel_sweep
        assert db.oms.trade_file is not None
        assert estate.host(db.oms.trade_file.host).fix_store_dir  # dropped on the gateway
        assert any(h.order_records_dir for h in estate.hosts_in(region).values())
        assert all(h.archive_dir for h in estate.hosts_in(region).values())
        for session in estate.fix_sessions_in(region):
            assert estate.store_host(session) is not None
    assert estate.policy("eod").before_close == "refuse"


def test_apps_form_the_requested_tiers_within_each_region(tmp_path: Path) -> None:
    estate = load_estate(generate_estate(tmp_path / "e.yaml", hosts=9, apps_per_host=3, tiers=4))
    for region in estate.regions:
        tiers = estate.app_tiers(region)
        assert len(tiers) == 4
        for level, names in enumerate(tiers[1:], start=1):
            for name in names:
                deps = estate.app(name).depends_on
                assert deps and set(deps) <= set(tiers[level - 1])


def test_databases_carry_the_lab_yaml_checks(tmp_path: Path) -> None:
    estate = load_estate(generate_estate(tmp_path / "e.yaml"))
    reference = load_estate(default_estate())
    expected = next(iter(reference.databases.values())).checks
    assert all(db.checks == expected for db in estate.databases.values())
    assert [c["name"] for c in sql_checks()] == [c.name for c in expected]


def test_scale_estate_for_the_benchmark(tmp_path: Path) -> None:
    path = generate_estate(
        tmp_path / "scale.yaml", hosts=200, apps_per_host=2, fix_sessions=50, feeds=20
    )
    estate = load_estate(path)
    assert (len(estate.hosts), len(estate.apps), len(estate.fix_sessions), len(estate.feeds)) == (
        200,
        400,
        50,
        20,
    )
    ports = _ports(estate)
    assert len(ports) == len(set(ports)) == 651
    assert "${OPENBELL_HOME}" in yaml.safe_load(path.read_text())["known_hosts"]


def test_base_port_and_other_regions(tmp_path: Path) -> None:
    start = free_ports(1)[0]
    estate = load_estate(
        generate_estate(tmp_path / "e.yaml", hosts=2, regions=("emea", "latam"), base_port=start)
    )
    assert min(_ports(estate)) >= start
    assert estate.region("latam").calendars


@pytest.mark.parametrize("kwargs", [{"hosts": 2}, {"apps_per_host": 0}, {"regions": ("EMEA",)}])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_estate(tmp_path / "e.yaml", **kwargs)  # type: ignore[arg-type]
