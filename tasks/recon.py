"""Three-way reconciliation of the day's fills and the position roll: pure, no I/O.

The end-of-day steps read the OMS's fills, the drop copy and the venue's trade file, turn
every row into an :class:`Execution` (side, quantity and price normalised, so ``BUY``,
``B`` and FIX ``1`` agree and ``187.2`` equals ``187.20``) and call :func:`reconcile`.
Rows are matched on ExecID; a matched ExecID must agree on OrderID, symbol, side,
quantity and price on every side. Breaks, by kind:

================ ============================================================
missing          the ExecID is on some sides and not on ``side``
duplicate        the ExecID appears more than once on ``side``
qty_mismatch     the sides disagree on quantity (``side``: the odd one out)
price_mismatch   the sides disagree on price
field_mismatch   the sides disagree on OrderID, symbol or side (``field``)
================ ============================================================

:func:`roll_positions` checks start position + fills = end position per account and
symbol (buys add, sells subtract).

Example:
    >>> e = Execution("E1", "O1", "ACC", "AAPL", "BUY", 100, Decimal("187.20"))
    >>> r = reconcile({"oms": [e], "drop_copy": [e], "venue": []})
    >>> [(b.kind, b.side, b.exec_id) for b in r.breaks]
    [('missing', 'venue', 'E1')]
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

SIDE_NAMES = ("oms", "drop_copy", "venue")
BreakKind = Literal["missing", "duplicate", "qty_mismatch", "price_mismatch", "field_mismatch"]
#: The fields compared besides the ExecID, and the break kind each mismatch is.
COMPARED: tuple[tuple[str, BreakKind], ...] = (
    ("order_id", "field_mismatch"),
    ("symbol", "field_mismatch"),
    ("side", "field_mismatch"),
    ("qty", "qty_mismatch"),
    ("price", "price_mismatch"),
)
_SIDES = {"BUY": "BUY", "B": "BUY", "1": "BUY", "SELL": "SELL", "S": "SELL", "2": "SELL"}


def normalize_side(value: Any) -> str:
    """``BUY`` or ``SELL`` from the usual spellings (BUY/B/1, SELL/S/2, any case).

    Raises:
        ValueError: anything else (short sells ``5``/``6`` are not traded here).

    Example:
        >>> normalize_side("b"), normalize_side(2)
        ('BUY', 'SELL')
    """
    side = _SIDES.get(str(value).strip().upper())
    if side is None:
        raise ValueError(f"side {value!r} is not a buy (BUY, B, 1) or a sell (SELL, S, 2)")
    return side


def to_decimal(value: Any) -> Decimal:
    """A price as an exact decimal without trailing zeros (``187.20`` -> ``187.2``).

    A float goes through its shortest repr, so 0.1 stays 0.1.

    Raises:
        ValueError: not a finite number.
    """
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError(f"price {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"price {value!r} is not a finite number")
    return number.normalize() if number else Decimal(0)


def to_qty(value: Any) -> int:
    """A quantity as an int; ``500``, ``"500"`` and ``500.0`` are 500.

    Raises:
        ValueError: not a whole number.
    """
    number = to_decimal(value)
    if number != number.to_integral_value():
        raise ValueError(f"quantity {value!r} is not a whole number")
    return int(number)


@dataclass(frozen=True)
class Execution:
    """One fill as one side reports it, normalised for matching."""

    exec_id: str
    order_id: str
    account: str
    symbol: str
    side: str
    qty: int
    price: Decimal

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Execution:
        """From a row with exec_id, order_id, symbol, side, qty, price (account optional).

        Raises:
            ValueError: a field is missing or cannot be read (the message names it).
        """
        try:
            return cls(
                exec_id=str(row["exec_id"]).strip(),
                order_id=str(row["order_id"]).strip(),
                account=str(row.get("account") or "").strip(),
                symbol=str(row["symbol"]).strip(),
                side=normalize_side(row["side"]),
                qty=to_qty(row["qty"]),
                price=to_decimal(row["price"]),
            )
        except KeyError as exc:
            raise ValueError(f"row has no {exc.args[0]!r} column: {dict(row)}") from None

    def get(self, name: str) -> Any:
        return getattr(self, name)


@dataclass(frozen=True)
class Break:
    """One reconciliation break.

    Attributes:
        kind: missing, duplicate, qty_mismatch, price_mismatch or field_mismatch.
        exec_id: the ExecID it concerns.
        side: where it is missing or duplicated, or the odd one out of a mismatch
            (None when no two sides agree).
        order_id: the OrderID as first seen.
        symbol: the symbol as first seen.
        field: for a mismatch, the field compared.
        values: for a mismatch, each side's value; for a duplicate, ``count``; for a
            missing fill, the sides that have it.
    """

    kind: BreakKind
    exec_id: str
    side: str | None
    order_id: str
    symbol: str
    field: str | None = None
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """One line for the report, e.g. ``qty_mismatch XNYS-1 (O1 AAPL): oms 500, ...``."""
        what = f"{self.kind} {self.exec_id} ({self.order_id} {self.symbol})"
        if self.kind == "missing":
            return f"{what}: missing on {self.side}, present on {', '.join(self.values['on'])}"
        if self.kind == "duplicate":
            return f"{what}: {self.values['count']} rows on {self.side}"
        shown = ", ".join(f"{s} {v}" for s, v in self.values.items())
        odd = f" ({self.side} differs)" if self.side else ""
        return f"{what}: {self.field}: {shown}{odd}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exec_id": self.exec_id,
            "side": self.side,
            "order_id": self.order_id,
            "symbol": self.symbol,
            "field": self.field,
            "values": {k: _plain(v) for k, v in self.values.items()},
            "text": self.describe(),
        }


@dataclass(frozen=True)
class Recon:
    """The result of a reconciliation.

    Attributes:
        rows: rows per side.
        matched: ExecIDs on every side, once each, agreeing on every field.
        breaks: every break, ordered by ExecID then kind.
    """

    rows: dict[str, int]
    matched: int
    breaks: list[Break]

    @property
    def ok(self) -> bool:
        return not self.breaks

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(b.kind for b in self.breaks).items()))


def reconcile(sides: Mapping[str, Sequence[Execution]]) -> Recon:
    """Match the sides' executions on ExecID and list every break.

    Args:
        sides: side name (``oms``, ``drop_copy``, ``venue``, or any others) -> its rows.
            Two sides work as well as three.

    Returns:
        The counts and the breaks; ``ok`` when there are none.
    """
    names = list(sides)
    grouped: dict[str, dict[str, list[Execution]]] = {n: {} for n in names}
    for name in names:
        for e in sides[name]:
            grouped[name].setdefault(e.exec_id, []).append(e)
    breaks: list[Break] = []
    matched = 0
    for exec_id in sorted(set().union(*(g.keys() for g in grouped.values()))):
        present = {n: grouped[n][exec_id] for n in names if exec_id in grouped[n]}
        first = next(iter(present.values()))[0]
        found = _duplicates(exec_id, first, present)
        found += _missing(exec_id, first, names, present)
        found += _mismatches(exec_id, first, {n: rows[0] for n, rows in present.items()})
        breaks += found
        if not found:
            matched += 1
    return Recon(rows={n: len(sides[n]) for n in names}, matched=matched, breaks=breaks)


def _duplicates(exec_id: str, first: Execution, present: dict[str, list[Execution]]) -> list[Break]:
    return [
        Break("duplicate", exec_id, n, first.order_id, first.symbol, values={"count": len(rows)})
        for n, rows in present.items()
        if len(rows) > 1
    ]


def _missing(
    exec_id: str, first: Execution, names: list[str], present: dict[str, list[Execution]]
) -> list[Break]:
    on = [n for n in names if n in present]
    return [
        Break("missing", exec_id, n, first.order_id, first.symbol, values={"on": on})
        for n in names
        if n not in present
    ]


def _mismatches(exec_id: str, first: Execution, rows: dict[str, Execution]) -> list[Break]:
    out = []
    for name, kind in COMPARED:
        values = {side: row.get(name) for side, row in rows.items()}
        if len(set(values.values())) > 1:
            out.append(
                Break(
                    kind,
                    exec_id,
                    _odd_one_out(values),
                    first.order_id,
                    first.symbol,
                    field=name,
                    values=values,
                )
            )
    return out


def _odd_one_out(values: dict[str, Any]) -> str | None:
    """The one side whose value differs from all the others, when there is exactly one."""
    counts = Counter(values.values())
    if len(values) < 3 or len(counts) != 2:
        return None
    lone = [v for v, c in counts.items() if c == 1]
    if len(lone) != 1:
        return None
    return next(s for s, v in values.items() if v == lone[0])


# ---- positions ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PositionBreak:
    """An account and symbol whose end position is not start + fills."""

    account: str
    symbol: str
    start: int
    bought: int
    sold: int
    end: int | None

    @property
    def expected(self) -> int:
        return self.start + self.bought - self.sold

    def describe(self) -> str:
        end = "no end position" if self.end is None else f"end {self.end}"
        return (
            f"{self.account} {self.symbol}: start {self.start} + bought {self.bought} "
            f"- sold {self.sold} = {self.expected}, {end}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "symbol": self.symbol,
            "start": self.start,
            "bought": self.bought,
            "sold": self.sold,
            "expected": self.expected,
            "end": self.end,
            "text": self.describe(),
        }


@dataclass(frozen=True)
class Roll:
    """The position roll: how many (account, symbol) were checked, and the breaks."""

    checked: int
    breaks: list[PositionBreak]

    @property
    def ok(self) -> bool:
        return not self.breaks


def roll_positions(
    start: Iterable[tuple[str, str, Any]],
    fills: Iterable[Execution],
    end: Iterable[tuple[str, str, Any]],
) -> Roll:
    """Check start + bought - sold = end for every account and symbol seen anywhere.

    Rows for the same account and symbol add up; one missing from ``end`` counts as a
    break unless start + fills is 0 (a flat position need not be stored).

    Example:
        >>> f = Execution("E1", "O1", "ACC", "AAPL", "BUY", 100, Decimal(1))
        >>> roll_positions([("ACC", "AAPL", 200)], [f], [("ACC", "AAPL", 300)]).ok
        True
    """
    starts = _sum_positions(start)
    ends = _sum_positions(end)
    bought: Counter[tuple[str, str]] = Counter()
    sold: Counter[tuple[str, str]] = Counter()
    for f in fills:
        (bought if f.side == "BUY" else sold)[(f.account, f.symbol)] += f.qty
    keys = sorted(set(starts) | set(ends) | set(bought) | set(sold))
    breaks = []
    for key in keys:
        row = PositionBreak(
            key[0], key[1], starts.get(key, 0), bought[key], sold[key], ends.get(key)
        )
        if (row.end if row.end is not None else 0) != row.expected:
            breaks.append(row)
    return Roll(checked=len(keys), breaks=breaks)


def _sum_positions(rows: Iterable[tuple[str, str, Any]]) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for account, symbol, qty in rows:
        key = (str(account), str(symbol))
        out[key] = out.get(key, 0) + to_qty(qty)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
