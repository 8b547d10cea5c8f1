"""The OMS at end of day: day orders terminal, fills booked, three-way reconciliation,
positions rolled.

Each step fans out over the region's OMS databases (those with an
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

from openbell import chaos
from openbell.outcome import Outcome, Status, utcnow
from openbell.plan import PlannedAction, StepPlan
from openbell.runbooks.schema import Database, OmsEod
from openbell.settings import get_settings
from openbell.tasks.context import Changes, PlanContext, RunContext, StepRun, fan_out, in_thread
from openbell.tasks.database import sql_runner
from openbell.tasks.idempotency import completion_key
from openbell.tasks.recon import Execution, reconcile, roll_positions

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
def plan_day_orders(p: PlanContext) -> list[PlannedAction]:
    iso = p.trade_date.isoformat()
    actions = []
    for name, db in sorted(p.estate.oms_in(p.region).items()):
        cfg = _cfg(db)
        if not cfg.admin_url:
            continue
        actions.append(PlannedAction(target=name, action=f"GET {orders_url(cfg, iso)}"))
        if cfg.cancel_sweep:
            body = f'{{"trade_date": "{iso}", "tif": ["DAY"]}}'
            actions.append(
                PlannedAction(
                    target=name,
                    action=f"if a day order is open: POST {sweep_url(cfg)} {body}, then GET again",
                )
            )
        else:
            actions.append(PlannedAction(target=name, action="fail if a day order is open"))
    return actions


async def _open_orders(http: Any, name: str, cfg: OmsEod, day: str) -> list[dict[str, Any]]:
    answer = await http.get(orders_url(cfg, day), target=name, timeout=cfg.timeout_s, retries=2)
    body = answer.json if isinstance(answer.json, dict) else {}
    return list(body.get("orders") or [])


async def day_orders_to_cancel(ctx: RunContext, step: StepRun) -> Changes:
    """The OMSes with day orders still open that the cancel sweep would cancel."""
    day = ctx.trade_date.isoformat()
    targets = [(n, db) for n, db in _oms(ctx) if _cfg(db).admin_url and _cfg(db).cancel_sweep]
    lines: dict[str, str] = {}
    async with ctx.http() as http:

        async def probe(name: str, db: Database) -> Outcome:
            orders = await _open_orders(http, name, _cfg(db), day)
            open_day = [o["order_id"] for o in orders if o.get("tif") == "DAY"]
            if open_day:
                lines[name] = (
                    f"cancel {len(open_day)} open day order(s) on {name}: {_list(open_day)}"
                )
            return Outcome(step=step.name, target=name, status=Status.OK)

        await fan_out(step.name, targets, probe)
    todo = sorted(lines)
    return Changes(
        targets=todo,
        lines=[lines[t] for t in todo],
        summary=f"cancel the open day orders of {len(todo)} OMS(es) in {ctx.region.upper()}",
    )


async def ensure_day_orders_terminal(ctx: RunContext, step: StepRun) -> list[Outcome]:
    """No day order of the trade date left open; GTC/GTD kept; sweep where configured."""
    day = ctx.trade_date.isoformat()
    targets = [(n, db) for n, db in _oms(ctx) if _cfg(db).admin_url]
    async with ctx.http() as http:

        async def open_orders(name: str, cfg: OmsEod) -> list[dict[str, Any]]:
            return await _open_orders(http, name, cfg, day)

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
                    step=step.name,
                    target=name,
                    status=Status.OK,
                    started_at=started,
                    detail=f"every day order of {day} is terminal{note}",
                    evidence=evidence,
                )
            if not cfg.cancel_sweep:
                return Outcome(
                    step=step.name,
                    target=name,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"{len(day_open)} day order(s) still open: "
                    f"{_list(day_open)} (cancel_sweep is off for {name})",
                    evidence=evidence,
                )
            # The key makes the sweep idempotent at the OMS too: asked twice (a
            # retry after a lost answer), it cancels once and answers the same.
            request_id = completion_key(ctx, step.name, name).digest()
            swept = await http.post(
                sweep_url(cfg),
                {"trade_date": day, "tif": ["DAY"], "request_id": request_id},
                target=name,
                timeout=cfg.timeout_s,
            )
            chaos.point(f"{step.name}:{name}:swept")
            result = swept.json if isinstance(swept.json, dict) else {}
            evidence["sweep"] = {
                "canceled": result.get("canceled", []),
                "effects": result.get("effects", []),
            }
            still = [o["order_id"] for o in await open_orders(name, cfg) if o["tif"] == "DAY"]
            if still:
                evidence["still_open"] = still
                return Outcome(
                    step=step.name,
                    target=name,
                    status=Status.FAILED,
                    started_at=started,
                    detail=f"cancel sweep sent, {len(still)} day order(s) still open: "
                    f"{_list(still)}",
                    evidence=evidence,
                )
            return Outcome(
                step=step.name,
                target=name,
                status=Status.CHANGED,
                started_at=started,
                detail=f"canceled {len(day_open)} open day order(s) by cancel sweep: "
                f"{_list(day_open)}; verified none left{note}",
                evidence=evidence,
            )

        step.note = "" if targets else "no OMS with an admin_url in this region"
        return await step.fan_out(ctx, targets, probe)


def _brief(order: dict[str, Any]) -> dict[str, Any]:
    keys = ("order_id", "tif", "status", "expire_date", "leaves_qty")
    return {k: order.get(k) for k in keys}


def _list(items: list[str]) -> str:
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


# ---- fills booked ----------------------------------------------------------------------------
def plan_fills_booked(p: PlanContext) -> list[PlannedAction]:
    out = []
    for name, db in sorted(p.estate.oms_in(p.region).items()):
        q = _cfg(db).queries
        out += [_sql(name, db, q.unbooked_fills), _sql(name, db, q.fill_totals)]
    return out


def _sql(target: str, db: Database, sql: str) -> PlannedAction:
    return PlannedAction(
        target=target, action=f"SQL (read-only, {db.timeout_s:g} s): {' '.join(sql.split())}"
    )


async def check_fills_booked(ctx: RunContext, step: StepRun) -> list[Outcome]:
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
            step=step.name,
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

    return await step.fan_out(ctx, _oms(ctx), probe)


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


def plan_recon(p: PlanContext) -> list[PlannedAction]:
    out = []
    for name, db in sorted(p.estate.oms_in(p.region).items()):
        cfg = _cfg(db)
        out += [_sql(name, db, cfg.queries.fills), _sql(name, db, cfg.queries.drop_copy)]
        if cfg.trade_file:
            tf = cfg.trade_file
            out.append(
                PlannedAction(
                    target=name,
                    action=f"sftp get {tf.host}:{tf.path_for(p.trade_date)} (sha256 verified), "
                    "then match on ExecID, OrderID, symbol, side, quantity, price",
                )
            )
    return out


async def reconcile_fills(ctx: RunContext, step: StepRun) -> list[Outcome]:
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
            step=step.name,
            target=name,
            status=Status.OK if recon.ok else Status.FAILED,
            started_at=started,
            detail=detail,
            evidence=evidence,
        )

    summaries = await step.fan_out(ctx, _oms(ctx), probe)
    out: list[Outcome] = []
    for summary in summaries:
        out.append(summary)
        for b in summary.evidence.get("breaks", []):
            out.append(
                Outcome(
                    step=step.name,
                    target=f"{summary.target}:{b['exec_id']}",
                    status=Status.FAILED,
                    detail=b["text"],
                    evidence=b,
                    started_at=summary.started_at,
                    finished_at=summary.finished_at,
                )
            )
    return out


def _executions(rows: list[dict[str, Any]]) -> list[Execution]:
    return [Execution.from_row(r) for r in rows]


# ---- positions ------------------------------------------------------------------------------
def plan_positions(p: PlanContext) -> StepPlan:
    out = []
    for name, db in sorted(p.estate.oms_in(p.region).items()):
        q = _cfg(db).queries
        out += [_sql(name, db, q.start_positions), _sql(name, db, q.end_positions)]
    return StepPlan(actions=out, note="start + fills = end per account and symbol")


async def check_positions_rolled(ctx: RunContext, step: StepRun) -> list[Outcome]:
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
            step=step.name,
            target=name,
            status=Status.OK if roll.ok else Status.FAILED,
            started_at=started,
            detail=detail,
            evidence=evidence,
        )

    return await step.fan_out(ctx, _oms(ctx), probe)
