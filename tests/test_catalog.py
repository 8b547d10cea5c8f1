"""The catalog: every runbook read from its declaration, one flow over its parameters each."""

from __future__ import annotations

import inspect

import pytest
from prefect import Flow

from openbell import catalog
from openbell.errors import UnknownNameError
from openbell.flows.runbook import RunParams


@pytest.mark.parametrize("key", catalog.names())
def test_each_runbook_is_a_flow_over_its_parameters(key: str) -> None:
    rb = catalog.get(key.upper())
    flow = rb.flow
    assert isinstance(flow, Flow) and flow is rb.flow  # built once
    params = inspect.signature(flow.fn).parameters
    assert list(params) == ["params"]
    assert issubclass(params["params"].annotation, RunParams)
    assert flow.flow_run_name is not None  # runs are named sod-emea-2026-11-27
    assert rb.deployment_name("emea") == f"{key}-emea"
    # A worker finds the flow from the entrypoint alone, whatever its directory.
    from prefect.utilities.importtools import import_object

    assert import_object(rb.entrypoint) is flow


def test_an_unknown_runbook_lists_the_declared_ones() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown runbook 'eodx'; valid runbooks: eod, release, sod"
    ):
        catalog.get("eodx")


def test_titles_come_from_the_declarations() -> None:
    assert catalog.title("sod") == "start of day"
    assert catalog.title("eod") == "end of day"
    assert catalog.title("nope") == "nope"


def test_a_key_cannot_be_taken_twice() -> None:
    from dataclasses import replace

    twin = replace(catalog.get("sod"), title="another start of day")
    with pytest.raises(ValueError, match="runbook key 'sod' is taken"):
        catalog.register(twin)
