"""Revisions of the ledger schema, oldest first."""
