"""The runbook registry: every entry is a flow that takes RunParams and names its runs."""

from __future__ import annotations

import inspect

import pytest
from prefect import Flow

from openbell.deployments.registry import RUNBOOKS, get_runbook
from openbell.errors import UnknownNameError
from openbell.runbooks.schema import RUNBOOK_NAMES


@pytest.mark.parametrize("key", sorted(RUNBOOKS))
def test_each_registered_runbook_is_a_flow_over_run_params(key: str) -> None:
    rb = get_runbook(key.upper())
    flow = rb.load_flow()
    assert isinstance(flow, Flow)
    params = inspect.signature(flow.fn).parameters
    assert list(params) == ["params"]
    assert "RunParams" in str(params["params"].annotation)
    assert flow.flow_run_name is not None  # runs are named sod-emea-2026-11-27
    assert key in RUNBOOK_NAMES  # the estate may configure it (runbooks.<key>)
    assert rb.deployment_name("emea") == f"{key}-emea"


def test_an_unknown_runbook_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown runbook 'eodx'; valid runbooks: eod, sod"):
        get_runbook("eodx")
