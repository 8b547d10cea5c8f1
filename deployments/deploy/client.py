"""A Prefect client with one-line errors, and a way to use it from synchronous code."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from prefect.client.orchestration import PrefectClient

from openbell.deployments.deploy.model import DeployError

T = TypeVar("T")


def run_sync(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async Prefect conversation from synchronous code (the CLI)."""
    return asyncio.run(coro_fn())


@asynccontextmanager
async def prefect_client(api_url: str | None = None) -> AsyncIterator[PrefectClient]:
    """A Prefect client (for ``api_url``, else the configured one) with one-line errors."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = api_url or PREFECT_API_URL.value()
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            try:
                yield client
            except httpx.HTTPStatusError as exc:
                body = exc.response.text[:300]
                raise DeployError(
                    f"Prefect API at {api_url} answered {exc.response.status_code} to "
                    f"{exc.request.method} {exc.request.url.path}: {body}"
                ) from None
            except httpx.TransportError as exc:
                raise DeployError(
                    f"Prefect API at {api_url} does not answer ({exc}); start it, or set "
                    "PREFECT_API_URL"
                ) from None
