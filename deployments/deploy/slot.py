"""The concurrency slot a run outside the worker shares with the deployment's runs."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from openbell import catalog

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


from openbell.deployments.deploy.client import prefect_client
from openbell.deployments.deploy.model import DeployError
from openbell.deployments.deploy.reconcile import read_openbell_deployments


@asynccontextmanager
async def runbook_slot(
    api_url: str, runbook: str, region: str, *, wait_s: float = 5.0
) -> AsyncIterator[str | None]:
    """Hold the concurrency slot of ``runbook``'s deployment in ``region`` while a run goes.

    A run started outside the worker (``openbell run``) takes the same slot as the
    deployment's runs, so it never overlaps a scheduled one of the same runbook and region.
    Without a deployment (nothing deployed yet) there is nothing to overlap with.

    Yields:
        the concurrency limit's name, or None when there is no deployment.

    Raises:
        DeployError: the slot stayed busy for ``wait_s`` (another run of it is going).
    """
    from prefect.concurrency.asyncio import concurrency
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async with prefect_client(api_url) as client:
        deployments = await read_openbell_deployments(client)
    dep = deployments.get(catalog.get(runbook).deployment_name(region))
    limit = dep.global_concurrency_limit if dep else None
    if dep is None or limit is None:
        yield None
        return
    async with AsyncExitStack() as stack:
        # The slot is taken on (and its lease renewed with) the same server.
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        try:
            # strict: a limit that vanished is an error, not a silent free-for-all; a
            # lease renewal hiccup must not kill a long end of day, hence the explicit False.
            await stack.enter_async_context(
                concurrency(
                    limit.name,
                    occupy=1,
                    timeout_seconds=wait_s,
                    strict=True,
                    raise_on_lease_renewal_failure=False,
                )
            )
        except TimeoutError:
            raise DeployError(
                f"{runbook} {region} is already running: a run of deployment {dep.name} holds "
                "its only slot; wait for it to finish or cancel it in the Prefect UI"
            ) from None
        yield limit.name
