"""Run a runbook flow in this process against the local (or configured) Prefect server."""

from __future__ import annotations

import asyncio
import logging
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console

from openbell.errors import OpenbellError
from openbell.run import RunRecord
from openbell.runbooks.loader import load_estate

log = logging.getLogger(__name__)


class RunFailedError(OpenbellError):
    """The flow crashed before it could record its own outcome."""


_loop: asyncio.Runner | None = None


def _run(coro: Any) -> Any:
    """Run a coroutine on one event loop kept for the life of the process.

    Prefect caches its API clients per event loop; a fresh loop per run (asyncio.run)
    would strand their open connections each time.
    """
    global _loop
    if _loop is None:
        _loop = asyncio.Runner()
    return _loop.run(coro)


def run_runbook(
    runbook: str,
    region: str,
    trade_date: date | None,
    *,
    estate: Path | str | None = None,
    dry_run: bool = False,
    operator: str | None = None,
    proof: Any = None,
    from_step: str | None = None,
    extra: dict[str, Any] | None = None,
    console: Console | None = None,
) -> RunRecord:
    """Run a runbook for a region as a Prefect flow and return its record.

    The estate and region are validated first, so a typo fails in milliseconds rather
    than after the Prefect server starts.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from openbell import catalog
    from openbell.deployments.deploy import runbook_slot
    from openbell.deployments.prefect_server import ensure_server
    from openbell.flows import engine

    declared = catalog.get(runbook)
    loaded = load_estate(estate)
    loaded.region(region)
    # Resolved here so that the Prefect run is named for its date, not "today".
    trade_date = trade_date or engine.today_in(loaded, region.lower())
    params = declared.params(
        region=region.lower(),
        trade_date=trade_date,
        dry_run=dry_run,
        estate=str(loaded.source),
        operator=operator,
        from_step=from_step,
        **(extra or {}),
    )
    flow = declared.flow
    api_url = ensure_server()
    progress: Any = None
    if console is not None:
        from openbell.deployments.display import Progress

        progress = Progress(console)

    async def guarded() -> Any:
        # The deployment's concurrency slot: never side by side with a scheduled run.
        async with runbook_slot(api_url, declared.key, region.lower()):
            running: Any = flow(params, return_state=True)  # an async flow: a coroutine
            return await running

    with temporary_settings({PREFECT_API_URL: api_url}):
        engine.progress_listener = progress
        engine.requester_proof = proof
        try:
            if progress:
                with progress:
                    state = _run(guarded())
            else:
                state = _run(guarded())
        finally:
            engine.progress_listener = None
            engine.requester_proof = None
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunRecord):
        return result
    raise RunFailedError(f"{runbook} {region} crashed: {state.message or result}")
