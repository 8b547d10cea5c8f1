"""The runbooks openbell can run: one line each, runbook key -> title and flow entrypoint.

Everything that starts runs reads this table: ``openbell run`` and ``plan``, the
deployments and schedules of ``openbell deploy``, ``calendar``, ``doctor`` and the
catch-up. Adding a runbook is one line here once its flow exists (a function taking
``params: RunParams``, named for region and trade date by ``run_namer``).

Entrypoints are ``module:function`` strings, imported only when a flow is needed, so
listing the runbooks costs nothing; a worker imports the same string from the installed
package, whatever its working directory.

Example:
    >>> get_runbook("sod").deployment_name("emea")
    'sod-emea'
    >>> get_runbook("SOD").entrypoint
    'openbell.flows.start_of_day:start_of_day'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openbell.errors import UnknownNameError

if TYPE_CHECKING:
    from prefect import Flow


@dataclass(frozen=True)
class Runbook:
    """A runbook with a flow.

    Attributes:
        key: short name used everywhere (``sod``), and in run names (``sod-emea-2026-11-27``).
        title: what people call it (``start of day``).
        entrypoint: ``module:function`` of its Prefect flow.
    """

    key: str
    title: str
    entrypoint: str

    def load_flow(self) -> Flow[Any, Any]:
        """Import the flow object."""
        from prefect.utilities.importtools import import_object

        flow: Flow[Any, Any] = import_object(self.entrypoint)
        return flow

    def deployment_name(self, region: str) -> str:
        """The Prefect deployment of this runbook in ``region``: ``sod-emea``."""
        return f"{self.key}-{region}"


#: runbook key -> Runbook. The one place a new runbook is registered.
RUNBOOKS: dict[str, Runbook] = {
    rb.key: rb
    for rb in (
        Runbook("sod", "start of day", "openbell.flows.start_of_day:start_of_day"),
        Runbook("eod", "end of day", "openbell.flows.end_of_day:end_of_day"),
    )
}


def get_runbook(name: str) -> Runbook:
    """The registered runbook ``name`` (any case).

    Raises:
        UnknownNameError: listing the registered runbooks.
    """
    key = name.lower()
    if key not in RUNBOOKS:
        raise UnknownNameError("runbook", name, list(RUNBOOKS))
    return RUNBOOKS[key]
