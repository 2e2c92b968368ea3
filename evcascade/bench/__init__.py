"""Benchmarks: ``python -m evcascade.bench <what>``; each prints a table and writes JSON (and PNG plots)."""
