"""Session-wide isolation: every test run gets its own OPENBELL_HOME.

Fixtures for real peers live in ``tests/fixtures/`` and are loaded as plugins.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="openbell-test-home-"))
os.environ["OPENBELL_HOME"] = str(_HOME)
os.environ.pop("OPENBELL_SLACK_TOKEN", None)
os.environ.pop("OPENBELL_ESTATE", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect-client")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

# Hypothesis' per-example deadline is a wall-time assertion, which tests never make: on a
# shared 2-core machine it fails for load, not for a bug.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("openbell", deadline=None)
    _hypothesis_settings.load_profile("openbell")
except ImportError:  # hypothesis is a dev dependency
    pass

pytest_plugins = [
    "tests.fixtures.prefect",
    "tests.fixtures.sshd",
    "tests.fixtures.postgres",
    "tests.fixtures.slack",
    "tests.fixtures.lab",
    "tests.fixtures.ledger",
    "tests.fixtures.tcpproxy",
]


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    from openbell.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def openbell_home() -> Path:
    """The session's isolated OPENBELL_HOME."""
    return _HOME
