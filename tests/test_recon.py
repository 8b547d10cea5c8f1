"""Three-way reconciliation and the position roll (pure): examples and properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openbell.tasks.recon import (
    Execution,
    normalize_side,
    reconcile,
    roll_positions,
    to_decimal,
    to_qty,
)

SIDES = ("oms", "drop_copy", "venue")


def ex(exec_id: str = "E1", **kw: object) -> Execution:
    base: dict[str, object] = {
        "exec_id": exec_id,
        "order_id": "O1",
        "account": "ACC",
        "symbol": "AAPL",
        "side": "BUY",
        "qty": 100,
        "price": Decimal("187.2"),
    }
    base.update(kw)
    return Execution(**base)  # type: ignore[arg-type]


def three(rows: list[Execution], **changes: list[Execution]) -> dict[str, list[Execution]]:
    sides = {s: list(rows) for s in SIDES}
    sides.update(changes)
    return sides


# ---- normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "side"), [("BUY", "BUY"), ("b", "BUY"), ("1", "BUY"), (2, "SELL"), (" sell ", "SELL")]
)
def test_sides_spelled_any_usual_way_agree(raw: object, side: str) -> None:
    assert normalize_side(raw) == side


def test_an_unknown_side_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"side '5' is not a buy"):
        normalize_side("5")


def test_prices_compare_as_decimals_and_quantities_as_whole_numbers() -> None:
    assert to_decimal("187.20") == to_decimal(187.2) == to_decimal("187.2000")
    assert to_decimal(0.1) == Decimal("0.1")  # through repr, not the binary value
    assert to_qty("500") == to_qty(500.0) == 500
    with pytest.raises(ValueError, match="not a whole number"):
        to_qty("10.5")
    with pytest.raises(ValueError, match="not a number"):
        to_decimal("abc")
    with pytest.raises(ValueError, match="finite"):
        to_decimal("NaN")


def test_from_row_normalises_and_names_a_missing_column() -> None:
    row = {"exec_id": " E1 ", "order_id": "O1", "symbol": "AAPL", "side": "1", "qty": "100"}
    with pytest.raises(ValueError, match="no 'price' column"):
        Execution.from_row(row)
    e = Execution.from_row({**row, "price": "187.20"})
    got = (e.exec_id, e.side, e.qty, e.price, e.account)
    assert got == ("E1", "BUY", 100, Decimal("187.2"), "")


# ---- breaks by kind -------------------------------------------------------------------------
def test_all_sides_agreeing_is_no_break() -> None:
    r = reconcile(three([ex("E1"), ex("E2", qty=200)]))
    assert r.ok and r.matched == 2 and r.rows == {"oms": 2, "drop_copy": 2, "venue": 2}


@pytest.mark.parametrize("gone", SIDES)
def test_a_fill_missing_on_one_side(gone: str) -> None:
    r = reconcile(three([ex("E1"), ex("E2")], **{gone: [ex("E1")]}))
    assert [(b.kind, b.side, b.exec_id) for b in r.breaks] == [("missing", gone, "E2")]
    assert r.matched == 1
    assert f"missing on {gone}" in r.breaks[0].describe()


def test_quantity_mismatch_names_the_odd_side_and_every_value() -> None:
    r = reconcile(three([ex()], venue=[ex(qty=150)]))
    (b,) = r.breaks
    assert (b.kind, b.side, b.field) == ("qty_mismatch", "venue", "qty")
    assert b.values == {"oms": 100, "drop_copy": 100, "venue": 150}
    assert "oms 100, drop_copy 100, venue 150 (venue differs)" in b.describe()


def test_price_mismatch() -> None:
    r = reconcile(three([ex()], drop_copy=[ex(price=Decimal("187.21"))]))
    (b,) = r.breaks
    assert (b.kind, b.side) == ("price_mismatch", "drop_copy")
    assert b.to_json()["values"]["drop_copy"] == "187.21"


@pytest.mark.parametrize(
    ("field", "value"), [("order_id", "O9"), ("symbol", "MSFT"), ("side", "SELL")]
)
def test_other_fields_mismatch(field: str, value: str) -> None:
    r = reconcile(three([ex()], oms=[ex(**{field: value})]))
    assert [(b.kind, b.field, b.side) for b in r.breaks] == [("field_mismatch", field, "oms")]


def test_duplicate_exec_id_on_one_side() -> None:
    r = reconcile(three([ex("E1"), ex("E2")], drop_copy=[ex("E1"), ex("E2"), ex("E2")]))
    assert [(b.kind, b.side, b.exec_id, b.values) for b in r.breaks] == [
        ("duplicate", "drop_copy", "E2", {"count": 2})
    ]


def test_no_majority_names_no_side() -> None:
    r = reconcile(three([ex()], drop_copy=[ex(qty=150)], venue=[ex(qty=200)]))
    assert [(b.kind, b.side) for b in r.breaks] == [("qty_mismatch", None)]


def test_every_break_is_listed_in_exec_id_order() -> None:
    rows = [ex(f"E{i}") for i in range(1, 6)]
    venue = [rows[0], ex("E2", qty=101), rows[3], rows[4], rows[4]]
    drop = [rows[0], rows[1], ex("E3", price=Decimal("1")), rows[3], rows[4]]
    r = reconcile(three(rows, venue=venue, drop_copy=drop))
    assert [(b.exec_id, b.kind) for b in r.breaks] == [
        ("E2", "qty_mismatch"),
        ("E3", "missing"),
        ("E3", "price_mismatch"),
        ("E5", "duplicate"),
    ]
    assert r.by_kind() == {"duplicate": 1, "missing": 1, "price_mismatch": 1, "qty_mismatch": 1}
    assert r.matched == 2


def test_two_sides_reconcile_too() -> None:
    r = reconcile({"oms": [ex("E1")], "drop_copy": []})
    assert [(b.kind, b.side) for b in r.breaks] == [("missing", "drop_copy")]


# ---- properties ---------------------------------------------------------------------------
executions = st.builds(
    Execution,
    exec_id=st.text("ABCDEF0123456789", min_size=1, max_size=6),
    order_id=st.sampled_from(["O1", "O2", "O3"]),
    account=st.sampled_from(["A", "B"]),
    symbol=st.sampled_from(["AAPL", "MSFT", "KO"]),
    side=st.sampled_from(["BUY", "SELL"]),
    qty=st.integers(1, 10_000),
    price=st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999"), places=2).map(
        lambda d: d.normalize()
    ),
)
unique_fills = st.lists(executions, max_size=30, unique_by=lambda e: e.exec_id)


@settings(max_examples=150)
@given(unique_fills)
def test_identical_sides_always_match(rows: list[Execution]) -> None:
    r = reconcile(three(rows))
    assert r.ok and r.matched == len(rows)


@settings(max_examples=150)
@given(unique_fills, st.data())
def test_dropping_fills_from_a_side_breaks_exactly_those(
    rows: list[Execution], data: st.DataObject
) -> None:
    side = data.draw(st.sampled_from(SIDES))
    dropped = data.draw(st.sets(st.sampled_from([e.exec_id for e in rows]))) if rows else set()
    kept = [e for e in rows if e.exec_id not in dropped]
    r = reconcile(three(rows, **{side: kept}))
    want = {("missing", side, x) for x in dropped}
    assert {(b.kind, b.side, b.exec_id) for b in r.breaks} == want
    assert r.matched == len(rows) - len(dropped)


@settings(max_examples=150)
@given(unique_fills, st.data())
def test_order_of_rows_does_not_matter(rows: list[Execution], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(rows))
    mutated = [*shuffled[1:], shuffled[0]] if shuffled else []
    venue = [e if i % 3 else _bump(e, 1) for i, e in enumerate(rows)]
    a = reconcile({"oms": rows, "drop_copy": rows, "venue": venue})
    back = list(reversed(venue))
    b = reconcile({"oms": mutated, "drop_copy": list(reversed(rows)), "venue": back})
    assert a == b


@settings(max_examples=150)
@given(unique_fills)
def test_every_exec_id_is_matched_or_broken(rows: list[Execution]) -> None:
    venue = rows[::2]
    drop = [*rows, *rows[:1]]
    r = reconcile(three(rows, venue=venue, drop_copy=drop))
    broken = {b.exec_id for b in r.breaks}
    assert r.matched + len(broken) == len(rows)


# ---- positions ----------------------------------------------------------------------------
def test_start_plus_fills_is_end() -> None:
    fills = [ex("E1", qty=100), ex("E2", side="SELL", qty=30), ex("E3", symbol="KO", qty=5)]
    start = [("ACC", "AAPL", 1000)]
    end = [("ACC", "AAPL", 1070), ("ACC", "KO", 5)]
    roll = roll_positions(start, fills, end)
    assert roll.ok and roll.checked == 2


def test_a_wrong_end_position_is_a_break_with_its_arithmetic() -> None:
    fills = [ex("E1", qty=100)]
    roll = roll_positions([("ACC", "AAPL", 1000)], fills, [("ACC", "AAPL", 1000)])
    (b,) = roll.breaks
    assert (b.start, b.bought, b.sold, b.expected, b.end) == (1000, 100, 0, 1100, 1000)
    assert b.describe() == "ACC AAPL: start 1000 + bought 100 - sold 0 = 1100, end 1000"


def test_missing_end_position_is_a_break_unless_flat() -> None:
    flat = roll_positions([("ACC", "AAPL", 100)], [ex(side="SELL", qty=100)], [])
    assert flat.ok
    off = roll_positions([("ACC", "AAPL", 100)], [], [])
    assert [b.to_json()["text"] for b in off.breaks] == [
        "ACC AAPL: start 100 + bought 0 - sold 0 = 100, no end position"
    ]


positions = st.dictionaries(
    st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["AAPL", "KO", "V"])),
    st.integers(-5000, 5000),
    max_size=6,
)


@settings(max_examples=150)
@given(positions, st.lists(executions, max_size=20))
def test_the_rolled_book_always_rolls(
    start: dict[tuple[str, str], int], fills: list[Execution]
) -> None:
    end = dict(start)
    for f in fills:
        key = (f.account, f.symbol)
        end[key] = end.get(key, 0) + (f.qty if f.side == "BUY" else -f.qty)
    rows = [(a, s, q) for (a, s), q in start.items()]
    assert roll_positions(rows, fills, [(a, s, q) for (a, s), q in end.items()]).ok


@settings(max_examples=150)
@given(positions, st.lists(executions, min_size=1, max_size=20), st.integers(1, 50))
def test_any_fill_changed_breaks_its_position(
    start: dict[tuple[str, str], int], fills: list[Execution], delta: int
) -> None:
    end = dict(start)
    for f in fills:
        key = (f.account, f.symbol)
        end[key] = end.get(key, 0) + (f.qty if f.side == "BUY" else -f.qty)
    first = fills[0]
    bumped = [_bump(first, delta), *fills[1:]]
    roll = roll_positions([(a, s, q) for (a, s), q in start.items()], bumped, list(_rows(end)))
    assert [(b.account, b.symbol) for b in roll.breaks] == [(first.account, first.symbol)]


def _bump(e: Execution, delta: int) -> Execution:
    return Execution(**{**e.__dict__, "qty": e.qty + delta})


def _rows(d: dict[tuple[str, str], int]) -> list[tuple[str, str, int]]:
    return [(a, s, q) for (a, s), q in d.items()]
