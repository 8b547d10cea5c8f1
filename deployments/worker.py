"""``openbell worker --region R``: a Prefect process worker for one region's work pool.

The worker runs next to the region's hosts and polls only that region's pool, so a
region's runbooks run from inside its network and one region's outage stops no other.
Flow runs are subprocesses of the worker and inherit its environment: the worker is
started with ``OPENBELL_ESTATE`` pointing at the estate it was asked for and
``PREFECT_API_URL`` at the server, which is all a run (or the keeper) needs.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from openbell.deployments.deploy import DeployError, prefect_client
from openbell.runbooks.schema import Estate


def worker_name(region: str) -> str:
    """``openbell-emea-<host>``: shown on each flow run as the worker that ran it."""
    return f"openbell-{region}-{socket.gethostname()}"


def worker_command(
    estate: Estate,
    region: str,
    api_url: str,
    *,
    name: str | None = None,
    limit: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``prefect worker start`` for ``region``'s pool.

    Example:
        >>> from openbell.runbooks.loader import load_estate
        >>> argv, env = worker_command(load_estate("runbooks/lab.yaml"), "emea",
        ...                            "http://127.0.0.1:4200/api", name="w1")
        >>> argv[1:]
        ['worker', 'start', '--pool', 'emea', '--type', 'process', '--name', 'w1']
        >>> env["PREFECT_API_URL"]
        'http://127.0.0.1:4200/api'
    """
    region = region.lower()
    pool = estate.region(region).work_pool
    prefect = Path(sys.executable).with_name("prefect")
    argv = [
        str(prefect),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        name or worker_name(region),
    ]
    if limit is not None:
        argv += ["--limit", str(limit)]
    env = {**os.environ, "PREFECT_API_URL": api_url}
    if estate.source:
        env["OPENBELL_ESTATE"] = estate.source
    return argv, env


async def check_pool(api_url: str, pool: str) -> None:
    """Fail with the fix when the region's pool does not exist yet.

    Prefect's worker would otherwise create an empty pool of its own, and no deployment
    would point at it.
    """
    from prefect.exceptions import ObjectNotFound

    async with prefect_client(api_url) as client:
        try:
            await client.read_work_pool(pool)
        except ObjectNotFound:
            raise DeployError(
                f"work pool {pool!r} does not exist on {api_url}: run `openbell deploy` first"
            ) from None
