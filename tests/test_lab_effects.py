"""The lab's effects log: one line per effect, ids unique, safe across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from openbell.lab.effects import EffectsLog


def _append(path: str, n: int, who: int) -> None:
    log = EffectsLog(Path(path))
    for i in range(n):
        log.record("remove", f"host{who}", key=f"{who}|{i}", argv=["rm", "-f", "x" * 500])


def test_record_and_read_with_filters(tmp_path: Path) -> None:
    log = EffectsLog(tmp_path / "effects.jsonl")
    a = log.record("oms_cancel", "amer-oms", key="amer-oms|2026-11-27|O1", order_id="O1")
    b = log.record("fix_seq_reset", "amer-oe", key="amer-oe|2026-11-27", policy="daily")
    assert a.id != b.id and a.id.startswith("eff-")
    assert [e.id for e in log.read()] == [a.id, b.id]
    assert log.read(kind="oms_cancel")[0].detail == {"order_id": "O1"}
    assert log.read(target="amer-oe", key="amer-oe|2026-11-27") == [b]
    assert log.read(key="nothing") == []


def test_a_missing_log_is_empty_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "effects.jsonl"
    log = EffectsLog(path)
    assert log.read() == []
    log.record("archive", "h1", key="k")
    with path.open("a") as fh:
        fh.write('{"id": "eff-torn", "kind": "ar')  # a writer killed mid-line
    assert [e.key for e in log.read()] == ["k"]


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "effects.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(str(path), 200, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    effects = EffectsLog(path).read()
    assert len(effects) == 800
    assert len({e.id for e in effects}) == 800
    assert len({e.key for e in effects}) == 800
