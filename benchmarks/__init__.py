"""Benchmarks: scripts that print their timings (tests never assert on wall time)."""
