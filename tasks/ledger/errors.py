"""The ledger's errors, under ``openbell.errors.OpenbellError``.

::

    OpenbellError
     └── LedgerError            the ledger cannot be opened, read or written, or a bundle
          │                     or checkpoint file is not what it claims to be
          └── RunLockedError    another process holds the lock of (runbook, region, date)

A broken chain is not an exception: ``Ledger.verify`` returns a ``VerifyResult`` that says
where and how it broke.
"""

from __future__ import annotations

from openbell.errors import OpenbellError


class LedgerError(OpenbellError):
    """The ledger cannot do what was asked (names the ledger, the action and the cause)."""


class RunLockedError(LedgerError):
    """Another run of the same runbook, region and trade date holds the run lock.

    Attributes:
        runbook: e.g. ``sod``.
        region: e.g. ``emea``.
        trade_date: the session, ISO format.
    """

    def __init__(self, runbook: str, region: str, trade_date: str, waited_s: float) -> None:
        self.runbook = runbook
        self.region = region
        self.trade_date = trade_date
        super().__init__(
            f"{runbook} {region} {trade_date}: another run holds the run lock "
            f"(waited {waited_s:g} s)"
        )
