"""Reports rendered from the ledger alone: a run's report and the daily rollup, and templates."""
