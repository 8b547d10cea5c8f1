"""openbell: a trading desk's operational runbooks as Prefect flows.

The core package holds what every layer shares: settings, the Outcome model, the
error hierarchy and secret redaction. Runbook logic lives in ``flows/`` and ``tasks/``.
"""

__version__ = "0.1.0"
