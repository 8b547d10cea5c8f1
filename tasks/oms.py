"""The OMS at end of day: day orders terminal, fills booked, three-way reconciliation,
positions rolled.

Each step is a Prefect task fanning out over the region's OMS databases (those with an
``oms`` block in the estate):

- ``ensure_day_orders_terminal`` reads the day's open orders through the OMS admin API.
  Good-till orders (GTC, GTD) are kept; a day order still open is canceled by the cancel
  sweep where the estate sets ``cancel_sweep``, then read again to verify, else the step
  fails and names it.
- ``check_fills_booked``: no fill without a booking, and every order's cumulative
  quantity equal to the sum of its fills (read-only SQL).
- ``reconcile_fills``: the OMS's fills, the drop copy and the venue's trade file
  (fetched over SFTP with its sha256 verified) matched on ExecID, OrderID, symbol, side,
  quantity and price (:mod:`tasks.recon`). One outcome per database with every break in
  its evidence, and one failed outcome per break, so the report lists each.
- ``check_positions_rolled``: start position + fills = end position per account and
  symbol.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect import task
from prefect.cache_policies import NO_CACHE

from openbell import chaos
from openbell.outcome import Outcome, Status, utcnow
from openbell.run import StepResult
from openbell.runbooks.schema import Database, OmsEod
from openbell.settings import get_settings
from openbell.tasks.context import RunContext, fan_out, in_thread
from openbell.tasks.database import sql_runner
from openbell.tasks.idempotency import completion_key, idempotent
from openbell.tasks.recon import Execution, reconcile, roll_positions
from openbell.tasks.steps import timed_step

#: Rows read at most per query (a day's fills of one OMS).
MAX_ROWS = 200_000
#: Breaks shown in an outcome's one-line detail (all of them are in the evidence).
SHOWN = 5


def _oms(ctx: RunContext) -> list[tuple[str, Database]]:
    return sorted(ctx.estate.oms_in(ctx.region).items())


def _cfg(db: Database) -> OmsEod:
    assert db.oms is not None
    return db.oms


def _params(ctx: RunContext) -> dict[str, Any]:
    return {"trade_date": ctx.trade_date.isoformat()}


def orders_url(cfg: OmsEod, day: str, *, open_only: bool = True) -> str:
    """The admin API URL listing a day's orders (the open ones by default)."""
    base = (cfg.admin_url or "").rstrip("/")
    return f"{base}/orders?trade_date={quote(day)}" + ("&open=true" if open_only else "")


def sweep_url(cfg: OmsEod) -> str:
    return f"{(cfg.admin_url or '').rstrip('/')}/cancel-sweep"


# ---- day orders ----------------------------------------------------------------------------
@task(name="ensure_day_orders_terminal", cache_policy=NO_CACHE)
async def ensure_day_orders_terminal(ctx: RunContext) -> StepResult:
    """No day order of the trade date left open; GTC/GTD kept; sweep where configured."""
    day = ctx.trade_date.isoformat()
    targets = [(n, db) for n, db in _oms(ctx) if _cfg(db).admin_url]

    async def work() -> list[Outcome]:
        async with ctx.http() as http:

            async def open_orders(name: str, cfg: OmsEod) -> list[dict[str, Any]]:
                answer = await http.get(
                    orders_url(cfg, day), target=name, timeout=cfg.timeout_s, retries=2
                )
                body = answer.json if isinstance(answer.json, dict) else {}
                return list(body.get("orders") or [])

            async def probe(name: str, db: Database) -> Outcome:
                started = utcnow()
                cfg = _cfg(db)
                before = await open_orders(name, cfg)
                kept = [_brief(o) for o in before if o.get("tif") != "DAY"]
                day_open = [o["order_id"] for o in before if o.get("tif") == "DAY"]
                evidence: dict[str, Any] = {"kept_open": kept, "open_day_orders": day_open}
                note = f"; {len(kept)} GTC/GTD order(s) kept open" if kept else ""
                if not day_open:
                    return Outcome(
                        step="day_orders",
                        target=name,
                        status=Status.OK,
                        started_at=started,
                        detail=f"every day order of {day} is terminal{note}",
                        evidence=evidence,
                    )
                if not cfg.cancel_sweep:
                    return Outcome(
                        step="day_orders",
                        target=name,
                        status=Status.FAILED,
                        started_at=started,
                        detail=f"{len(day_open)} day order(s) still open: "
                        f"{_list(day_open)} (cancel_sweep is off for {name})",
                        evidence=evidence,
                    )
                # The key makes the sweep idempotent at the OMS too: asked twice (a
                # retry after a lost answer), it cancels once and answers the same.
                request_id = completion_key(ctx, "day_orders", name).digest()
                swept = await http.post(
                    sweep_url(cfg),
                    {"trade_date": day, "tif": ["DAY"], "request_id": request_id},
                    target=name,
                    timeout=cfg.timeout_s,
                )
                chaos.point(f"day_orders:{name}:swept")
                result = swept.json if isinstance(swept.json, dict) else {}
                evidence["sweep"] = {
                    "canceled": result.get("canceled", []),
                    "effects": result.get("effects", []),
                }
                still = [o["order_id"] for o in await open_orders(name, cfg) if o["tif"] == "DAY"]
                if still:
                    evidence["still_open"] = still
                    return Outcome(
                        step="day_orders",
                        target=name,
                        status=Status.FAILED,
                        started_at=started,
                        detail=f"cancel sweep sent, {len(still)} day order(s) still open: "
                        f"{_list(still)}",
                        evidence=evidence,
                    )
                return Outcome(
                    step="day_orders",
                    target=name,
                    status=Status.CHANGED,
                    started_at=started,
                    detail=f"canceled {len(day_open)} open day order(s) by cancel sweep: "
                    f"{_list(day_open)}; verified none left{note}",
                    evidence=evidence,
                )

            return await fan_out("day_orders", targets, idempotent(ctx, "day_orders", probe))

    note = "" if targets else "no OMS with an admin_url in this region"
    return await timed_step(ctx, "day_orders", "Day orders terminal", work(), note)


def _brief(order: dict[str, Any]) -> dict[str, Any]:
    keys = ("order_id", "tif", "status", "expire_date", "leaves_qty")
    return {k: order.get(k) for k in keys}


def _list(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


# ---- fills booked ----------------------------------------------------------------------------
@task(name="check_fills_booked", cache_policy=NO_CACHE)
async def check_fills_booked(ctx: RunContext) -> StepResult:
    """Every fill of the day booked, and every order's cum qty = the sum of its fills."""
    params = _params(ctx)

    async def probe(name: str, db: Database) -> Outcome:
        started = utcnow()
        q = _cfg(db).queries
        runner = sql_runner(ctx, name, db)
        unbooked = await in_thread(ctx, runner.rows, q.unbooked_fills, params, MAX_ROWS)
        totals = await in_thread(ctx, runner.rows, q.fill_totals, params, MAX_ROWS)
        short = [
            {"order_id": t["order_id"], "cum_qty": t["cum_qty"], "filled_qty": t["filled_qty"]}
            for t in totals
            if int(t["cum_qty"] or 0) != int(t["filled_qty"] or 0)
        ]
        problems = []
        if unbooked:
            ids = [str(r.get("exec_id")) for r in unbooked]
            problems.append(f"{len(unbooked)} fill(s) not booked: {_list(ids)}")
        if short:
            shown = [
                f"{s['order_id']} cum {s['cum_qty']} vs fills {s['filled_qty']}" for s in short
            ]
            problems.append(f"{len(short)} order(s) whose fills do not add up: {_list(shown)}")
        return Outcome(
            step="fills_booked",
            target=name,
            status=Status.FAILED if problems else Status.OK,
            started_at=started,
            detail="; ".join(problems) or f"{len(totals)} orders, every fill booked",
            evidence={
                "orders": len(totals),
                "unbooked": [dict(r) for r in unbooked[:100]],
                "cum_qty_mismatch": short[:100],
            },
        )

    return await timed_step(
        ctx, "fills_booked", "Every fill booked", fan_out("fills_booked", _oms(ctx), probe)
    )


# ---- reconciliation --------------------------------------------------------------------------
def parse_trade_file(text: str, source: str) -> list[Execution]:
    """The venue's trade file (CSV with a header) as executions.

    Needs the columns exec_id, order_id, symbol, side, qty and price (account optional).

    Raises:
        ValueError: a missing column or a bad row, naming ``source`` and the line.

    Example:
        >>> text = "exec_id,order_id,symbol,side,qty,price\\nE1,O1,KO,B,5,1.5\\n"
        >>> rows = parse_trade_file(text, "f")
        >>> rows[0].side, rows[0].qty
        ('BUY', 5)
    """
    reader = csv.DictReader(io.StringIO(text))
    wanted = {"exec_id", "order_id", "symbol", "side", "qty", "price"}
    missing = sorted(wanted - set(reader.fieldnames or []))
    if missing:
        raise ValueError(f"{source}: line 1: no column(s) {', '.join(missing)} in the header")
    out = []
    for row in reader:
        try:
            out.append(Execution.from_row(row))
        except ValueError as exc:
            raise ValueError(f"{source}: line {reader.line_num}: {exc}") from None
    return out


async def _fetch_trade_file(ctx: RunContext, name: str, cfg: OmsEod) -> tuple[str, dict[str, Any]]:
    """Download the day's trade file over SFTP (sha256 verified); (text, evidence)."""
    tf = cfg.trade_file
    assert tf is not None
    remote = tf.path_for(ctx.trade_date)
    local_dir = get_settings().home / "eod" / ctx.region / ctx.trade_date.isoformat() / name
    local_dir.mkdir(parents=True, exist_ok=True)
    local = local_dir / Path(remote).name
    digest = await in_thread(ctx, ctx.ssh.get, tf.host, remote, local, timeout=tf.timeout_s)
    evidence = {"host": tf.host, "path": remote, "sha256": digest, "local_copy": str(local)}
    return local.read_text(encoding="utf-8"), evidence


@task(name="reconcile_fills", cache_policy=NO_CACHE)
async def reconcile_fills(ctx: RunContext) -> StepResult:
    """OMS fills vs drop copy vs the venue's trade file; every break listed."""
    params = _params(ctx)

    async def probe(name: str, db: Database) -> Outcome:
        started = utcnow()
        cfg = _cfg(db)
        runner = sql_runner(ctx, name, db)
        sides: dict[str, list[Execution]] = {
            "oms": _executions(
                await in_thread(ctx, runner.rows, cfg.queries.fills, params, MAX_ROWS)
            ),
            "drop_copy": _executions(
                await in_thread(ctx, runner.rows, cfg.queries.drop_copy, params, MAX_ROWS)
            ),
        }
        evidence: dict[str, Any] = {}
        if cfg.trade_file is not None:
            text, evidence["trade_file"] = await _fetch_trade_file(ctx, name, cfg)
            sides["venue"] = parse_trade_file(text, evidence["trade_file"]["path"])
        recon = reconcile(sides)
        evidence |= {
            "rows": recon.rows,
            "matched": recon.matched,
            "breaks_by_kind": recon.by_kind(),
            "breaks": [b.to_json() for b in recon.breaks],
        }
        three = " vs ".join(sides)
        if recon.ok:
            detail = f"{recon.matched} fills matched ({three}), no breaks"
        else:
            kinds = ", ".join(f"{n} {k}" for k, n in recon.by_kind().items())
            detail = f"{len(recon.breaks)} break(s) ({kinds}); {recon.matched} fills matched"
        return Outcome(
            step="recon",
            target=name,
            status=Status.OK if recon.ok else Status.FAILED,
            started_at=started,
            detail=detail,
            evidence=evidence,
        )

    async def work() -> list[Outcome]:
        summaries = await fan_out("recon", _oms(ctx), probe)
        out: list[Outcome] = []
        for summary in summaries:
            out.append(summary)
            for b in summary.evidence.get("breaks", []):
                out.append(
                    Outcome(
                        step="recon",
                        target=f"{summary.target}:{b['exec_id']}",
                        status=Status.FAILED,
                        detail=b["text"],
                        evidence=b,
                        started_at=summary.started_at,
                        finished_at=summary.finished_at,
                    )
                )
        return out

    return await timed_step(ctx, "recon", "Three-way reconciliation", work())


def _executions(rows: list[dict[str, Any]]) -> list[Execution]:
    return [Execution.from_row(r) for r in rows]


# ---- positions ------------------------------------------------------------------------------
@task(name="check_positions_rolled", cache_policy=NO_CACHE)
async def check_positions_rolled(ctx: RunContext) -> StepResult:
    """Start position + the day's fills = end position, per account and symbol."""
    params = _params(ctx)

    async def probe(name: str, db: Database) -> Outcome:
        started = utcnow()
        q = _cfg(db).queries
        runner = sql_runner(ctx, name, db)

        async def rows(sql: str) -> list[dict[str, Any]]:
            return await in_thread(ctx, runner.rows, sql, params, MAX_ROWS)

        start = [(r["account"], r["symbol"], r["qty"]) for r in await rows(q.start_positions)]
        end = [(r["account"], r["symbol"], r["qty"]) for r in await rows(q.end_positions)]
        fills = _executions(await rows(q.fills))
        roll = roll_positions(start, fills, end)
        evidence = {
            "checked": roll.checked,
            "fills": len(fills),
            "breaks": [b.to_json() for b in roll.breaks],
        }
        if roll.ok:
            detail = f"{roll.checked} positions: start + {len(fills)} fills = end"
        else:
            shown = [b.describe() for b in roll.breaks]
            detail = f"{len(roll.breaks)} of {roll.checked} positions off: {_list(shown)}"
        return Outcome(
            step="positions_rolled",
            target=name,
            status=Status.OK if roll.ok else Status.FAILED,
            started_at=started,
            detail=detail,
            evidence=evidence,
        )

    return await timed_step(
        ctx,
        "positions_rolled",
        "Positions rolled",
        fan_out("positions_rolled", _oms(ctx), probe),
    )
