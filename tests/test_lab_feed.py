"""The lab's market-data feed status server, through httpx."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from openbell.lab.faults import FaultBook
from openbell.runbooks.schema import Estate
from tests.fixtures.lab import eventually

pytestmark = pytest.mark.integration


def _get(estate: Estate, feed: str) -> dict[str, Any]:
    resp = httpx.get(estate.feeds[feed].status_url, timeout=5)
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


def _age_s(doc: dict[str, Any]) -> float:
    stamp = datetime.fromisoformat(doc["last_update"].replace("Z", "+00:00"))
    return (datetime.now(UTC) - stamp).total_seconds()


def test_every_feed_answers_live_and_fresh(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    for name in estate.feeds:
        doc = _get(estate, name)
        assert set(doc) == {"feed", "last_update", "sequence", "gaps", "status"}
        assert (doc["feed"], doc["status"], doc["gaps"]) == (name, "live", [])
        assert doc["last_update"].endswith("Z")
        assert _age_s(doc) < 5


def test_feed_advances(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    name = next(iter(estate.feeds))
    first = _get(estate, name)
    later = eventually(lambda: (d := _get(estate, name))["sequence"] > first["sequence"] and d)
    assert later["last_update"] > first["last_update"]


def test_stale_feed_fault_freezes_last_update_in_the_past(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name, other = list(estate.feeds)[:2]
    lab_faults.add("stale_feed", name, seconds=30)
    frozen = _get(estate, name)
    assert 29 <= _age_s(frozen) < 40
    ticked_from = _get(estate, other)["sequence"]
    eventually(lambda: _get(estate, other)["sequence"] > ticked_from)  # the lab ticked since
    again = _get(estate, name)
    assert (again["last_update"], again["sequence"]) == (frozen["last_update"], frozen["sequence"])
    lab_faults.remove("stale_feed", name)
    assert _age_s(_get(estate, name)) < 5


def test_feed_gap_fault_lists_an_unrecovered_gap(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    name = next(iter(estate.feeds))
    before = _get(estate, name)["sequence"]
    lab_faults.add("feed_gap", name, size=25)
    doc = _get(estate, name)
    [[start, end]] = doc["gaps"]
    assert end - start + 1 == 25 and start > before and doc["sequence"] >= end
    lab_faults.remove("feed_gap", name)
    assert _get(estate, name)["gaps"] == []


def test_unknown_feed_is_a_404_json(lab_estate: tuple[Path, Estate]) -> None:
    _, estate = lab_estate
    base = next(iter(estate.feeds.values())).status_url.rsplit("/", 1)[0]
    resp = httpx.get(f"{base}/no-such-feed", timeout=5)
    assert resp.status_code == 404
    assert resp.json()["feed"] == "no-such-feed"
    assert sorted(httpx.get(base, timeout=5).json()["feeds"]) == sorted(estate.feeds)


def test_latency_fault_delays_answers(
    lab_estate: tuple[Path, Estate], lab_faults: FaultBook
) -> None:
    _, estate = lab_estate
    lab_faults.add("latency", "*", ms=60_000)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(next(iter(estate.feeds.values())).status_url, timeout=0.5)
