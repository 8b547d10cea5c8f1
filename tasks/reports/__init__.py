"""Reports rendered from the ledger alone: a run's report and the daily rollup, with their templates."""
